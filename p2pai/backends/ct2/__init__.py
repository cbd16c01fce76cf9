"""Models converted to CTranslate2: Whisper (through faster-whisper) and text generators."""

from ..tasks import Task
from .settings import Ct2Kind, Ct2Settings


def ct2_tasks(kind: Ct2Kind, multilingual: bool) -> tuple[Task, ...]:
    """Whisper transcribes, and translates to English unless it is an English-only model; a decoder writes."""
    if kind == "generator":
        return ("chat", "completion")
    return ("transcription", "translation") if multilingual else ("transcription",)


__all__ = ["Ct2Kind", "Ct2Settings", "ct2_tasks"]
