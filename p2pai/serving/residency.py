"""Which models stay loaded: a pure plan of what to unload before loading another.

Like Ollama and LocalAI, a node unloads the least recently used idle model
when a new one would exceed `--max-loaded` or the memory it may use; a model
still answering requests is never unloaded, and a model that cannot fit even
after every idle one is gone is not loaded at all (never swap a node to death).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A loaded model as the plan sees it."""

    name: str
    memory: int
    """Estimated bytes it holds (see backends/llama/memory.py)."""
    last_used: float
    busy: bool
    """Requests in flight or queued: never unloaded."""


@dataclass(frozen=True)
class LoadPlan:
    fits: bool
    evict: tuple[str, ...] = ()
    """Models to unload first, least recently used first."""
    reason: str = ""
    """Why it does not fit, for the error message."""


def plan_load(need: int, free: int, residents: list[Resident], max_loaded: int | None = None,
              budget: int | None = None) -> LoadPlan:
    """Make room for a model needing ``need`` bytes.

    free: memory the system has available now; unloading a model gives back its estimate.
    budget: the most the loaded models' estimates may add up to (None: no limit but ``free``).
    """
    idle = sorted((r for r in residents if not r.busy), key=lambda r: r.last_used)
    used = sum(r.memory for r in residents)
    evict: list[Resident] = []
    while True:
        freed = sum(r.memory for r in evict)
        count_ok = max_loaded is None or len(residents) - len(evict) < max_loaded
        memory_ok = need <= free + freed and (budget is None or used - freed + need <= budget)
        if count_ok and memory_ok:
            return LoadPlan(True, tuple(r.name for r in evict))
        if len(evict) == len(idle):
            return LoadPlan(False, reason=_reason(need, free + freed, budget, used - freed, count_ok, max_loaded))
        evict.append(idle[len(evict)])


def _reason(need: int, free: int, budget: int | None, used: int, count_ok: bool, max_loaded: int | None) -> str:
    mib = 1 << 20
    if not count_ok:
        return f"{max_loaded} models are loaded (--max-loaded) and all of them are answering requests"
    if budget is not None and used + need > budget:
        return (f"it needs ~{need // mib} MiB and the loaded models that are answering requests hold "
                f"{used // mib} MiB of the {budget // mib} MiB memory budget")
    return f"it needs ~{need // mib} MiB and only {free // mib} MiB are available"


DEFAULT_BYTES_PER_S = 200e6
"""Before a node has measured: a local disk with the file partly in the page cache."""
DEFAULT_OVERHEAD_S = 1.0
"""Before a node has measured: starting the model's process and importing llama.cpp."""
SMALL_FILE = 32 << 20
"""A load of a smaller file measures the fixed cost; of a larger one, the speed."""


@dataclass
class LoadSpeed:
    """How fast this node loads models, learnt from its own loads (recent average)."""

    bytes_per_s: float | None = None
    overhead_s: float | None = None

    def record(self, size: int, seconds: float) -> None:
        overhead = self.overhead_s if self.overhead_s is not None else DEFAULT_OVERHEAD_S
        if size < SMALL_FILE:
            self.overhead_s = _average(self.overhead_s, max(seconds - size / self.speed(), 0.0))
        else:
            self.bytes_per_s = _average(self.bytes_per_s, size / max(seconds - overhead, seconds / 10))

    def speed(self) -> float:
        return self.bytes_per_s or DEFAULT_BYTES_PER_S

    def seconds(self, size: int) -> float:
        """Expected time to load a file of ``size`` bytes here."""
        overhead = self.overhead_s if self.overhead_s is not None else DEFAULT_OVERHEAD_S
        return overhead + size / self.speed()


def _average(old: float | None, new: float) -> float:
    return new if old is None else 0.7 * old + 0.3 * new
