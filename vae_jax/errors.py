"""The project's own errors: each carries one line that names the problem and the fix."""

import os


class VaeJaxError(Exception):
    """Base of every error vae-jax raises on bad input; the CLI prints it as one line."""


class DataError(VaeJaxError, ValueError):
    """Bad, missing or corrupted data."""


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
