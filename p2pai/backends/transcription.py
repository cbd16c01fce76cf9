"""What a transcription asks of a speech model and what it yields, engine-agnostic.

The serving layer sends a `TranscriptionJob` (the upload's bytes, already checked to be of an
audio format and of an allowed size) and reads back `AudioInfo` first, then each `Segment` as it
is decoded, then `TranscriptionEnd`. Errors in the audio itself (a file that does not decode,
one longer than allowed) come as InvalidRequestError before AudioInfo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

WhisperTask = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscriptionJob:
    audio: bytes
    """The uploaded file as it came (wav, mp3, flac, ogg, webm, mp4...)."""
    task: WhisperTask = "transcribe"
    language: str | None = None
    """The spoken language (ISO 639-1); None: detected from the first 30 seconds."""
    prompt: str | None = None
    """Text the model continues from: spelling of names, style."""
    temperature: float = 0.0
    """0: greedy first, then higher temperatures where decoding fails (Whisper's fallback)."""
    words: bool = False
    """Word timestamps."""
    vad_filter: bool = False
    """Drop the parts without speech first (Silero VAD)."""
    max_seconds: float = 3600.0
    """Longest audio decoded; longer is refused while it decodes, never held whole in memory."""


class _Item:
    """What a transcription's items tell the node's handle on the model process (base.StreamItem):
    all but the end are read by the caller, none is counted as an answer's tokens."""

    ends_stream: ClassVar[bool] = False
    answer_tokens: ClassVar[int | None] = None
    is_output: ClassVar[bool] = True


@dataclass(frozen=True)
class AudioInfo(_Item):
    language: str
    language_probability: float
    duration: float
    """Seconds of audio in the file."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment(_Item):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscriptionEnd(_Item):
    """The last item of a transcription: it ends the stream and is not passed on."""

    ends_stream: ClassVar[bool] = True
    is_output: ClassVar[bool] = False


TranscriptionItem = AudioInfo | Segment | TranscriptionEnd
