"""``qkt bench``: every method of SPEC §4 under the scenarios of SPEC §5, as paper-style tables.

:mod:`.catalogue` holds the scenarios and profiles, :mod:`.runner` runs them,
:mod:`.statistics` summarises the queries and :mod:`.output` writes the tables,
the headline and the chart.
"""

from .catalogue import PROFILES, SCENARIOS, BenchScenario, Profile, multi_query_size
from .output import format_headline, format_tables, write_outputs
from .runner import available_datasets, read_run, run_bench
from .statistics import METRICS, summarize

__all__ = ["METRICS", "PROFILES", "SCENARIOS", "BenchScenario", "Profile", "available_datasets", "format_headline",
           "format_tables", "multi_query_size", "read_run", "run_bench", "summarize", "write_outputs"]
