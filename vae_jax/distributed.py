"""Several JAX processes as one run (several hosts, or several processes on one host).

`initialize` wraps `jax.distributed.initialize`: the coordinator's address, the number of processes
and this process's index, or nothing where JAX reads them from the cluster's environment (SLURM,
Open MPI, TPU pods). It must run before anything else touches JAX. On CPU the processes exchange
gradients through gloo (`jax_cpu_collectives_implementation`). `check_same_options` then makes sure
every process trains the same run (one line naming the options that differ, on every process).

Failures are bounded, and each ends a process with one `vae-jax: error:` line and exit code 2:
- process 0 cannot listen on the coordinator's port (in use): at once, before JAX starts.
- a process that cannot join (no process 0, the port held by another program, a --process-id
  given twice, a process missing): after INIT_TIMEOUT_S (JAX then needs a few more seconds).
- a peer that died: the next collective fails (gloo: "Connection closed by peer") and the console
  script exits at once (it skips JAX's shutdown barrier, which would wait for the dead peer); a
  peer that stops answering is declared dead after HEARTBEAT_TIMEOUT_S.
JAX's coordination service ends a process it finds in error (a dead peer or coordinator, the same
--process-id joining twice, a join timeout) with a C++ abort, which Python cannot catch. So in the
console script (Linux) the process forks once before joining: the child runs the run with JAX's
own log lines (C++, fd 2) in an unlinked temporary file, and the parent waits for it, passes its
one line and exit code on, and where the child was killed by a signal without a line writes one
itself, naming JAX's reason from that log. VAE_JAX_DEBUG=1 leaves all of this out (JAX's log
lines and aborts then reach the console).

JAX is imported inside the functions: vae_jax.cli imports this module at start-up, before JAX loads.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import sys
import tempfile
from typing import NoReturn

from vae_jax.errors import ConfigError, ConsoleStderr

INIT_TIMEOUT_S = 120  # every process must join within this
HEARTBEAT_TIMEOUT_S = 30  # a silent peer is dead after this
SHUTDOWN_TIMEOUT_S = 300  # at a normal exit, the slowest process may finish this much later
OPTIONS_TIMEOUT_S = 60  # every process must send its options within this after joining


def cluster_detected() -> bool:
    """A scheduler launched several tasks of this command (SLURM's srun, Open MPI's mpirun)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join a multi-process run; returns False (and does nothing) for a single-process run.

    Give all three arguments, or none of them on a cluster that JAX detects (see cluster_detected).
    """
    import jax

    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError(
            "a multi-process run needs --coordinator-address HOST:PORT, --num-processes N and "
            "--process-id I together (or none of them under SLURM/Open MPI)"
        )
    if not any(given) and not cluster_detected():
        return False
    if all(given):
        assert coordinator_address is not None and num_processes is not None and process_id is not None
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"--coordinator-address {coordinator_address!r} is not HOST:PORT -- e.g. "
                "10.0.0.1:12345, the address of process 0"
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"--process-id {process_id} is not in 0..{num_processes - 1} (--num-processes {num_processes})"
            )
        if process_id == 0:
            _check_port_free(int(port))
    joined = None
    if ConsoleStderr.console and sys.platform.startswith("linux") and not os.environ.get("VAE_JAX_DEBUG"):
        joined = _supervise(coordinator_address, num_processes, process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by CPU devices
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=INIT_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"cannot join the multi-process run ({detail}) -- check --coordinator-address, "
            "--num-processes and --process-id, and that process 0 is running"
        ) from None
    if joined is not None:
        os.write(joined, b"j")
        os.close(joined)
    return True


def _check_port_free(port: int) -> None:
    """Process 0 serves the run on every interface at `port` (as JAX binds it): one line if it cannot."""
    try:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        where = ("::", port)
    except OSError:  # no IPv6 on this host
        s, where = socket.socket(socket.AF_INET), ("0.0.0.0", port)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a closed run's port is free
        try:
            s.bind(where)
        except OSError as e:
            raise ConfigError(
                f"process 0 cannot listen on port {port} of --coordinator-address ({e.strerror}: another "
                "program, another run, or a second --process-id 0 holds it) -- start every process "
                "with another port, or end the program that holds it"
            ) from None


def _supervise(address: str | None, n: int | None, process_id: int | None) -> int:
    """Fork. The child returns the fd on which it says that it joined; the parent waits for it (_watch)."""
    relay_r, relay_w = os.pipe()  # the child's vae-jax line, passed on by the parent
    joined_r, joined_w = os.pipe()
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- JAX's own log lines (C++, fd 2), open until the exit
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(relay_w)
        os.close(joined_w)
        _watch(child, relay_r, joined_r, log, address, n, process_id)
    os.close(relay_r)
    os.close(joined_r)
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: end with the parent
    if os.getppid() != parent:
        os._exit(2)
    # Python's own output (progress bars, warnings) still reaches the console; fd 2 goes to the log
    sys.stderr = open(os.dup(2), "w", buffering=1, errors="backslashreplace")  # noqa: SIM115
    os.dup2(log.fileno(), 2)
    ConsoleStderr.saved_fd = relay_w  # where the CLI writes its one line (errors.ConsoleStderr)
    return joined_w


def _watch(child, relay_r, joined_r, log, address, n, process_id) -> NoReturn:
    """The parent: pass the child's line and exit code on; one line of its own where a signal ended
    the child before it wrote one (JAX's coordination service aborts the process it finds in error)."""
    forwarded = set()

    def forward(sig, frame):
        forwarded.add(sig)
        os.kill(child, sig)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child from the terminal
    spoke = False
    while chunk := os.read(relay_r, 4096):
        os.write(2, chunk)
        spoke = True
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    died_of = os.WTERMSIG(status)
    if spoke or died_of in forwarded:
        os._exit(2 if spoke else 128 + died_of)
    reason = _jax_reason(log)
    me = f"process {process_id}" if process_id is not None else "this process"
    if not reason:
        hint = " (out of memory?)" if died_of == signal.SIGKILL else ""
        line = (
            f"{me} was ended by {signal.Signals(died_of).name} -- see the system log{hint}, then restart "
            "every process (--resume keeps what was trained)"
        )
    elif os.read(joined_r, 1):
        line = (
            f"JAX's coordination service stopped {me} ({reason}): another process of this run failed, "
            "stopped answering or was started twice with the same --process-id -- see the other processes' "
            "output, then restart every process (--resume keeps what was trained)"
        )
    else:
        line = (
            f"{me} could not join the multi-process run{f' at {address}' if address else ''} within "
            f"{INIT_TIMEOUT_S} s ({reason}) -- start all {n or 'the'} processes within {INIT_TIMEOUT_S} s, with "
            "the same --coordinator-address and --num-processes, each with its own --process-id"
        )
    os.write(2, f"vae-jax: error: {line}\n".encode())
    os._exit(2)


def _jax_reason(log) -> str:
    """The status of the last fatal error in JAX's log, shortened ('' when there is none)."""
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - 65536))
    found = re.findall(r"absl::Status: ([^\n]*)", log.read().decode(errors="replace"))
    return found[-1].split(". ")[0].rstrip(":.")[:160] if found else ""


def check_same_options(options: dict) -> None:
    """Every process of a multi-process run must run the same run: `options` ({option: value}, e.g.
    {"--lr": 0.001}) are compared across the processes through JAX's key-value store; a difference
    ends every process with one line naming it. Nothing to do in a single-process run."""
    from jax._src.distributed import global_state

    client = global_state.client
    if client is None:
        return
    me, n = global_state.process_id, global_state.num_processes
    client.key_value_set(f"vae_jax/options/{me}", json.dumps(options, sort_keys=True, default=str))
    every = []
    for i in range(n):
        try:
            every.append(json.loads(client.blocking_key_value_get(f"vae_jax/options/{i}", OPTIONS_TIMEOUT_S * 1000)))
        except Exception as e:
            if "DEADLINE_EXCEEDED" not in str(e):
                raise  # the coordinator is gone: the CLI reports a failed peer
            raise ConfigError(
                f"process {i} of this run did not compare its options within {OPTIONS_TIMEOUT_S} s -- "
                "see its output, then restart every process"
            ) from None
    differ = [_difference(name, [o.get(name) for o in every]) for name in options]
    differ = [d for d in differ if d]
    if differ:
        import jax

        jax.distributed.shutdown()  # every process knows: they leave together (no abort by JAX)
        more = f"; and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(
            f"the processes of this run were given different options: {'; '.join(differ[:3])}{more} -- "
            "start every process with the same options (only --process-id differs)"
        )


def _difference(name: str, values: list) -> str:
    """'--lr 0.001 on process 0, 0.01 on process 1', or '' where every process has the same value."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(json.dumps(v, sort_keys=True), []).append(i)
    if len(groups) == 1:
        return ""

    def shown(v):
        return "given" if v is True else "not given" if v is None or v is False else str(v)

    def where(ids):
        listed = ",".join(map(str, ids[:6])) + (",..." if len(ids) > 6 else "")
        return f"process {listed}" if len(ids) == 1 else f"processes {listed}"

    return f"{name} " + ", ".join(f"{shown(json.loads(v))} on {where(ids)}" for v, ids in groups.items())


def is_peer_failure(e: BaseException) -> bool:
    """An error from a collective whose peer process died or cannot be reached."""
    import jax

    text = str(e)
    return jax.process_count() > 1 and any(
        s in text for s in ("Gloo", "gloo", "Connection closed", "DEADLINE", "heartbeat", "UNAVAILABLE")
    )
