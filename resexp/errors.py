"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class ResexpError(Exception):
    """Bad input or missing resource, with a message that says what to do."""


class ConfigError(ResexpError):
    """A config value or override that cannot be used."""


class DataError(ResexpError):
    """A dataset that is missing, corrupt or unreadable."""
