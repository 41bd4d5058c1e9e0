"""The project's own errors: each carries one line that names the problem and the fix."""

import os
import sys


class VaeJaxError(Exception):
    """Base of every error vae-jax raises on bad input; the CLI prints it as one line."""


class DataError(VaeJaxError, ValueError):
    """Bad, missing or corrupted data."""


class ReadError(DataError):
    """Data that failed while being read for a step (a damaged image, a data worker that died): the
    run so far is kept. args: (problem, fix), so it crosses from a worker process intact; training
    adds how to continue (vae_jax.train)."""

    def __str__(self) -> str:
        return " -- ".join(self.args)


class ConversionError(VaeJaxError, ValueError):
    """A state_dict that does not fit the model."""


class CheckpointError(VaeJaxError, ValueError):
    """A checkpoint that is missing or belongs to another model/configuration."""


class ConfigError(VaeJaxError, ValueError):
    """A bad option value."""


class ConsoleStderr:
    """The `vae-jax` console script exits right after its one error line. There, a failed checkpoint
    read leaves fd 2 pointed at /dev/null (tensorstore's threads may still print asyncio tracebacks
    about the failed read) and keeps the real stderr here, for that one line."""

    console = False  # set by vae_jax.cli.main(console=True)
    saved_fd = None  # the real stderr, once fd 2 has been silenced

    @classmethod
    def silence(cls, real_fd=None):
        """Point fd 2 at /dev/null for the rest of the process; return the real stderr's fd (real_fd
        when given -- a copy made before fd 2 was redirected elsewhere -- else a copy of fd 2)."""
        if cls.saved_fd is None:
            cls.saved_fd = real_fd if real_fd is not None else os.dup(2)
        elif real_fd is not None:
            os.close(real_fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return cls.saved_fd


_STORAGE = {  # errno -> (what, fix)
    28: ("no space left on the device", "free some space or choose a --workdir/--out on another disk"),
    122: ("disk quota exceeded", "free some space or choose a --workdir/--out on another disk"),
    30: ("the file system is read-only", "choose a writable --workdir/--out"),
    13: ("permission denied", "choose a --workdir/--out you may write to"),
    1: ("operation not permitted", "choose a --workdir/--out you may write to"),
    36: ("a file name is too long", "choose a shorter --workdir/--out"),
    27: (
        "a file would be larger than this process may write (ulimit -f)",
        "raise the limit (ulimit -f unlimited) or make the run smaller",
    ),
}
_STORAGE_TEXT = {
    "No space left on device": 28,
    "Disk quota exceeded": 122,
    "Read-only file system": 30,
    "Permission denied": 13,
    "File name too long": 36,
    "File too large": 27,
}
_MEMORY_TEXT = (
    "RESOURCE_EXHAUSTED",
    "Out of memory",
    "out of memory",
    "OOM when allocating",
    "Allocation of",
    "Failed to allocate",
)


def machine_failure(e: BaseException) -> str | None:
    """One line for a failure of the machine (storage, memory) rather than of vae-jax, or None.

    Recognised by errno, or by the text that orbax, tensorstore and XLA put in the errors they wrap."""
    errno = getattr(e, "errno", None) if isinstance(e, OSError) else None
    text = str(e)
    if errno is None:
        errno = next((n for t, n in _STORAGE_TEXT.items() if t in text), None)
    if errno in _STORAGE:
        what, fix = _STORAGE[errno]
        where = getattr(e, "filename", None)
        return f"cannot write{f' {where}' if where else ''}: {what} -- {fix}"
    if isinstance(e, MemoryError) or any(t in text for t in _MEMORY_TEXT):
        return (
            "out of memory -- lower --batch-size (or --train-k, --iwae-k, --latent-dim, --hidden-dim), "
            "or use --data-mode stream for a large dataset"
        )
    return None


def warn(line: str) -> None:
    """One warning line on stderr, `vae-jax: warning: <problem> -- <fix>`: something was skipped or
    fell back, and the run goes on."""
    print(f"vae-jax: warning: {line}", file=sys.stderr, flush=True)
