"""Placement over GPUs and CPUs, local and on workers: table cases from JSON fixtures (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pai.backends.llama import LlamaSettings
from p2pai.backends.llama.memory import ModelLayout, estimate, gguf_layout
from p2pai.backends.rpc.placement import LOCAL, OUTPUT_TENSORS, Capacity, _describe, place

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "gpu_placement.json").read_text())
MiB = 2**20


def layout(model: dict) -> ModelLayout:
    return ModelLayout(
        layer_bytes=(model["layer_mib"] * MiB,) * model["layers"],
        output_bytes=model["output_mib"] * MiB,
        input_bytes=model["input_mib"] * MiB,
        kv_bytes_per_token_layer=model["kv_bytes_per_token_layer"],
        vocab_size=model["vocab"],
        embedding_length=model["embd"],
        feed_forward_length=model["ff"],
        head_count=model["heads"],
        tied_output=model["tied"],
    )


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=[case["case"] for case in FIXTURES["cases"]])
def test_layers_go_to_gpus_first_as_far_as_they_fit(case: dict) -> None:
    model = layout(FIXTURES["models"][case["model"]])
    devices = [Capacity(d["id"], d["free_mib"] * MiB, gpu=d["gpu"], local=d.get("local", False))
               for d in case["devices"]]
    placement = place(model, devices, case["context_size"], case["slots"], tensor_split=case.get("tensor_split"),
                      flash_attention=case.get("flash_attention", False))
    n = model.n_layer
    placed = {where: _describe(indices, n) for where, indices in placement.layers.items() if indices or where == LOCAL}
    assert placed == case["expect"]
    for device in devices:  # nothing over what a device has
        assert placement.bytes[device.id] <= device.free_memory
    settings = placement.configure(LlamaSettings(path="x.gguf"))
    assert settings.cpu_tensors == (OUTPUT_TENSORS if case["expect_override"] else ())
    on_devices = sum(len(placement.layers[d.id]) for d in devices) - (0 if case["expect_override"] else 1)
    assert settings.gpu_layers == (on_devices + 1 if on_devices > 0 else 0)
    assert placement.predicted_tps > 0 and "predicted decode" in placement.explain()


def test_more_on_gpus_predicts_faster_decode() -> None:
    model = layout(FIXTURES["models"]["8b"])
    speeds = [place(model, [Capacity("CUDA0", mib * MiB, gpu=True, local=True)], 4096, 1).predicted_tps
              for mib in (1, 2048, 4096, 8192)]
    assert speeds == sorted(speeds) and speeds[-1] > 5 * speeds[0]


def test_memory_estimate_of_a_real_gguf(tiny_path: Path) -> None:
    model = gguf_layout(str(tiny_path))
    assert model.embedding_length > 0 and model.head_count > 0 and model.feed_forward_length > 0
    one, two = estimate(model, 512, 1), estimate(model, 512, 2)
    assert one.weights == sum(model.layer_bytes) + model.input_bytes + model.output_bytes > 0
    assert one.kv_cache_per_slot == two.kv_cache_per_slot == model.kv_bytes_per_token_layer * model.n_layer * 512
    assert two.total > one.total > one.weights + one.kv_cache_per_slot + one.compute
    assert one.compute >= 4 * 512 * model.vocab_size  # a batch's logits
    flash = estimate(model, 512, 1, flash_attention=True)
    assert one.compute - flash.compute == 4 * 512 * model.head_count * 512  # no attention scores
