"""A model's configuration, compatible with LocalAI's model YAML for the fields that apply."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    backend: Literal["llama-cpp", "llama.cpp", "llama"] = "llama-cpp"
    description: str | None = None
    parameters: SamplingDefaults
    context_size: int | None = Field(default=None, ge=64)
    """Context of each slot, i.e. of one request; the KV cache holds `parallel` of them."""
    parallel: int | None = Field(default=None, ge=1, le=64)
    """Requests decoded together in one batch (slots), LocalAI's name; None: automatic
    (up to 4 while their KV cache stays under 1 GiB, see backends/llama/loading.py)."""
    threads: int | None = Field(default=None, ge=1)
    batch: int = Field(default=512, ge=1)
    """Most tokens per decode step, shared by all slots; long prompts are read in chunks of this."""
    f16: bool = True
    mmap: bool = True
    embeddings: bool = False
    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    gpu_layers: int | None = Field(default=None, ge=0)
    """Layers to offload (to RPC workers when `rpc` is set); default: none locally, all with `rpc`.

    With `rpc` these are the last repeating layers; the output layer always stays on the node."""
    rpc: Literal["auto"] | list[str] | None = None
    """Spread the model over the swarm's llama.cpp RPC workers: "auto" or worker peer ids / names."""
    tensor_split: list[float] | None = None
    """Relative share of the offloaded layers per worker, in the order of `rpc`."""
    stopwords: list[str] = Field(default_factory=list)
    chat_format: str | None = None
    """Shorthand for `template.chat_format`."""
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    max_queue: int = Field(default=64, ge=1)
    """Requests that may wait for a free slot; more get 503 with Retry-After."""
    flash_attention: Literal["auto", "on", "off"] | None = None
    """llama.cpp's flash attention; None: the node's `--flash-attention` (default auto)."""

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

    def model_path(self, models_dir: Path) -> Path:
        path = Path(self.parameters.model).expanduser()
        return path if path.is_absolute() else models_dir / path

    def effective_chat_format(self) -> str | None:
        return self.template.chat_format or self.chat_format
