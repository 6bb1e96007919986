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


class QueryFailed(QueryError):
    """A query whose exchange ran but left nobody to learn from: no teacher answered, none is an expert, or none is trusted.

    The querier keeps its own model. ``seconds`` (per step, with ``total`` and the
    teachers' compute in ``teachers``), ``bytes_sent`` and ``bytes_received`` are what the
    exchange cost it before it stopped.
    """

    def __init__(self, message: str, seconds: dict[str, float], bytes_sent: int, bytes_received: int):
        super().__init__(message)
        self.seconds, self.bytes_sent, self.bytes_received = seconds, bytes_sent, bytes_received
