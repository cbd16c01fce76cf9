"""A model's configuration, compatible with LocalAI's model YAML for the fields that apply."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SamplingDefaults(BaseModel):
    """`parameters:` in LocalAI's YAML: the model file plus default sampling values."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    typical_p: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    repeat_last_n: int | None = None
    ignore_eos: bool | None = None


class TemplateConfig(BaseModel):
    """How chat messages become a prompt.

    Precedence: `chat` (a Jinja2 template given here), then `chat_format`
    (a llama-cpp-python format name such as gemma or chatml), then the GGUF's
    own template when `use_tokenizer_template` holds, then chatml.
    """

    model_config = ConfigDict(extra="ignore")

    chat: str | None = None
    chat_format: str | None = None
    use_tokenizer_template: bool = True


ONNX_BACKENDS = ("onnx", "onnxruntime")
CT2_BACKENDS = ("ctranslate2", "faster-whisper")


class ModelConfig(BaseModel):
    """A model: llama.cpp (GGUF, the default backend), ONNX Runtime (`backend: onnx`: an encoder
    for embeddings or a cross-encoder for rerank, with a tokenizer.json) or CTranslate2
    (`backend: ctranslate2`: a converted model's directory, Whisper or a text generator)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    backend: Literal["llama-cpp", "llama.cpp", "llama", "onnx", "onnxruntime", "ctranslate2", "faster-whisper"] = (
        "llama-cpp")
    description: str | None = None
    parameters: SamplingDefaults
    context_size: int | None = Field(default=None, ge=64)
    """Context of each slot, i.e. of one request; the KV cache holds `parallel` of them."""
    parallel: int | None = Field(default=None, ge=1, le=64)
    """Requests decoded together in one batch (slots), LocalAI's name; None: automatic
    (up to 4 while their KV cache stays under 1 GiB, see backends/llama/loading.py).
    CTranslate2: requests served at once, each by a replica of the model (default 2)."""
    threads: int | None = Field(default=None, ge=1)
    batch: int | None = Field(default=None, ge=1)
    """llama.cpp: most tokens per decode step, shared by all slots; long prompts are read in chunks of
    this (default 512). ONNX: most inputs per run (default 32)."""
    f16: bool = True
    mmap: bool = True
    embeddings: bool = False
    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """How token vectors become one embedding; ONNX: mean (auto) or cls."""
    task: Literal["embeddings", "rerank"] | None = None
    """ONNX: what the model is, an embedding model (the default) or a cross-encoder reranker."""
    tokenizer: str | None = None
    """ONNX: the model's tokenizer.json (default: tokenizer.json beside the model file)."""
    normalize: bool = True
    """ONNX embeddings: scale each vector to length 1 (cosine similarity becomes a dot product)."""
    max_length: int | None = Field(default=None, ge=8, le=65536)
    """ONNX: most tokens per input, special tokens included (default 512); longer inputs are refused,
    and for rerank the document is cut to fit."""
    providers: list[str] | None = None
    """ONNX Runtime execution providers in order of preference: cuda, cpu, ... (default: the best
    available); /system shows the ones in use."""
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    """ONNX: how long a run may wait for more concurrent requests to join it (only while requests
    come concurrently: a lone client never waits)."""
    gpu_layers: int | None = Field(default=None, ge=0)
    """Layers to offload to GPUs (and RPC workers when `rpc` is set); default: as many as fit, GPU
    memory first (see backends/rpc/placement.py). Without `rpc` it goes to llama.cpp as is (`-ngl`).

    These are the last repeating layers; with `rpc` the output layer always stays on the node."""
    rpc: Literal["auto"] | list[str] | None = None
    """Spread the model over the swarm's llama.cpp RPC workers: "auto" or worker peer ids / names."""
    tensor_split: list[float] | None = None
    """Relative share of the offloaded layers per device: the workers in the order of `rpc`, then this
    node's GPUs (default: by free memory)."""
    stopwords: list[str] = Field(default_factory=list)
    chat_format: str | None = None
    """Shorthand for `template.chat_format`."""
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    max_queue: int | None = Field(default=None, ge=1)
    """llama.cpp: requests that may wait for a free slot (default 64). ONNX: inputs (texts or documents)
    that may wait (default 1024). More get 503 with Retry-After."""
    flash_attention: Literal["auto", "on", "off"] | None = None
    """llama.cpp's flash attention; None: the node's `--flash-attention` (default auto)."""
    compute_type: str = Field(default="int8", pattern=r"^[a-z0-9_]{1,32}$")
    """CTranslate2: precision of weights and compute (int8, int8_float16, float16, float32, default...)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """CTranslate2: where the model runs."""

    origin: str | None = None
    """Where p2pai installed it from (`gallery@name`, a URL, `swarm`); None: the operator's own config."""

    source: Path | None = Field(default=None, exclude=True)
    """The YAML file this came from, for error messages."""
    builtin: bool = Field(default=False, exclude=True)
    """The built-in default model, assembled from its package on first load."""

    @field_validator("stopwords", mode="before")
    @classmethod
    def _stopwords_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_its_backend(self) -> ModelConfig:
        if self.backend_name == "ctranslate2" and self.rpc is not None:
            raise ValueError("rpc: is for llama.cpp models; a CTranslate2 model runs on this node")
        if self.backend_name == "onnx":
            if self.rpc is not None:
                raise ValueError("rpc: is for llama.cpp models; an ONNX model runs on this node")
            if self.pooling == "last":
                raise ValueError("pooling: last is for llama.cpp models; an ONNX model pools mean or cls")
        elif self.task == "rerank":
            raise ValueError("task: rerank needs backend: onnx (a cross-encoder)")
        return self

    @property
    def backend_name(self) -> str:
        """The backend's one name (the config accepts LocalAI's spellings)."""
        if self.backend in ONNX_BACKENDS:
            return "onnx"
        return "ctranslate2" if self.backend in CT2_BACKENDS else "llama-cpp"

    def tokenizer_path(self, models_dir: Path) -> Path:
        """An ONNX model's tokenizer.json."""
        if self.tokenizer is None:
            return self.model_path(models_dir).parent / "tokenizer.json"
        path = Path(self.tokenizer).expanduser()
        return path if path.is_absolute() else models_dir / path

    def model_path(self, models_dir: Path) -> Path:
        path = Path(self.parameters.model).expanduser()
        return path if path.is_absolute() else models_dir / path

    def effective_chat_format(self) -> str | None:
        return self.template.chat_format or self.chat_format
