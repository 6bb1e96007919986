"""qkt — Query-based Knowledge Transfer.

A party asks its peers for exactly the classes it lacks and learns them from
their models in one exchange, without any data leaving anyone::

    import qkt
    new_model, report = qkt.query(my_model, {"lab-a": model_a, "lab-b": model_b},
                                  query_classes=[3], local_data=(x, y))

``qkt.run_query`` is the same query over any :class:`TeacherChannel`: the in-process
one, the Flower app's, or one of your own. Progress is logged to the ``qkt`` logger
(``logging.basicConfig(level=logging.INFO)`` shows it).
"""

import logging

from .config import QueryConfig, RunConfig
from .errors import ConfigError, DataError, QKTError, QueryError, QueryFailed
from .query import InProcessChannel, QueryReport, Teacher, TeacherChannel, query, run_query

__all__ = ["query", "run_query", "InProcessChannel", "TeacherChannel", "QueryConfig", "QueryReport", "RunConfig", "Teacher",
           "QKTError", "ConfigError", "DataError", "QueryError", "QueryFailed"]
__version__ = "0.1.0"

# qkt logs its progress through the "qkt" logger (qkt.query, qkt.bench, ...); showing it is the application's choice
# (the qkt command does). Warnings a user must act on are `warnings.warn`.
logging.getLogger(__name__).addHandler(logging.NullHandler())
