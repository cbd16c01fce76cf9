"""Where a gallery's locations point: LocalAI's shorthands, and paths relative to the index."""

from __future__ import annotations

import pytest

from p2pai.models.gallery import parse_gallery_flag, resolve


@pytest.mark.parametrize(("location", "base", "expected"), [
    ("github:go-skynet/model-gallery/phi-2.yaml", None,
     "https://raw.githubusercontent.com/go-skynet/model-gallery/main/phi-2.yaml"),
    ("github:owner/repo/dir/m.yaml@v2", None, "https://raw.githubusercontent.com/owner/repo/v2/dir/m.yaml"),
    ("huggingface://TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf", None,
     "https://huggingface.co/TheBloke/phi-2-GGUF/resolve/main/phi-2.Q4_K_M.gguf"),
    ("base.yaml", "https://example.com/gallery/index.yaml", "https://example.com/gallery/base.yaml"),
    ("base.yaml", "/srv/gallery/index.yaml", "/srv/gallery/base.yaml"),
    ("/srv/other/base.yaml", "/srv/gallery/index.yaml", "/srv/other/base.yaml"),
])
def test_locations(location: str, base: str | None, expected: str) -> None:
    assert resolve(location, base) == expected


@pytest.mark.parametrize("location", ["/etc/passwd", "../../etc/passwd", "~/.ssh/id_ed25519.yaml"])
def test_an_index_on_the_web_never_names_a_file_of_this_machine(location: str) -> None:
    assert resolve(location, "https://example.com/gallery/index.yaml").startswith("https://example.com/")


def test_gallery_flags() -> None:
    assert parse_gallery_flag("mine=https://example.com/g/index.yaml").model_dump() == {
        "name": "mine", "url": "https://example.com/g/index.yaml"}
    assert parse_gallery_flag("https://example.com/g/models.yaml?x=1").name == "models"
    assert parse_gallery_flag("/srv/gallery.yaml").model_dump() == {"name": "gallery", "url": "/srv/gallery.yaml"}
