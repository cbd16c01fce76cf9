"""POST /v1/audio/transcriptions and /v1/audio/translations: an upload to text, in OpenAI's shapes.

Everything a request carries is checked here, in the node, before any of it reaches the model's
process (FFmpeg, CTranslate2): the file's size, that it starts like an audio or video container,
the language, the prompt's length; the model's process then bounds the audio's duration while it
decodes. The answer is built from the segments as the model hands them on: whole (json, text,
srt, vtt, verbose_json) or as server-sent events, one per segment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace

from ..backends.base import InvalidRequestError
from ..backends.transcription import AudioInfo, Segment, TranscriptionJob, WhisperTask
from ..protocol.audio import (
    DurationUsage,
    Transcription,
    TranscriptionRequest,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
    TranscriptTextDelta,
    TranscriptTextDone,
    Translation,
    TranslationRequest,
)
from .audio_format import sniff
from .context import ServedModel
from .languages import language_name
from .subtitles import srt, vtt

AudioRequest = TranscriptionRequest | TranslationRequest
Answer = Transcription | Translation | TranscriptionVerbose | str


@dataclass(frozen=True)
class Transcript:
    info: AudioInfo
    segments: list[Segment]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()


def job(request: AudioRequest, max_seconds: float) -> TranscriptionJob:
    """What the model is asked to do (InvalidRequestError for a file that is not audio)."""
    audio = request.file
    if not audio:
        raise InvalidRequestError("the uploaded file is empty", code="invalid_audio", param="file")
    if sniff(audio) is None:
        raise InvalidRequestError("the uploaded file is not audio (supported: flac, mp3, mp4, mpeg, mpga, m4a, ogg, "
                                  "wav, webm and other audio or video containers)", code="invalid_audio", param="file")
    if isinstance(request, TranscriptionRequest):
        task: WhisperTask = "transcribe"
        language, words = request.language, "word" in request.timestamp_granularities
    else:
        task, language, words = "translate", None, False
    return TranscriptionJob(audio=audio, task=task, language=language, prompt=request.prompt,
                            temperature=request.temperature, words=words, vad_filter=request.vad_filter,
                            max_seconds=max_seconds)


async def transcribe(served: ServedModel, request: AudioRequest) -> Answer:
    """The whole answer in the response format asked for (a str for text, srt and vtt)."""
    work = job(request, served.limits.max_audio_seconds)
    async with aclosing(served.engine.transcribe(work)) as items:
        info = await anext(items)
        assert isinstance(info, AudioInfo)
        segments = [item async for item in items if isinstance(item, Segment)]
    return _shape(Transcript(info, _numbered(segments)), request, work.task)


async def stream(served: ServedModel, request: AudioRequest) -> AsyncIterator[TranscriptTextDelta | TranscriptTextDone]:
    """A delta per segment as it is decoded, then the whole text. Problems with the file surface before
    the first event (the model reports the audio's language and length first), with their own status."""
    items = served.engine.transcribe(job(request, served.limits.max_audio_seconds))
    info = await anext(items)
    assert isinstance(info, AudioInfo)

    async def events() -> AsyncIterator[TranscriptTextDelta | TranscriptTextDone]:
        texts: list[str] = []
        try:
            async for item in items:
                assert isinstance(item, Segment)
                delta = item.text if texts else item.text.lstrip()
                texts.append(delta)
                yield TranscriptTextDelta(delta=delta, segment_id=str(len(texts) - 1), start=item.start, end=item.end)
        finally:
            await items.aclose()
        yield TranscriptTextDone(text="".join(texts).rstrip(), usage=DurationUsage(seconds=info.duration))

    return events()


def _numbered(segments: list[Segment]) -> list[Segment]:
    """OpenAI numbers segments from 0 (faster-whisper from 1)."""
    return [replace(segment, id=index) for index, segment in enumerate(segments)]


def _shape(transcript: Transcript, request: AudioRequest, task: WhisperTask) -> Answer:
    form = request.response_format
    usage = DurationUsage(seconds=transcript.info.duration)
    if form == "text":
        return transcript.text + "\n"
    if form == "srt":
        return srt(transcript.segments)
    if form == "vtt":
        return vtt(transcript.segments)
    if form == "json":
        if task == "translate":
            return Translation(text=transcript.text)
        return Transcription(text=transcript.text, usage=usage)
    granularities = request.timestamp_granularities if isinstance(request, TranscriptionRequest) else ["segment"]
    segments = [TranscriptionSegment(id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text, tokens=list(s.tokens),
                                     temperature=s.temperature, avg_logprob=s.avg_logprob,
                                     compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob)
                for s in transcript.segments]
    words = [TranscriptionWord(word=w.word, start=w.start, end=w.end) for s in transcript.segments for w in s.words]
    return TranscriptionVerbose(
        task=task,
        language="english" if task == "translate" else language_name(transcript.info.language),
        duration=transcript.info.duration,
        text=transcript.text,
        segments=segments if "segment" in granularities else None,
        words=words if "word" in granularities else None,
        usage=usage,
    )
