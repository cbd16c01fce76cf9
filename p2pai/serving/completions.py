"""POST /v1/completions and /v1/edits: raw prompts, OpenAI's legacy response shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..backends.base import GenerationRequest, InvalidRequestError, TokenLogprob
from ..protocol.openai import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Edit,
    EditChoice,
    EditRequest,
    FinishReason,
)
from .context import ServedModel, collect, new_id, now, primed, total_usage, with_seed
from .grammar import Constraint, build_grammar
from .validation import check_count, check_logit_bias, check_token_prompt

OPENAI_DEFAULT_MAX_TOKENS = 16


async def prepare(served: ServedModel, request: CompletionRequest) -> list[tuple[GenerationRequest, str]]:
    """Each prompt's generation, with the text `echo` repeats; everything checked before any reaches llama.cpp."""
    items = _prompt_items(request.prompt)
    engine = served.engine
    check_count(len(items), served.limits.max_prompts, "prompts", "prompt")
    for item in items:
        if not isinstance(item, str):
            check_token_prompt(item, engine.info.n_vocab, engine.info.n_ctx, "prompt")
    check_logit_bias(request.logit_bias, engine.info.n_vocab)
    grammar = await build_grammar(*_grammar_constraints(request), served.limits, engine.info.n_vocab)
    sampling = served.sampling(request, grammar)
    max_tokens = served.max_tokens(request.max_tokens, OPENAI_DEFAULT_MAX_TOKENS)
    stop = tuple(served.config.stopwords) + request.stop_list()
    prompts: list[tuple[str | tuple[int, ...], str]] = [
        (item, item) if isinstance(item, str) else (tuple(item), await engine.detokenize(item)) for item in items
    ]
    if request.suffix is not None:
        prompts = [(await _fill_in_middle(served, text, request.suffix), text) for _, text in prompts]
    return [(GenerationRequest(prompt=prompt, sampling=sampling, max_tokens=max_tokens, stop=stop,
                               logprobs=request.logprobs), text) for prompt, text in prompts]


def _grammar_constraints(request: CompletionRequest | EditRequest
                         ) -> tuple[list[Constraint], list[tuple[dict[str, Any], str]]]:
    """`grammar` (GBNF) or LocalAI's `grammar_json_functions` (a JSON schema), and the schemas to bound."""
    functions = request.grammar_json_functions
    constraints = [Constraint("grammar", grammar=request.grammar),
                   Constraint("grammar_json_functions", schema=functions)]
    return constraints, [] if functions is None else [(functions, "grammar_json_functions")]


def _prompt_items(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]  # one prompt of token ids
    return prompt  # type: ignore[return-value]  # several prompts


async def _fill_in_middle(served: ServedModel, prefix: str, suffix: str) -> tuple[int, ...]:
    fim = served.engine.info.fim
    if fim is None:
        raise InvalidRequestError(
            f"model {served.name!r} has no fill-in-the-middle tokens, so `suffix` is not supported", param="suffix"
        )
    before = await served.engine.tokenize(prefix, add_special=False)
    after = await served.engine.tokenize(suffix, add_special=False)
    return (fim.prefix, *before, fim.suffix, *after, fim.middle)


async def complete(served: ServedModel, request: CompletionRequest) -> Completion:
    choices: list[CompletionChoice] = []
    usages = []
    for generation, text in await prepare(served, request):
        for n in range(request.n):
            result = await collect(served.generate(with_seed(generation, n)))
            usages.append(result.usage)
            choices.append(CompletionChoice(
                index=len(choices),
                text=(text if request.echo else "") + result.text,
                logprobs=_logprobs(result.logprobs, len(text) if request.echo else 0)
                if request.logprobs is not None else None,
                finish_reason=result.finish_reason,
            ))
    return Completion(id=new_id("cmpl"), created=now(), model=served.name, choices=choices,
                      usage=total_usage(usages, prompt_once=False))


async def stream(served: ServedModel, request: CompletionRequest) -> AsyncIterator[Completion]:
    ident, created = new_id("cmpl"), now()
    usages = []
    index = 0

    def chunk(text: str, finish: FinishReason | None = None, logprobs: CompletionLogprobs | None = None
              ) -> Completion:
        return Completion(id=ident, created=created, model=served.name, choices=[
            CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)])

    for generation, text in await prepare(served, request):
        for n in range(request.n):
            chunks = await primed(served.generate(with_seed(generation, n)))
            if request.echo:
                yield chunk(text)
            async for piece in chunks:
                logprobs = _logprobs(list(piece.logprobs), 0) if request.logprobs is not None else None
                if piece.text or piece.logprobs:
                    yield chunk(piece.text, logprobs=logprobs)
                if piece.finish_reason is not None:
                    assert piece.usage is not None
                    usages.append(piece.usage)
                    yield chunk("", piece.finish_reason)
            index += 1
    if request.stream_options and request.stream_options.include_usage:
        yield Completion(id=ident, created=created, model=served.name, choices=[],
                         usage=total_usage(usages, prompt_once=False))


def _logprobs(logprobs: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    """OpenAI's legacy logprobs object: parallel lists plus character offsets."""
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[{t.token: t.logprob for t in lp.top} for lp in logprobs],
        text_offset=offsets,
    )


async def edit(served: ServedModel, request: EditRequest) -> Edit:
    """An edit is one chat turn holding the instruction and the input.

    One user message, because several chat formats (gemma's among them) drop system messages.
    """
    content = f"{request.instruction}\n\n{request.input}" if request.input else request.instruction
    messages = [{"role": "user", "content": content}]
    prompt = served.template.render(messages, None)
    check_logit_bias(request.logit_bias, served.engine.info.n_vocab)
    grammar = await build_grammar(*_grammar_constraints(request), served.limits, served.engine.info.n_vocab)
    generation = GenerationRequest(
        prompt=prompt.text,
        sampling=served.sampling(request, grammar),
        max_tokens=served.max_tokens(request.max_tokens),
        stop=prompt.stop + tuple(served.config.stopwords) + request.stop_list(),
        add_special=prompt.add_special,
    )
    choices, usages = [], []
    for n in range(request.n):
        result = await collect(served.generate(with_seed(generation, n)))
        usages.append(result.usage)
        choices.append(EditChoice(index=n, text=result.text))
    return Edit(created=now(), model=served.name, choices=choices, usage=total_usage(usages, prompt_once=True))
