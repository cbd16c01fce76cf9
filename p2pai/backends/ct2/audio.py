"""Decoding an upload to 16 kHz mono samples: faster-whisper's own decoder (PyAV), with a bound.

`faster_whisper.decode_audio` decodes a whole file however long it is; a 25 MB upload of
low-bitrate audio can hold hours, which decoded to float32 would take gigabytes. This runs the
same steps (its private `_ignore_invalid_frames`, `_group_frames`, `_resample_frames` generators,
the same resampler settings) and stops as soon as the audio passes `max_seconds`. It is the one
place that uses faster-whisper's private API (tests/test_ct2_whisper.py checks it is still there).
PyAV's FFmpeg is native code: this runs in the model's process, never in the node.
"""

from __future__ import annotations

import gc
import io

import numpy as np

from ..base import InvalidRequestError

SAMPLE_RATE = 16000
_GROUP = 500_000
"""Samples faster-whisper resamples at once."""


def decode(data: bytes, max_seconds: float) -> np.ndarray:
    """float32 samples in [-1, 1] at 16 kHz (InvalidRequestError when not audio, empty or too long)."""
    import av
    from faster_whisper.audio import _group_frames, _ignore_invalid_frames, _resample_frames

    limit = int(max_seconds * SAMPLE_RATE)
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequestError("the file has no audio stream", code="invalid_audio", param="file")
            frames = _resample_frames(_group_frames(_ignore_invalid_frames(container.decode(audio=0)), _GROUP),
                                      resampler)
            for frame in frames:
                array = frame.to_ndarray().reshape(-1)
                count += len(array)
                if count > limit:
                    raise InvalidRequestError(
                        f"the audio is longer than {max_seconds:g} seconds, the most this node transcribes",
                        code="audio_too_long", param="file")
                chunks.append(array)
    except av.error.FFmpegError as exc:
        raise InvalidRequestError(f"the file could not be decoded as audio ({exc.strerror or exc})",
                                  code="invalid_audio", param="file") from exc
    finally:
        del resampler
        gc.collect()  # PyAV's resampler keeps memory until collected (faster-whisper issue 390)
    if not count:
        raise InvalidRequestError("the file holds no audio samples", code="invalid_audio", param="file")
    return np.concatenate(chunks).astype(np.float32) / 32768.0
