"""The memory a GGUF model needs, estimated from its header (backends/llama/memory.py)."""

from __future__ import annotations

from pathlib import Path

from p2pai.backends.llama.memory import HEADROOM, PROCESS_BYTES, ModelLayout, estimate, estimate_file, gguf_layout

MiB = 1 << 20


def test_the_parts_add_up() -> None:
    layout = ModelLayout((10 * MiB,) * 4, output_bytes=MiB, input_bytes=2 * MiB, kv_bytes_per_token_layer=1024,
                         vocab_size=1000, embedding_length=256, head_count=4)
    one = estimate(layout, context_per_slot=2048, slots=1, batch=512)
    four = estimate(layout, context_per_slot=2048, slots=4, batch=512)
    assert one.weights == 43 * MiB
    assert one.kv_cache_per_slot == 1024 * 4 * 2048 == four.kv_cache_per_slot
    assert four.total - one.total >= int(3 * one.kv_cache_per_slot * HEADROOM)  # KV cache grows with the slots
    assert one.total > (one.weights + one.kv_cache_per_slot + one.compute) + PROCESS_BYTES
    flash = estimate(layout, context_per_slot=2048, slots=1, batch=512, flash_attention=True)
    assert flash.compute < one.compute  # no attention scores kept for a whole batch


def test_estimate_of_a_real_gguf(tiny_path: Path) -> None:
    layout = gguf_layout(str(tiny_path))
    memory = estimate_file(str(tiny_path), context_per_slot=512, slots=2)
    file_size = tiny_path.stat().st_size
    assert 0.5 * file_size < memory.weights <= file_size  # the tensors are most of the file
    assert memory.kv_cache_per_slot == layout.kv_bytes_per_token_layer * layout.n_layer * 512
    assert memory.compute >= layout.vocab_size * 4 * 2  # at least the logits of both slots


def test_sliding_window_layers_cache_only_their_window() -> None:
    full = ModelLayout((MiB,) * 6, output_bytes=0, input_bytes=MiB, kv_bytes_per_token_layer=1024, vocab_size=1000)
    windowed = ModelLayout((MiB,) * 6, output_bytes=0, input_bytes=MiB, kv_bytes_per_token_layer=1024,
                           vocab_size=1000, sliding_window=512, swa_layers=5)
    assert estimate(full, 8192, 1, 512).kv_cache_per_slot == 1024 * 6 * 8192
    assert estimate(windowed, 8192, 1, 512).kv_cache_per_slot == 1024 * (8192 + 5 * 1024)
