"""One exception type for bad user input, so `cai.main` can print it as a single line."""


class ConfigError(ValueError):
    """A config value, file or flag that cannot work; the message names what is wrong."""
