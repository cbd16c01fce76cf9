"""Is an upload an audio (or video) file at all? Judged from its first bytes, in Python, before any of
it reaches FFmpeg in a model's process: a text file, an image or an archive is refused at once with
a 400, whatever it is called. The model's decoder then finds out whether the audio in it is sound."""

from __future__ import annotations

_RIFF_KINDS = (b"WAVE", b"AVI ")
_AIFF_KINDS = (b"AIFF", b"AIFC")
_SIGNATURES = (
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"\x1a\x45\xdf\xa3", "webm"),  # Matroska / WebM (EBML)
    (b"ID3", "mp3"),
    (b"#!AMR", "amr"),
    (b"caff", "caf"),
    (b"RF64", "wav"),
    (b"0&\xb2u\x8ef\xcf\x11", "wma"),  # ASF
    (b".snd", "au"),
)


def sniff(data: bytes) -> str | None:
    """The container the bytes start like (wav, mp3, flac, ogg, webm, mp4, aac...), or None."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] in _RIFF_KINDS:
        return "wav" if head[8:12] == b"WAVE" else "avi"
    if head[:4] == b"FORM" and head[8:12] in _AIFF_KINDS:
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mp4"  # mp4, m4a, mov, 3gp
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # an MPEG audio or ADTS frame header
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"  # MPEG program stream
    if data[:1] == data[188:189] == data[376:377] == b"\x47":
        return "mpeg"  # MPEG transport stream: a sync byte every 188 bytes
    return None
