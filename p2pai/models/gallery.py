"""Model galleries in LocalAI's format: YAML indexes of installable models, from a path or an
HTTP(S) URL (`--gallery`), plus a built-in index of the built-in models.

An index is a list of entries: `name`, `description`, `license`, `urls`, `tags`, `icon`, `url`
(a model definition to start from: its `config_file` and `files`), `overrides` (merged into the
model's config) and `files` (`filename`, `sha256`, `uri`). A file without a SHA-256 cannot be
verified and is refused when the model is installed.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..protocol.localai import Gallery, GalleryFile, GalleryMetadata
from .builtin import BUILTIN_GGUF, BuiltinGGUF

BUILTIN_GALLERY = "p2pai"
MAX_INDEX_BYTES = 16 << 20
FETCH_TIMEOUT_S = 30.0
CACHE_S = 60.0
"""An index is read again after this long (galleries change rarely; /models/available is polled)."""
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
"""Model and file names that are safe as file names in the models dir."""


class GalleryError(Exception):
    """A gallery or model definition cannot be read; the message names it."""


class GalleryEntry(GalleryMetadata):
    """An entry of an index or a model definition, with what installing it needs."""

    model_config = ConfigDict(extra="ignore")

    config_file: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return safe_name(name)

    @field_validator("config_file", mode="before")
    @classmethod
    def _config_text(cls, value: Any) -> Any:
        """LocalAI writes `config_file` as YAML text."""
        if isinstance(value, str):
            try:
                return yaml.safe_load(value) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"config_file is not YAML: {exc}") from exc
        return value


def safe_name(name: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable model or file name (letters, digits and . _ + -, "
                         "at most 128, not starting with a dot)")
    return name


def builtin_entry(builtin: BuiltinGGUF) -> GalleryEntry:
    config = builtin.config(Path("."))
    overrides = config.model_dump(include={"context_size", "embeddings", "template"}, exclude_none=True)
    overrides["parameters"] = {"max_tokens": config.parameters.max_tokens}
    return GalleryEntry(name=builtin.name, description=builtin.description, license=builtin.license,
                        overrides=overrides, files=[GalleryFile(filename=builtin.file_name, sha256=builtin.sha256)])


@dataclass(frozen=True)
class Found:
    gallery: Gallery
    entry: GalleryEntry


def parse_gallery_flag(value: str) -> Gallery:
    """`--gallery NAME=LOCATION` or `--gallery LOCATION` (named after its file)."""
    name, sep, location = value.partition("=")
    if not sep or "/" in name or ":" in name:
        location = value
        name = Path(value.split("?")[0].rstrip("/")).stem or "gallery"
    return Gallery(name=name, url=location)


class Galleries:
    def __init__(self, configured: list[Gallery]) -> None:
        self.galleries = [Gallery(name=BUILTIN_GALLERY, url="builtin"), *configured]
        self._cache: dict[str, tuple[float, list[GalleryEntry]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def entries(self) -> list[Found]:
        """Every gallery's entries; a gallery that cannot be read is an error naming it."""
        found = []
        for gallery in self.galleries:
            found += [Found(gallery, entry) for entry in await self._index(gallery)]
        return found

    async def find(self, model_id: str) -> Found | None:
        """`gallery@name`, or `name` in the first gallery that has it."""
        gallery_name, sep, name = model_id.rpartition("@")
        for gallery in self.galleries:
            if sep and gallery.name != gallery_name:
                continue
            for entry in await self._index(gallery):
                if entry.name == name:
                    return Found(gallery, entry)
        return None

    async def definition(self, location: str, base: str | None = None) -> GalleryEntry:
        """A model definition (LocalAI's model YAML: `name`, `config_file`, `files`) at ``location``,
        relative to ``base`` (the index that names it)."""
        raw = await self.read(resolve(location, base))
        if not isinstance(raw, dict):
            raise GalleryError(f"{location}: a model definition must be a YAML mapping")
        try:
            return GalleryEntry.model_validate(raw)
        except ValidationError as exc:
            raise GalleryError(f"{location}: {_first_problem(exc)}") from exc

    async def read(self, location: str) -> Any:
        """The YAML at a path or an HTTP(S) URL."""
        if location.startswith(("http://", "https://")):
            text = await self._download(location)
        else:
            try:
                text = await asyncio.to_thread(_read_local, location)
            except OSError as exc:
                raise GalleryError(f"cannot read {location}: {exc.strerror or exc}") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GalleryError(f"{location} is not YAML: {exc}") from exc

    async def _index(self, gallery: Gallery) -> list[GalleryEntry]:
        if gallery.url == "builtin":
            return [builtin_entry(builtin) for builtin in BUILTIN_GGUF]
        cached = self._cache.get(gallery.name)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        raw = await self.read(gallery.url)
        if not isinstance(raw, list):
            raise GalleryError(f"the gallery {gallery.name!r} ({gallery.url}) is not a YAML list of models")
        entries = []
        for item in raw:
            try:
                entries.append(GalleryEntry.model_validate(item))
            except ValidationError:
                continue  # an entry this node cannot use (a bad name...) hides only itself
        self._cache[gallery.name] = (time.monotonic(), entries)
        return entries

    async def _download(self, url: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise GalleryError(f"{url} answered {response.status}")
                body = await response.content.read(MAX_INDEX_BYTES + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise GalleryError(f"cannot fetch {url}: {exc!r}") from exc
        if len(body) > MAX_INDEX_BYTES:
            raise GalleryError(f"{url} is larger than {MAX_INDEX_BYTES >> 20} MiB")
        return body.decode("utf-8", "replace")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def resolve(location: str, base: str | None = None) -> str:
    """LocalAI's shorthands (`github:owner/repo/path@branch`, `huggingface://owner/repo/path`) as
    HTTPS URLs; a relative location against the index that names it (an index served over HTTP(S)
    names only URLs of its own server or others, never a path on this machine)."""
    if location.startswith("github:"):
        path, _, branch = location.removeprefix("github:").partition("@")
        owner, repo, rest = [*path.split("/", 2), "", ""][:3]
        return f"https://raw.githubusercontent.com/{owner}/{repo}/{branch or 'main'}/{rest}"
    if location.startswith("huggingface://"):
        owner, repo, rest = [*location.removeprefix("huggingface://").split("/", 2), "", ""][:3]
        return f"https://huggingface.co/{owner}/{repo}/resolve/main/{rest}"
    if "://" in location or base is None:
        return location
    if base.startswith(("http://", "https://")):  # never a path on this machine
        return urljoin(base, location)
    if Path(location).is_absolute():
        return location
    return str(Path(base).expanduser().parent / location)


def _read_local(location: str) -> str:
    path = Path(location).expanduser()
    with path.open("rb") as source:
        data = source.read(MAX_INDEX_BYTES + 1)
    if len(data) > MAX_INDEX_BYTES:
        raise GalleryError(f"{path} is larger than {MAX_INDEX_BYTES >> 20} MiB")
    return data.decode("utf-8", "replace")


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    return f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
