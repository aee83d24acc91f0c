"""User-facing errors: one clear line naming the bad value and what was expected.

``train.py`` catches :class:`DensitylabError`, prints ``error: <message>`` on one line to stderr
and exits with status 2, without a traceback and without leaving a run folder that looks like a
success.
"""


class DensitylabError(Exception):
    """Base class of errors caused by the user's input (config, data, environment)."""


class ConfigError(DensitylabError, ValueError):
    """A configuration value is invalid."""


class DataError(DensitylabError, ValueError):
    """Input data is missing, empty, unreadable or too small for the configuration."""


class HubUnreachableError(DensitylabError, ConnectionError):
    """The Hugging Face hub cannot be reached (offline machine) or the dataset id is unknown."""
