"""Segments as SubRip (.srt) and WebVTT (.vtt) subtitles, as OpenAI's Whisper API writes them."""

from __future__ import annotations

from ..backends.transcription import Segment


def _timestamp(seconds: float, decimal: str) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    seconds_, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds_:02d}{decimal}{milliseconds:03d}"


def srt(segments: list[Segment]) -> str:
    cues = [f"{index}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
            for index, s in enumerate(segments, start=1)]
    return "\n".join(cues) + ("\n" if cues else "")


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)
