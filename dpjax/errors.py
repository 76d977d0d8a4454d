"""User-facing errors.

A `DpjaxError` carries one line that names the field or file at fault and what
to do about it. The command-line entry point prints it without a traceback;
the Python API raises it like any exception.
"""


class DpjaxError(Exception):
    """A mistake in a config, a data file or a command line, explained in one line."""


class ConfigError(DpjaxError, ValueError):
    """A config field has a wrong type, a value out of range, or does not exist."""


class DataError(DpjaxError):
    """A data set is missing, unreadable or malformed."""
