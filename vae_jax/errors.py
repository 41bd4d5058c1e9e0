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
