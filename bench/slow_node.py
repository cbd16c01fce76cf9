"""Run `p2pai` with the benchmark's slow backend in place of llama.cpp (benchmark only).

    python bench/slow_node.py --token-ms 20 [--slots 1] [--profile FILE] -- start --model x.gguf ...

Everything after `--` goes to p2pai's own CLI unchanged. The model file must exist
(the node announces its size) but is never read: `ModelManager` loads every model
with `SlowEngine` instead of `ModelProcess`.

`--profile FILE` (also without `--token-ms`, to profile a normal node) runs the
node under cProfile and writes the stats to FILE when it stops (SIGTERM). Times are
the event-loop thread's CPU time (`time.thread_time`), not wall time, so a busy
machine does not inflate them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-ms", type=float, help="serve every model with SlowEngine, this long per token")
    parser.add_argument("--slots", type=int, default=1, help="generations at once per model")
    parser.add_argument("--profile", type=Path, help="cProfile the node and write the stats here")
    args = parser.parse_args(ours)

    if args.token_ms is not None:
        import p2pai.serving.manager
        from slow_backend import SlowEngine, SlowSettings

        SlowEngine.settings = SlowSettings(token_s=args.token_ms / 1000, slots=args.slots)
        p2pai.serving.manager.ModelProcess = SlowEngine  # type: ignore[misc]  # what ModelManager._load calls

    from p2pai.cli import main as p2pai_main

    if args.profile is None:
        return p2pai_main(theirs)
    import cProfile
    import time

    profiler = cProfile.Profile(time.thread_time)
    try:
        return profiler.runcall(p2pai_main, theirs)
    finally:
        profiler.dump_stats(str(args.profile))


if __name__ == "__main__":
    sys.exit(main())
