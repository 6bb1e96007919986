"""The query: probe and masks, Phase 1, Phase 2, QKT Light, and the protocol that ties them."""

from .protocol import (
    Announcement,
    Lesson,
    QueryReport,
    Teacher,
    answer_probe,
    choose_experts,
    export_weights,
    import_weights,
    learn,
    learn_and_report,
    query,
    select_experts,
    vet_experts,
)

__all__ = ["Announcement", "Lesson", "QueryReport", "Teacher", "answer_probe", "choose_experts", "export_weights", "import_weights", "learn",
           "learn_and_report", "query", "select_experts", "vet_experts"]
