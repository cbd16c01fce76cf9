"""Every bound a request must stay within, in one place (README.md, "Limits", lists them).

The fixed bounds keep llama.cpp, the JSON-schema converter and the event loop
safe whatever a node serves; most were measured on llama.cpp itself (the
figures are in the README). `Limits` holds the bounds a real user may need to
raise; each has a `p2pai start` flag and a P2PAI_* variable (settings.py).
The protocol models import the fixed ones, so this module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A request body; more is a 413."""
MAX_JSON_DEPTH = 200
"""pydantic-core's JSON parser refuses deeper nesting (a 400, invalid_json); not ours to change."""
MAX_MODEL_NAME = 256
MAX_N = 16
"""Choices per request (`n`, `best_of`)."""
MAX_STOP = 16
"""Stop strings per request."""
MAX_STOP_LENGTH = 256
"""Characters per stop string: each generated token is checked against the tail of every one."""
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
"""`logit_bias` entries; each bias lies in [-100, 100] and each key is a token id of the model."""
MAX_TOOLS = 128
MAX_METADATA = 16
MAX_SEED = 2**63 - 1
"""`seed` is an int64 as in OpenAI's API (llama.cpp uses its low 32 bits)."""
MAX_GRAMMAR_DEPTH = 1000
"""Nested groups in a GBNF grammar. llama.cpp parses groups recursively, about 450 bytes of stack
per level: 18,700 levels overflow an 8 MiB stack (segfault); 1000 need 450 KiB."""
MAX_GRAMMAR_RULES = 10_000
"""Rules of a GBNF grammar as llama.cpp counts them (groups and repetitions create rules). Its
left-recursion check recurses once per rule of a chain: 100,000 chained rules overflow 8 MiB."""
MAX_SCHEMA_DEPTH = 64
"""Nesting of a JSON schema (response_format, tool parameters)."""
MAX_SCHEMA_REPETITION = 1000
"""minItems, maxItems, minLength, maxLength and a `pattern`'s {m,n}: the converter writes each
repetition out in full, and llama.cpp refuses grammars nesting optional repeats ~1100 deep."""
MAX_SCHEMA_VISITS = 20_000
"""Sub-schemas the converter may visit: `$ref`s to definitions it cannot name as a rule are
expanded again at every use, exponentially (20 levels took 18 s)."""


@dataclass(frozen=True)
class Limits:
    """The bounds with a setting: `p2pai start --max-prompts N` or P2PAI_MAX_PROMPTS=N, and so on
    (settings.py makes a flag of each field; its metadata is the flag's help)."""

    max_prompts: int = field(default=2048, metadata={
        "help": "prompts of one /v1/completions request and inputs of one /v1/embeddings request"})
    max_messages: int = field(default=2048, metadata={"help": "messages of one chat request"})
    max_documents: int = field(default=1024, metadata={"help": "documents of one /v1/rerank request"})
    max_grammar_bytes: int = field(default=256 * 1024, metadata={
        "help": "size of a GBNF grammar: the `grammar` field, or what a JSON schema converts to"})
    max_grammar_branches: int = field(default=1024, metadata={
        "help": "parse stacks llama.cpp may open at one position of a grammar (alternatives that can "
                "apply at once, multiplied through nested rules)"})
    """Each stack costs time at every sampled token (on a 262k vocabulary about 3-8 ms), and
    ambiguous nesting multiplies them: 8 levels of 10 alternatives, a 450-byte grammar, stalled
    llama.cpp for 2 s; 3 nested repetitions of 30, for 1.5 s."""
    max_schema_bytes: int = field(default=256 * 1024, metadata={
        "help": "the JSON schemas of one request together (response_format and tool parameters), as JSON"})
