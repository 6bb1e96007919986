"""How an ablation changes the query: the engine's switches that are not user settings.

:mod:`qkt.methods` names each ablation of SPEC §4 as a method with its
:class:`Variant`; QKT itself is the default variant. A user's
:class:`~qkt.config.QueryConfig` never sets these.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import QueryConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """The engine's switches.

    Attributes
    ----------
    masks:
        False treats every teacher as an expert in every query class (no expert discovery).
    phase2:
        False skips the head refinement.
    merged:
        One class-balanced phase instead of Phase 1 then Phase 2.
    short_epochs:
        A Phase 1 epoch draws as many transfer inputs as the querier holds, in turn,
        instead of one pass over the transfer set.
    whole_epochs:
        Phase 1 epochs that train the whole student (None: all); the later ones train only
        its last block and head, as QKT Light does.
    """

    masks: bool = True
    phase2: bool = True
    merged: bool = False
    short_epochs: bool = False
    whole_epochs: int | None = None

    def check(self, config: QueryConfig) -> None:
        """Refuse a variant that ``config`` makes meaningless, with what clashes."""
        if config.mixup and not config.phase1_mixups and (self.merged or not self.phase2 or not config.phase2_epochs):
            raise ConfigError("query.phase1_mixups = 0 leaves the mixups to Phase 2, which this method skips (no Phase 2, "
                              "phases merged, or phase2_epochs = 0): no phase would learn from them")
        if self.short_epochs and 0 < config.phase1_mixups < 1:
            raise ConfigError("short Phase 1 epochs draw from the whole transfer set, mixups included: they cannot also take "
                              "a share of the mixups (query.phase1_mixups between 0 and 1)")
