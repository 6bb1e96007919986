"""The query: the messages, the teacher side, the channel between them, the querier side, and Phases 1 and 2."""

from .api import query
from .channel import CachedScores, Faults, ForgedScores, InProcessChannel, NoisyScores, Recorder, TeacherChannel
from .messages import Announcement, Failure, QueryReport, Reply
from .querier import import_weights, learn, run_query, select_experts, vet_experts
from .teacher import Teacher, answer_probe, export_weights
from .transfer import Lesson
from .variant import Variant

__all__ = ["Announcement", "CachedScores", "Failure", "Faults", "ForgedScores", "InProcessChannel", "Lesson", "NoisyScores",
           "QueryReport", "Recorder", "Reply", "Teacher", "TeacherChannel", "Variant", "answer_probe", "export_weights",
           "import_weights", "learn", "query", "run_query", "select_experts", "vet_experts"]
