"""Whisper through faster-whisper, inside the model's process.

One `WhisperModel` with `workers` CTranslate2 replicas: each concurrent transcription runs on a
thread of its own with a replica to itself (a bounded pool), which on a 2-core machine gives four
concurrent clients about twice the audio per second of one at a time (bench/README.md, audio).
Segments are handed on as faster-whisper decodes them; a cancelled transcription stops at the
next segment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..base import InvalidRequestError, ModelInfo, ModelLoadError
from ..transcription import AudioInfo, Segment, TranscriptionEnd, TranscriptionItem, TranscriptionJob, Word
from .audio import decode
from .settings import Ct2Settings

BEAM_SIZE = 5
"""OpenAI's Whisper default, and faster-whisper's."""
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""With temperature 0, a window whose decoding fails the compression or log-probability check is
decoded again at the next temperature (OpenAI's and faster-whisper's schedule)."""


class WhisperHost:
    def __init__(self, settings: Ct2Settings) -> None:
        """Load the model (ModelLoadError if it cannot be)."""
        from faster_whisper import WhisperModel

        self.settings = settings
        try:
            self._model = WhisperModel(settings.path, device=settings.device, compute_type=settings.compute_type,
                                       cpu_threads=settings.threads, num_workers=settings.workers)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the Whisper model in {settings.path}: {exc}") from exc

    def info(self) -> ModelInfo:
        return ModelInfo(metadata={}, bos_text="", eos_text="", fim=None, n_ctx=self._model.max_length,
                         n_vocab=self._model.hf_tokenizer.get_vocab_size(), slots=self.settings.workers)

    def transcribe(self, job: TranscriptionJob, cancelled: Callable[[], bool]) -> Iterator[TranscriptionItem]:
        """AudioInfo, then the segments as they are decoded, then TranscriptionEnd."""
        model = self._model
        if job.language is not None and (job.language not in model.supported_languages
                                         or model.hf_tokenizer.token_to_id(f"<|{job.language}|>") is None):
            raise InvalidRequestError(f"this Whisper model does not know the language {job.language!r}",
                                      code="unsupported_language", param="language")
        audio = decode(job.audio, job.max_seconds)
        segments, info = model.transcribe(
            audio,
            task=job.task,
            language=job.language,
            initial_prompt=job.prompt or None,
            beam_size=BEAM_SIZE,
            temperature=FALLBACK_TEMPERATURES if job.temperature == 0 else job.temperature,
            word_timestamps=job.words,
            vad_filter=job.vad_filter,
        )
        yield AudioInfo(language=info.language, language_probability=info.language_probability,
                        duration=info.duration)
        for segment in segments:
            if cancelled():
                return
            words = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in segment.words or ())
            yield Segment(id=segment.id, seek=segment.seek, start=float(segment.start), end=float(segment.end),
                          text=segment.text,
                          tokens=tuple(segment.tokens), temperature=segment.temperature or 0.0,
                          avg_logprob=segment.avg_logprob, compression_ratio=segment.compression_ratio,
                          no_speech_prob=segment.no_speech_prob, words=words)
        yield TranscriptionEnd()
