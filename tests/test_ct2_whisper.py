"""Speech to text: the built-in Whisper base (CTranslate2, faster-whisper) in its own process, behind the
real node app, on real recordings (tests/fixtures/speech), through the official `openai` client."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
import pytest_asyncio
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from conftest import _client
from p2pai.backends.base import InvalidRequestError
from p2pai.backends.ct2.audio import decode
from p2pai.serving.limits import Limits
from speech import JFK, JFK_TEXT, LIBRIVOX, SPANISH, joined, transcript, word_errors, words, write_whisper_config
from test_api import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_AUDIO_SECONDS = 60


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> AsyncIterator[TestClient]:
    """The node app with `whisper` (built-in whisper-base, 2 workers) and the tiny chat model."""
    directory = write_whisper_config(tmp_path_factory.mktemp("whisper-models"), extra="parallel: 2\n")
    (directory / "tiny.yaml").write_text(f"name: tiny\nparameters:\n  model: {models_dir / 'tiny.gguf'}\n")
    limits = Limits(max_audio_seconds=MAX_AUDIO_SECONDS)
    async with _client(directory, tmp_path_factory.mktemp("data"), limits=limits) as c:
        yield c


@pytest.fixture(scope="module")
def api(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="none", max_retries=0)


def upload(data: bytes, filename: str = "speech.wav", **fields: str | list[str]) -> FormData:
    form = FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            form.add_field(name, one)
    return form


async def post(client: TestClient, data: bytes, path: str = "/v1/audio/transcriptions", **fields: str | list[str]):
    return await client.post(path, data=upload(data, **fields))


def cue_times(subtitles: str, decimal: str) -> list[tuple[float, float]]:
    stamp = r"(\d\d):(\d\d):(\d\d)" + re.escape(decimal) + r"(\d\d\d)"
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
               for h, m, s, ms in re.findall(stamp, subtitles)]
    return list(zip(seconds[::2], seconds[1::2], strict=True))


async def test_librivox_word_error_rate_through_the_openai_client(api: openai.AsyncOpenAI) -> None:
    errors = total = 0
    for clip in LIBRIVOX:
        result = await api.audio.transcriptions.create(model="whisper", file=clip.open("rb"), language="en")
        reference = words(transcript(clip))
        errors += word_errors(reference, words(result.text))
        total += len(reference)
    assert total > 60
    assert errors / total <= 0.05, f"{errors} word errors in {total} words"


async def test_every_response_format(api: openai.AsyncOpenAI) -> None:
    data = JFK.read_bytes()
    plain = await api.audio.transcriptions.create(model="whisper", file=("jfk.wav", data))
    assert words(plain.text) == words(JFK_TEXT)
    assert plain.usage is not None and plain.usage.type == "duration" and plain.usage.seconds == pytest.approx(11.0)
    text = await api.audio.transcriptions.create(model="whisper", file=("jfk.wav", data), response_format="text")
    assert isinstance(text, str) and words(text) == words(JFK_TEXT)

    verbose = await api.audio.transcriptions.create(model="whisper", file=("jfk.wav", data),
                                                    response_format="verbose_json")
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0)
    assert verbose.segments and verbose.segments[0].id == 0 and verbose.words is None
    assert words("".join(s.text for s in verbose.segments)) == words(JFK_TEXT)
    assert all(0 <= s.start < s.end <= 11.0 and s.tokens for s in verbose.segments)

    detailed = await api.audio.transcriptions.create(model="whisper", file=("jfk.wav", data),
                                                     response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    assert detailed.words is not None and [w.word.strip(" ,.").lower() for w in detailed.words] == words(JFK_TEXT)
    starts = [w.start for w in detailed.words]
    assert starts == sorted(starts) and all(w.start <= w.end for w in detailed.words)
    assert detailed.segments

    only_words = await api.audio.transcriptions.create(model="whisper", file=("jfk.wav", data),
                                                       response_format="verbose_json", timestamp_granularities=["word"])
    assert only_words.words and only_words.segments is None


@pytest.mark.parametrize(("response_format", "decimal"), [("srt", ","), ("vtt", ".")])
async def test_subtitles_have_monotonic_timestamps(api: openai.AsyncOpenAI, response_format: str, decimal: str
                                                   ) -> None:
    audio = joined([*LIBRIVOX, JFK])  # 38 s: more than one 30-second window, several segments
    subtitles = await api.audio.transcriptions.create(model="whisper", file=("book.wav", audio),
                                                      response_format=response_format, language="en")
    assert isinstance(subtitles, str)
    assert subtitles.startswith("WEBVTT\n\n" if response_format == "vtt" else "1\n")
    times = cue_times(subtitles, decimal)
    assert len(times) >= 4
    assert all(start < end for start, end in times)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(times))
    assert times[-1][1] <= 39.0
    assert "ask not what your country can do for you" in subtitles.lower()


async def test_translation_returns_english(api: openai.AsyncOpenAI) -> None:
    data = SPANISH.read_bytes()
    spanish = await api.audio.transcriptions.create(model="whisper", file=("es.wav", data),
                                                    response_format="verbose_json")
    assert spanish.language == "spanish" and "hermano" in spanish.text.lower()
    english = await api.audio.translations.create(model="whisper", file=("es.wav", data))
    assert {"good", "morning", "brother"} <= set(words(english.text)), english.text
    assert "hermano" not in english.text.lower()
    verbose = await api.audio.translations.create(model="whisper", file=("es.wav", data),
                                                  response_format="verbose_json")
    assert verbose.language == "english" and verbose.segments


async def test_stream_sends_each_segment_as_it_is_decoded(api: openai.AsyncOpenAI) -> None:
    audio = joined([*LIBRIVOX, JFK])
    events = [event async for event in await api.audio.transcriptions.create(
        model="whisper", file=("book.wav", audio), language="en", stream=True)]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 4 and all(event.type == "transcript.text.delta" for event in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(event.delta for event in deltas).strip() == done.text
    starts = [event.model_extra["start"] for event in deltas]
    assert starts == sorted(starts)
    assert words(done.text)[-6:] == words("you can do for your country")


async def test_concurrent_transcriptions_share_the_model(api: openai.AsyncOpenAI, client: TestClient) -> None:
    results = await asyncio.gather(*(api.audio.transcriptions.create(
        model="whisper", file=(clip.name, clip.read_bytes()), language="en") for clip in LIBRIVOX))
    for clip, result in zip(LIBRIVOX, results, strict=True):
        assert word_errors(words(transcript(clip)), words(result.text)) <= 2
    system = await (await client.get("/system")).json()
    [whisper] = [m for m in system["loaded_models"] if m["id"] == "whisper"]
    assert whisper["slots"] == 2 and whisper["in_flight"] == 0


async def test_vad_filter_drops_silence(client: TestClient) -> None:
    audio = joined([JFK], silence=20.0)  # 11 s of speech, then 20 s of silence
    response = await post(client, audio, response_format="verbose_json", vad_filter="true", language="en")
    assert response.status == 200
    body = await response.json()
    assert body["duration"] == pytest.approx(31.0) and words(body["text"]) == words(JFK_TEXT)
    assert body["segments"][-1]["end"] <= 12.0


PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)
NOT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(4000)  # an audio header, then noise


@pytest.mark.parametrize(("data", "fields", "status", "code", "param"), [
    (b"hello, this is a text file\n" * 20, {}, 400, "invalid_audio", "file"),
    (PNG, {}, 400, "invalid_audio", "file"),
    (b"", {}, 400, "invalid_audio", "file"),
    (NOT_WAV, {}, 400, "invalid_audio", "file"),
    (b"ID3" + bytes(1000), {}, 400, "invalid_audio", "file"),
    (JFK.read_bytes(), {"language": "xx"}, 400, None, "language"),
    (JFK.read_bytes(), {"language": "yue"}, 400, "unsupported_language", "language"),  # not in Whisper base
    (JFK.read_bytes(), {"response_format": "mp3"}, 400, None, "response_format"),
    (JFK.read_bytes(), {"temperature": "1.5"}, 400, None, "temperature"),
    (JFK.read_bytes(), {"timestamp_granularities[]": "word"}, 400, None, None),
    (JFK.read_bytes(), {"colour": "blue"}, 400, None, "colour"),
    (JFK.read_bytes(), {"model": "tiny"}, 400, "transcription_not_supported", "model"),
    (JFK.read_bytes(), {"model": "nope"}, 404, "model_not_found", "model"),
])
async def test_bad_uploads_get_a_4xx_in_openai_shape(client: TestClient, data: bytes, fields: dict[str, str],
                                                       status: int, code: str | None, param: str | None) -> None:
    response = await post(client, data, **{"model": "whisper", **fields})
    assert response.status == status, await response.text()
    body = await response.json()
    assert_openai_error(body, code)
    if param is not None:
        assert body["error"]["param"] == param


async def test_audio_longer_than_the_limit_is_refused_while_it_decodes(client: TestClient) -> None:
    audio = joined([JFK] * 6)  # 69 s > MAX_AUDIO_SECONDS
    response = await post(client, audio, model="whisper")
    assert response.status == 400
    assert_openai_error(await response.json(), "audio_too_long")


async def test_malformed_forms_get_a_400(client: TestClient) -> None:
    url = "/v1/audio/transcriptions"
    cases = [
        await client.post(url, json={"model": "whisper", "file": "jfk.wav"}),
        await client.post(url, data=b"--x\r\nno headers", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        await client.post(url, data=b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper",
                          headers={"Content-Type": "multipart/form-data; boundary=x"}),  # never closed
    ]
    form = FormData()
    form.add_field("model", "whisper")
    cases.append(await client.post(url, data=form))  # no file at all
    many = FormData()
    for index in range(70):
        many.add_field(f"f{index}", "x")
    many.add_field("file", b"x", filename="a.wav")
    cases.append(await client.post(url, data=many))
    for response in cases:
        assert response.status == 400, await response.text()
        assert_openai_error(await response.json())


async def test_an_upload_over_25_mib_is_a_413(client: TestClient) -> None:
    big = b"RIFF" + bytes(25 * 1024 * 1024 + 10)
    response = await client.post("/v1/audio/transcriptions", data=upload(big, model="whisper"))
    assert response.status == 413
    assert_openai_error(await response.json(), "request_too_large")
    huge = b"RIFF" + bytes(27 * 1024 * 1024)  # past the whole form's limit: refused while it is read
    response = await client.post("/v1/audio/transcriptions", data=upload(huge, model="whisper"))
    assert response.status == 413
    json_too_big = await client.post("/v1/embeddings", data=b"{" + bytes(17 * 1024 * 1024),
                                     headers={"Content-Type": "application/json"})
    assert json_too_big.status == 413  # other routes keep the 16 MiB limit


async def test_paths_without_v1_and_the_models_tasks(client: TestClient) -> None:
    response = await post(client, JFK.read_bytes(), "/audio/transcriptions", model="whisper", response_format="text")
    assert response.status == 200 and response.content_type == "text/plain"
    assert words(await response.text()) == words(JFK_TEXT)
    models = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert models["whisper"]["tasks"] == ["transcription", "translation"]
    assert models["whisper"]["backend"] == "ctranslate2"
    chat = await client.post("/v1/chat/completions", json={"model": "whisper", "messages": [
        {"role": "user", "content": "hi"}]})
    assert chat.status == 400
    assert_openai_error(await chat.json(), "chat_not_supported")


async def test_a_crash_of_the_model_costs_its_requests_not_the_node(client: TestClient) -> None:
    audio = joined([*LIBRIVOX, JFK])
    pending = asyncio.ensure_future(post(client, audio, model="whisper", language="en"))
    await asyncio.sleep(1.0)
    system = await (await client.get("/system")).json()
    [whisper] = [m for m in system["loaded_models"] if m["id"] == "whisper"]
    os.kill(whisper["pid"], signal.SIGKILL)
    crashed = await pending
    assert crashed.status == 500
    assert_openai_error(await crashed.json(), "model_crashed")
    again = await post(client, JFK.read_bytes(), model="whisper")  # the model starts again
    assert again.status == 200 and words((await again.json())["text"]) == words(JFK_TEXT)


async def test_the_bounded_decoder_matches_faster_whispers_own() -> None:
    """audio.py runs faster-whisper's private decoding steps: this fails loudly if an upgrade changes them."""
    from faster_whisper.audio import decode_audio

    for clip in (JFK, SPANISH):
        ours = decode(clip.read_bytes(), max_seconds=60)
        np.testing.assert_array_equal(ours, decode_audio(str(clip)))
    with pytest.raises(InvalidRequestError, match="longer than 5 seconds"):
        decode(JFK.read_bytes(), max_seconds=5)
    with pytest.raises(InvalidRequestError, match="could not be decoded"):
        decode(b"not audio at all", max_seconds=5)


async def test_the_official_client_gets_its_typed_errors(api: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await api.audio.transcriptions.create(model="whisper", file=("notes.txt", b"just some text, not speech"))
    assert refused.value.code == "invalid_audio"
