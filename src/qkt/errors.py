"""Errors a user can act on.

Every failure that a user can fix (a wrong option, a missing file, a query that
cannot be answered) is raised as a :class:`QKTError`. The CLI prints its message
and exits non-zero without a traceback; anything else is a bug in qkt.
"""


class QKTError(Exception):
    """A problem the user can fix; the message says how."""


class DataError(QKTError):
    """A data set is unknown, missing or unreadable."""


class ConfigError(QKTError):
    """A configuration file or option is invalid."""


class QueryError(QKTError):
    """A query cannot be run as asked (bad classes, no expert, bad teacher)."""
