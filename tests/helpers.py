"""What many test modules share: running the CLI in this process, the one-line error check, a
snapshot of a folder, the tiny run's options, TensorBoard's event files read back."""

import os
import socket
import struct
import sys
from pathlib import Path

from vae_jax import cli

# A run of seconds: 2 steps of 50 images, 20 test images.
TINY = ["--train-limit", "100", "--test-limit", "20", "--epochs", "1", "--batch-size", "50", "--no-progress"]


def run(args, capsys):
    """(exit code, stderr lines, stdout) of `vae-jax args` in this process (argparse's exits included)."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.out


def one_line(code, err, *words, exit_code=2):
    """The one error line of a failed command (`err`: its stderr lines), holding each of `words`."""
    assert code == exit_code and len(err) == 1, (code, err)
    assert err[0].startswith(("vae-jax: error: ", "vae-jax: interrupted")), err
    assert "internal error" not in err[0] and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def snapshot(root):
    """{relative path: bytes of a file, a link's target, None for a folder} of everything under root."""
    return {
        str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
        for p in sorted(Path(root).rglob("*"))
    }


def console(args):
    """The `vae-jax` console script of this environment (or `python -m vae_jax.cli`) with args."""
    exe = Path(sys.executable).with_name("vae-jax")
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]) + [str(a) for a in args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a coordinator's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_events(folder):
    """Every summary value tensorboardX wrote in folder's event files: (step, value proto)."""
    from tensorboardX.proto import event_pb2

    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                yield event.step, v


def tensorboard_scalars(folder):
    """{tag: [(step, value)]} of the scalars in folder's event files."""
    out = {}
    for step, v in tensorboard_events(folder):
        if v.WhichOneof("value") == "simple_value":
            out.setdefault(v.tag, []).append((step, v.simple_value))
    return out
