"""Multi-process runs that cannot train, through the console script: 2 local `vae-jax` processes (one
CPU device each, gloo over 127.0.0.1) on the embedded digits dataset. Each process that fails ends with
exit code 2 and exactly one `vae-jax: error:` line (no JAX/gRPC log lines), within the bound that
vae_jax/distributed.py documents: at once where the process can tell, else after the join timeout."""

import os
import socket
import subprocess
import threading
import time

import pytest

from tests.helpers import TINY, console, free_port
from vae_jax.distributed import INIT_TIMEOUT_S

pytestmark = pytest.mark.slow

STARTUP_S = 60  # a process's start-up (importing JAX) on a busy machine
LONG = ["--epochs", "100", "--batch-size", "8", "--no-figures", "--no-progress"]  # trains for minutes


class Process:
    """One `vae-jax train` process of a 2-process run, its output in files under `where`."""

    def __init__(self, where, tag, port, process_id, *args):
        self.err_path = where / f"{tag}.err"
        env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu")
        multi = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--devices", "2"]
        with open(where / f"{tag}.out", "w") as out, open(self.err_path, "w") as err:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                console(["train", *args, *multi, "--process-id", str(process_id)]), stdout=out, stderr=err, env=env
            )
        self.ended = 0.0
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _wait(self):
        self.popen.wait()
        self.ended = time.monotonic()

    def assert_one_line(self, within, *words):
        """Exit code 2 within `within` s of the start, and one stderr line holding every one of `words`."""
        self.waiter.join(timeout=max(0, self.started + within - time.monotonic()))
        if self.waiter.is_alive():
            self.popen.kill()
            pytest.fail(f"the process did not end within {within} s: {self.err_path.read_text()[-1000:]}")
        code, took, err = self.popen.returncode, self.ended - self.started, self.err_path.read_text().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("vae-jax: error: "), (code, err)
        assert all(w in err[0] for w in words), err[0]
        assert took < within, took
        return err[0]


def wait_for(ready, procs, within, what):
    deadline = time.monotonic() + within
    while not ready():
        assert all(p.popen.poll() is None for p in procs), procs[0].err_path.read_text()[-2000:]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Every run here has a process that ends only at the join timeout: they all start at once, so that
    the timeouts run together. busy: a program holds the port; twice: --process-id 0 given twice;
    again: process 1 started again while the run trains."""
    where = tmp_path_factory.mktemp("faults")
    held = socket.socket(socket.AF_INET6)  # a program that holds the port on every interface
    held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    held.bind(("::", 0))
    held.listen()
    ports = {"busy": held.getsockname()[1], "twice": free_port(), "again": free_port()}
    runs = {
        "busy": [Process(where, f"busy{i}", ports["busy"], i, *TINY, "--workdir", str(where / "b")) for i in (0, 1)],
        "twice": [Process(where, "twice0", ports["twice"], 0, *TINY, "--workdir", str(where / "t"))],
        "again": [Process(where, f"again{i}", ports["again"], i, *LONG, "--workdir", str(where / "a")) for i in (0, 1)],
    }
    try:
        wait_for(lambda: listening(ports["twice"]), runs["twice"], STARTUP_S, "process 0 does not serve the run")
        runs["twice"].append(Process(where, "twice1", ports["twice"], 0, *TINY, "--workdir", str(where / "t")))
        # training: both processes joined, and checked their options
        wait_for((where / "a" / "checkpoints").is_dir, runs["again"], 300, "the run did not start")
        runs["again"].append(Process(where, "again2", ports["again"], 1, *LONG, "--workdir", str(where / "a")))
        yield runs
    finally:
        for p in (p for ps in runs.values() for p in ps):
            p.popen.kill()
            p.popen.wait()
        held.close()


def test_different_options_are_one_line_naming_them_on_every_process(tmp_path):
    port, work = free_port(), str(tmp_path / "run")
    procs = [
        Process(tmp_path, f"p{i}", port, i, *TINY, "--workdir", work, "--lr", lr)
        for i, lr in enumerate(("0.001", "0.01"))
    ]
    named = "different options: --lr 0.001 on process 0, 0.01 on process 1 -- "  # --lr only
    lines = [p.assert_one_line(STARTUP_S, named) for p in procs]
    assert lines[0] == lines[1]
    assert not (tmp_path / "run" / "config.json").exists()  # nothing trained


def test_a_busy_coordinator_port(faults):
    p0, p1 = faults["busy"]
    p0.assert_one_line(STARTUP_S, "process 0 cannot listen on port", "Address already in use")
    p1.assert_one_line(STARTUP_S + INIT_TIMEOUT_S, "process 1 could not join", f"within {INIT_TIMEOUT_S} s")


def test_process_id_0_given_twice(faults):
    first, second = faults["twice"]
    second.assert_one_line(STARTUP_S, "process 0 cannot listen on port", "--process-id 0")
    first.assert_one_line(STARTUP_S + INIT_TIMEOUT_S, "process 0 could not join", f"within {INIT_TIMEOUT_S} s")


def test_a_process_started_again_ends_the_run(faults):
    """JAX's coordination service aborts every process of the run (C++): each still ends with one line,
    once the second process 1 has started."""
    *procs, again = faults["again"]
    for p in procs:
        line = p.assert_one_line(again.started - p.started + STARTUP_S, "started twice", "--resume")
        assert "different incarnation" in line  # JAX's reason, from its log
    again.assert_one_line(STARTUP_S + INIT_TIMEOUT_S, "process 1 could not join")
