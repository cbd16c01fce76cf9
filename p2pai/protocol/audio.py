"""OpenAI's audio endpoints: /v1/audio/transcriptions and /v1/audio/translations.

Requests are multipart forms: the `file` part plus text fields, which arrive as strings and are
read as their types ("0.2" a float, "true" a boolean). Arrays come as repeated fields named with
`[]`, as the official clients send them (`timestamp_granularities[]`). Unknown fields are
refused with a 400, as for JSON requests. `vad_filter` is our extension (faster-whisper's Silero VAD).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from ..serving.languages import LANGUAGES
from ..serving.limits import MAX_AUDIO_PROMPT, MAX_MODEL_NAME

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TEXT_FORMATS = ("text", "srt", "vtt")
"""Answered as text/plain, not JSON."""


class _AudioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    file: Annotated[bytes, Field(repr=False, json_schema_extra={"contentMediaType": "application/octet-stream"})]
    """The audio (or video) file: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm..., at most 25 MiB."""
    model: Annotated[str, Field(max_length=MAX_MODEL_NAME)] | None = None
    prompt: Annotated[str, Field(max_length=MAX_AUDIO_PROMPT)] | None = None
    """Text the transcript continues: names and terms to spell, a style (Whisper reads its last 223 tokens)."""
    response_format: ResponseFormat = "json"
    temperature: Annotated[float, Field(ge=0, le=1)] = 0.0
    """0: Whisper's fallback, greedy first and higher temperatures for windows that fail its checks."""
    stream: bool = False
    """Server-sent events: a `transcript.text.delta` per segment as it is decoded, then `transcript.text.done`."""
    vad_filter: bool = False
    """Skip the parts without speech (Silero VAD) before decoding."""


class TranscriptionRequest(_AudioRequest):
    language: str | None = None
    """The spoken language, ISO 639-1 ("en", "fr"...); default: detected from the first 30 seconds."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default=["segment"], alias="timestamp_granularities[]", max_length=2)
    """With verbose_json: `word` adds word timestamps, `segment` (the default) keeps the segments."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in LANGUAGES:
            raise ValueError(f"{value!r} is not a language code Whisper knows (ISO 639-1, such as en, fr, de)")
        return value.lower() if value else None

    @model_validator(mode="after")
    def _words_need_verbose_json(self) -> TranscriptionRequest:
        if "word" in self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("word timestamps (timestamp_granularities[]=word) need response_format verbose_json")
        return self


class TranslationRequest(_AudioRequest):
    """Speech in any language to English text."""


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float
    """Seconds of audio in the file."""


class Transcription(BaseModel):
    text: str
    usage: DurationUsage


class Translation(BaseModel):
    text: str


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe", "translate"]
    language: str
    """The spoken language's English name ("english"); for a translation, always english."""
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = Field(default=None, exclude_if=lambda value: value is None)
    words: list[TranscriptionWord] | None = Field(default=None, exclude_if=lambda value: value is None)
    usage: DurationUsage


class TranscriptionAnswer(RootModel[Transcription | TranscriptionVerbose]):
    """What a transcription answers in JSON: `json` or `verbose_json` (text, srt and vtt are text/plain)."""


class TranslationAnswer(RootModel[Translation | TranscriptionVerbose]):
    """What a translation answers in JSON."""


class TranscriptTextDelta(BaseModel):
    """One segment's text, as soon as it is decoded; the deltas together make the whole text."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    segment_id: str
    start: float
    """Where the segment begins in the audio, in seconds (our extension, like `end`)."""
    end: float


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: DurationUsage
