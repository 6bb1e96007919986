"""The query: probe and masks, Phase 1, Phase 2, QKT Light, and the protocol that ties them."""

from .protocol import Announcement, QueryReport, Teacher, answer_probe, export_weights, import_weights, learn, query, select_experts

__all__ = ["Announcement", "QueryReport", "Teacher", "answer_probe", "export_weights", "import_weights", "learn", "query", "select_experts"]
