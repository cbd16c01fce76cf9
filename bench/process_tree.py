"""CPU used by this benchmark's whole process tree, so that what others use shows.

The chaos and soak benchmarks start nodes that start model processes of their own, and
kill some of them: their CPU counts as the benchmark's, living or reaped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench_single_node import CLOCK_TICKS, CpuMeter


def _stat(pid: str) -> tuple[int, int, int] | None:
    """(parent pid, own ticks, ticks of its reaped children) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def tree_ticks(root: int) -> int:
    """CPU ticks of ``root`` and its living descendants, plus those of the descendants they reaped."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
            todo.extend(children.get(pid, ()))
    return total


class TreeMeter(CpuMeter):
    """CpuMeter whose own processes are this process and all its descendants.

    A model process whose node was killed is re-parented and drops out: its last moments count
    as others' use (a small overestimate)."""

    def __init__(self) -> None:
        super().__init__([])

    def mark(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        machine = user + nice + system + irq + softirq + steal
        return time.perf_counter(), machine / CLOCK_TICKS, tree_ticks(os.getpid()) / CLOCK_TICKS
