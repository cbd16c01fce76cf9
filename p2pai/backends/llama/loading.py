"""Loading a GGUF for batched generation, and sizing its slots.

Generation uses llama.cpp's low-level model and context (not `Llama`), because
a context serving several sequences needs `n_seq_max` and per-sequence KV
streams, which `Llama` does not expose. Everything here runs on the model thread.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..base import ModelLoadError
from . import ggml

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp._internals import LlamaContext, LlamaModel

KV_BUDGET_BYTES = 1 << 30
"""Automatic slot count: as many slots (up to MAX_AUTO_PARALLEL) as fit this much KV cache."""
MAX_AUTO_PARALLEL = 4
"""Four sequences per batch is where a 2-core CPU stops gaining (llama-server -np 4)."""


FlashAttention = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class LlamaSettings:
    path: str
    context_size: int = 4096
    """Context of each slot: the longest prompt plus answer one request can have."""
    parallel: int | None = None
    """Slots decoded together; None: automatic (see `auto_parallel`)."""
    threads: int = 0
    """0: every core of the machine."""
    batch: int = 512
    """Most tokens per decode step; also the prompt chunk size."""
    mmap: bool = True
    embeddings: bool = False
    pooling: str = "auto"
    """auto: the GGUF's own pooling type, else mean (a generative model has none)."""
    gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None
    """Shares of the offloaded layers per device (RPC workers), in registration order."""
    cpu_tensors: tuple[str, ...] = ()
    """Regexes of tensor names kept in this process's memory whatever `gpu_layers` says."""
    max_queue: int = 64
    """Requests that may wait for a slot; more are refused (QueueFullError) by the node."""
    flash_attention: FlashAttention = "auto"
    """auto: where llama.cpp's backend supports it, as llama-server does (about 7 % faster decode on
    gemma-3-270m here); off gives logits identical to llama-cpp-python's `Llama`."""


@dataclass
class LoadedModel:
    model: LlamaModel
    context: LlamaContext
    parallel: int
    n_ctx_slot: int
    n_batch: int

    def close(self) -> None:
        self.context.close()
        self.model.close()


def threads(settings: LlamaSettings) -> int:
    return settings.threads or os.cpu_count() or 1


def load_generator(settings: LlamaSettings) -> LoadedModel:
    """The model and one context with `parallel` sequences of `context_size` each."""
    llama_cpp = _import_llama_cpp()
    from llama_cpp._internals import LlamaContext, LlamaModel
    from llama_cpp._logger import set_verbose

    _check_file(settings)
    set_verbose(False)  # llama.cpp logs through llama-cpp-python's process-wide callback; `Llama` does the same
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = settings.gpu_layers
    model_params.use_mmap = settings.mmap
    split = _tensor_split(settings)  # must outlive the load: llama.cpp reads it through a pointer
    if split is not None:
        model_params.tensor_split = split
    overrides = ggml.cpu_overrides(settings.cpu_tensors) if settings.cpu_tensors else None  # outlives the load too
    if overrides is not None:
        model_params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
    try:
        model = LlamaModel(path_model=settings.path, params=model_params, verbose=False)
    except Exception as exc:  # llama.cpp reports load failures as ValueError
        raise ModelLoadError(f"llama.cpp could not load {settings.path}: {exc}") from exc
    parallel = settings.parallel or auto_parallel(model, settings.context_size)
    n_batch = max(min(settings.batch, settings.context_size), parallel)  # room for a token per slot
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = settings.context_size * parallel
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = parallel
    params.kv_unified = False  # a KV stream per slot: one slot can never starve another of cells
    params.swa_full = False  # sliding-window layers keep only their window: gemma-3 KV 5x smaller, same speed
    params.n_threads = params.n_threads_batch = threads(settings)
    params.flash_attn_type = {
        "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
        "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[settings.flash_attention]
    params.no_perf = True
    try:
        context = LlamaContext(model=model, params=params, verbose=False)
    except Exception as exc:
        model.close()
        raise ModelLoadError(f"llama.cpp could not create a context for {settings.path}: {exc}") from exc
    return LoadedModel(model, context, parallel, llama_cpp.llama_n_ctx_seq(context.ctx), n_batch)


def _tensor_split(settings: LlamaSettings) -> ctypes.Array[ctypes.c_float] | None:
    import llama_cpp

    if not settings.tensor_split:
        return None
    return (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*settings.tensor_split[: llama_cpp.LLAMA_MAX_DEVICES])


def auto_parallel(model: LlamaModel, context_size: int) -> int:
    """Slots whose full-context KV cache fits KV_BUDGET_BYTES, between 1 and MAX_AUTO_PARALLEL.

    gemma-3-270m at 8192 per slot: 4 slots; an 8B GQA model at 4096: 2; a 7B
    model without GQA at 4096: 1. Memory then grows with `parallel` only where
    it is small, and a config's explicit `parallel` overrides it.
    """
    return auto_parallel_for(kv_bytes_per_token(model), context_size)


def auto_parallel_for(kv_bytes_per_token: int, context_size: int) -> int:
    """`auto_parallel` from the KV cache's bytes per token (also known before loading, from the GGUF)."""
    per_slot = kv_bytes_per_token * context_size
    return max(1, min(MAX_AUTO_PARALLEL, KV_BUDGET_BYTES // max(per_slot, 1)))


def kv_bytes_per_token(model: LlamaModel) -> int:
    """f16 K and V of every layer; sliding-window layers are counted in full, so an upper bound."""
    import llama_cpp

    meta = model.metadata()
    arch = meta.get("general.architecture", "")
    n_head = max(llama_cpp.llama_model_n_head(model.model), 1)
    head = llama_cpp.llama_model_n_embd(model.model) // n_head
    k = int(meta.get(f"{arch}.attention.key_length", head))
    v = int(meta.get(f"{arch}.attention.value_length", head))
    n_head_kv = llama_cpp.llama_model_n_head_kv(model.model)
    return llama_cpp.llama_model_n_layer(model.model) * n_head_kv * (k + v) * 2


def load_embedder(settings: LlamaSettings) -> Llama:
    """A second, embedding-mode instance of the same file (pooling needs its own context)."""
    llama_cpp = _import_llama_cpp()
    _check_file(settings)
    try:
        return llama_cpp.Llama(
            model_path=settings.path,
            n_ctx=settings.context_size,
            n_batch=settings.context_size,
            n_ubatch=settings.context_size,
            n_threads=threads(settings),
            n_threads_batch=threads(settings),
            use_mmap=settings.mmap,
            n_gpu_layers=settings.gpu_layers,
            tensor_split=list(settings.tensor_split) if settings.tensor_split else None,
            embedding=True,
            pooling_type=_pooling(settings),
            verbose=False,
        )
    except Exception as exc:
        raise ModelLoadError(f"llama.cpp could not load {settings.path}: {exc}") from exc


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(f"llama-cpp-python is not installed: {exc}") from exc
    return llama_cpp


def _check_file(settings: LlamaSettings) -> None:
    if not os.path.isfile(settings.path):
        raise ModelLoadError(f"model file not found: {settings.path}")


def _pooling(settings: LlamaSettings) -> int:
    import llama_cpp

    named = {
        "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
        "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
    }
    if settings.pooling in named:
        return named[settings.pooling]
    from gguf import GGUFReader  # only needed to sniff the pooling key

    reader = GGUFReader(settings.path)
    has_own = any(key.endswith(".pooling_type") for key in reader.fields)
    return llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if has_own else llama_cpp.LLAMA_POOLING_TYPE_MEAN
