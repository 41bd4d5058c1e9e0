"""The project's own errors: each carries one line that names the problem and the fix."""


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
    saved_fd = None  # the real stderr, once a failed read has silenced fd 2
