"""Continuous batching: every active request is one sequence of a shared llama.cpp context.

Each `step` (on the model thread) makes one `llama_decode` over a batch holding
the next token of every generating sequence, then fills the rest of the batch
with prompt chunks of sequences still reading their prompt; so a long prompt
delays running streams by one step at most. Requests wait in a FIFO queue
(bounded by the node, see process.py) and join at the next step once a slot is free; a finished or cancelled
sequence frees its slot at once. A slot's KV cells stay as a prefix cache: the
next request sharing that prefix (a chat's next turn) skips recomputing it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base import (
    BackendError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    TokenLogprob,
    Usage,
)
from ..text import TextAssembler
from .loading import LoadedModel
from .logprobs import token_logprob
from .pieces import TokenPieces
from .sampling import Sampler
from .slots import Slot, pick_slot
from .tokens import check_token_ids

SPEED_WINDOW_S = 1.0
"""Decode speed is averaged over windows of about this long (or until the scheduler idles)."""


@dataclass(frozen=True)
class StepRecord:
    """What one decode step did; kept for stats and tests (the last few thousand steps)."""

    generated: int
    """Tokens sampled (one per sequence that reached a sampling point)."""
    prompt: int
    """Prompt tokens read."""
    seconds: float


class Sequence:
    """One request from submission to its final chunk.

    Created by the thread that receives requests; `cancelled` is the only field
    it writes afterwards. The rest belongs to the model thread.
    """

    __slots__ = (
        "cached", "cancelled", "index", "logprobs", "max_tokens", "n_past", "produced", "prompt", "prompt_read",
        "request", "sampler", "slot", "tag", "text", "todo",
    )

    def __init__(self, request: GenerationRequest, tag: Any) -> None:
        self.request = request
        self.tag = tag
        """Whatever names the request to whoever receives its chunks."""
        self.cancelled = False
        self.prompt: list[int] = []
        self.todo: list[int] = []
        """Tokens to feed next: the rest of the prompt, then the last sampled token."""
        self.n_past = 0
        self.slot: Slot | None = None
        self.sampler: Sampler | None = None
        self.text = TextAssembler(request.stop)
        self.max_tokens = 0
        self.produced = 0
        self.cached = 0
        self.prompt_read = 0
        """Prompt tokens this request actually decoded (the rest came from the KV cache)."""
        self.logprobs: list[TokenLogprob] = []
        self.index = -1
        """Row of this sequence's logits in the current batch; -1: none."""


Outbox = list[tuple[Sequence, "GenerationChunk | BaseException"]]
Deliver = Callable[[Outbox, "Scheduler"], None]
"""Hands a step's chunks (and failures) on, in one go; called on the model thread."""


class Scheduler:
    """Admits, batches, samples and retires sequences; implements the model thread's `Stepper`."""

    def __init__(self, loaded: LoadedModel, pieces: TokenPieces, deliver: Deliver) -> None:
        import llama_cpp

        self._loaded = loaded
        self._ctx = loaded.context.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = loaded.model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._eog: tuple[int, ...] | None = None
        self._n_swa = llama_cpp.llama_model_n_swa(loaded.model.model)
        self._pieces = pieces
        self._deliver = deliver
        self.n_ctx = loaded.n_ctx_slot
        self.slots = [Slot(i) for i in range(loaded.parallel)]
        self._n_batch = loaded.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        """In admission order: prompt chunks are served first come, first served."""
        self.history: deque[StepRecord] = deque(maxlen=4096)
        self.decode_tps: float | None = None
        """Aggregate: tokens sampled per second of decode steps, all slots together."""
        self._window_tokens = 0
        self._window_s = 0.0
        self._admitted = 0
        self._closed = False

    # Called on the thread that receives requests.

    def submit(self, seq: Sequence) -> None:
        with self._lock:
            if self._closed:
                raise BackendError("the model was unloaded")
            self._waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """The consumer went away: a waiting request leaves the queue now, an active one at the next step."""
        seq.cancelled = True
        with self._lock:
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # Called on the model thread.

    def busy(self) -> bool:
        return bool(self._active or self._waiting)

    def step(self) -> None:
        outbox: Outbox = []
        try:
            self._step(outbox)
        except Exception as exc:  # noqa: BLE001 - a llama.cpp failure: fail what was running, keep serving
            for seq in list(self._active):
                self._forget(seq.slot)
                self._release(seq)
                error = exc if isinstance(exc, BackendError) else BackendError(f"generation failed: {exc}")
                outbox.append((seq, error))
        finally:
            if outbox:
                self._deliver(outbox, self)

    def close(self) -> None:
        import llama_cpp

        outbox: Outbox = []
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting + self._active:
            outbox.append((seq, BackendError("the model was unloaded")))
            self._release(seq)
        if outbox:
            self._deliver(outbox, self)
        llama_cpp.llama_batch_free(self._batch)

    def _step(self, outbox: Outbox) -> None:
        from llama_cpp import llama_cpp as lib  # looked up per call: tests spy on llama_decode

        started = time.perf_counter()
        for seq in [s for s in self._active if s.cancelled]:
            self._finish(seq, "cancelled", outbox)
        self._admit(outbox)
        fed, n = self._fill_batch()
        if n == 0:
            self._update_speed()  # the last sequences were cancelled: close the speed window
            return
        status = lib.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise BackendError(f"llama_decode failed with status {status}")
        prompt_read = generated = 0
        for seq, count in fed:
            if seq.cached + seq.prompt_read < len(seq.prompt):
                seq.prompt_read += count
                prompt_read += count
            seq.slot.tokens.extend(seq.todo[:count])  # type: ignore[union-attr]
            del seq.todo[:count]
            seq.n_past += count
            if seq.index >= 0:
                generated += 1
                self._accept(seq, seq.sampler.sample(self._ctx, seq.index), outbox)  # type: ignore[union-attr]
                seq.index = -1
        self._record(StepRecord(generated, prompt_read, time.perf_counter() - started))

    def _fill_batch(self) -> tuple[list[tuple[Sequence, int]], int]:
        """One token per generating sequence, then prompt chunks up to the batch size."""
        batch = self._batch
        token, pos, n_seq, seq_ids, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        fed: list[tuple[Sequence, int]] = []
        n = 0
        reading = []
        for seq in self._active:
            if len(seq.todo) == 1 and seq.produced:
                fed.append((seq, 1))
                token[n], pos[n], n_seq[n], logits[n] = seq.todo[0], seq.n_past, 1, True
                seq_ids[n][0] = seq.slot.seq_id  # type: ignore[union-attr]
                seq.index = n
                n += 1
            elif seq.todo:
                reading.append(seq)
        for seq in reading:
            take = min(len(seq.todo), self._n_batch - n)
            if take <= 0:
                break
            sid, start = seq.slot.seq_id, seq.n_past  # type: ignore[union-attr]
            for i, tok in enumerate(seq.todo[:take]):
                token[n + i], pos[n + i], n_seq[n + i], logits[n + i] = tok, start + i, 1, False
                seq_ids[n + i][0] = sid
            fed.append((seq, take))
            n += take
            if take == len(seq.todo):
                logits[n - 1] = True
                seq.index = n - 1
        batch.n_tokens = n
        return fed, n

    def _admit(self, outbox: Outbox) -> None:
        """Waiting requests take free slots, first come first served."""
        while any(not slot.busy for slot in self.slots):
            with self._lock:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
            try:
                self._start(seq, outbox)
            except Exception as exc:  # noqa: BLE001 - this request's own failure (bad prompt, grammar): not the others'
                if seq.sampler is not None:
                    seq.sampler.close()
                outbox.append((seq, exc if isinstance(exc, BackendError) else BackendError(f"cannot start: {exc}")))

    def _start(self, seq: Sequence, outbox: Outbox) -> None:
        request = seq.request
        if isinstance(request.prompt, tuple):
            prompt = check_token_ids(request.prompt, self._n_vocab, "prompt")
        else:
            prompt = self._loaded.model.tokenize(request.prompt.encode("utf-8"), add_bos=request.add_special,
                                                 special=True)
        if not prompt:
            raise InvalidRequestError("the prompt is empty", code="empty_prompt")
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens, which does not fit this model's context of {self.n_ctx} "
                "tokens per request",
                code="context_length_exceeded",
            )
        seq.sampler = Sampler(self._vocab, self._n_vocab, request.sampling, self.n_ctx,
                              self._eog_tokens() if request.sampling.ignore_eos else ())
        picked = pick_slot(self.slots, prompt)
        assert picked is not None, "admitted without a free slot"
        slot, common = picked
        # A fully cached prompt still needs its last token decoded, for the logits to sample from.
        cached = self._keep_prefix(slot, min(common, len(prompt) - 1))
        slot.busy = True
        self._admitted += 1
        slot.last_used = self._admitted
        seq.slot, seq.prompt, seq.cached, seq.n_past = slot, prompt, cached, cached
        seq.todo = prompt[cached:]
        seq.max_tokens = room if request.max_tokens is None else min(request.max_tokens, room)
        self._active.append(seq)
        if seq.max_tokens <= 0:
            self._finish(seq, "length", outbox)

    def _keep_prefix(self, slot: Slot, keep: int) -> int:
        """Drop the slot's cached tokens past `keep`; returns how many really remain usable."""
        import llama_cpp

        if keep < len(slot.tokens) and not llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            keep = 0  # this memory cannot cut a sequence in the middle
        if keep and self._n_swa and llama_cpp.llama_memory_seq_pos_min(self._mem, slot.seq_id) > max(
                0, keep - self._n_swa):
            keep = 0  # the sliding-window layers no longer hold what the next tokens must attend to
        if keep == 0:
            self._forget(slot)
        del slot.tokens[keep:]
        return keep

    def _eog_tokens(self) -> tuple[int, ...]:
        """The model's end-of-generation tokens, found once (a scan of the vocabulary, as llama.cpp's server does)."""
        if self._eog is None:
            import llama_cpp

            self._eog = tuple(t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
        return self._eog

    def _forget(self, slot: Slot | None) -> None:
        import llama_cpp

        if slot is not None:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.tokens.clear()

    def _accept(self, seq: Sequence, token: int, outbox: Outbox) -> None:
        """A token was sampled for `seq`: stream its text, or end the sequence."""
        import llama_cpp

        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop", outbox)
            return
        seq.produced += 1
        piece = self._pieces.get(token)
        if seq.request.logprobs is not None:
            seq.logprobs.append(token_logprob(self._ctx, seq.index, self._n_vocab, token, piece,
                                              seq.request.logprobs, self._pieces))
        released = seq.text.push(piece)
        if released.text or released.stopped:
            outbox.append((seq, GenerationChunk(released.text, tuple(seq.logprobs))))
            seq.logprobs = []
        if released.stopped:
            self._finish(seq, "stop", outbox, stop_string=released.stop)
        elif seq.produced >= seq.max_tokens:
            self._finish(seq, "length", outbox)
        else:
            seq.todo = [token]

    def _finish(self, seq: Sequence, reason: FinishReason, outbox: Outbox, stop_string: str | None = None) -> None:
        tail = "" if stop_string is not None else seq.text.finish().text
        usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=seq.produced, cached_tokens=seq.cached)
        outbox.append((seq, GenerationChunk(tail, tuple(seq.logprobs), finish_reason=reason, usage=usage,
                                                 stop_sequence=stop_string)))
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        """The slot is free for the next request; its KV cells stay as a prefix cache."""
        if seq.sampler is not None:
            seq.sampler.close()
        if seq.slot is not None:
            seq.slot.busy = False
        if seq in self._active:
            self._active.remove(seq)

    def _record(self, record: StepRecord) -> None:
        self.history.append(record)
        if record.generated:
            self._window_tokens += record.generated
            self._window_s += record.seconds
        self._update_speed()

    def _update_speed(self) -> None:
        """Fold the window into `decode_tps` once it is long enough or the scheduler idles."""
        if self._window_tokens and (self._window_s >= SPEED_WINDOW_S or not self._active):
            tps = self._window_tokens / max(self._window_s, 1e-9)
            self.decode_tps = tps if self.decode_tps is None else 0.7 * self.decode_tps + 0.3 * tps
            self._window_tokens, self._window_s = 0, 0.0
