"""A shortened run of bench/chaos.py: 4 real nodes while nodes are killed, frozen and restarted.

Every request must end with the whole answer or an explicit error in OpenAI's shape: none
hung, lost or silently truncated, and every node answers once the faults stop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import chaos

pytestmark = pytest.mark.e2e


async def test_every_request_ends_explicitly_while_nodes_die_freeze_and_restart(tmp_path: Path) -> None:
    config = chaos.Config(requests=180, clients=6, interval_s=1.5, long_tokens=(100, 400), long_share=0.4,
                          stream_share=0.7, duration_s=60.0, seed=11)
    report = await chaos.run(config, tmp_path)
    summary = report.render()
    assert not report.bad, summary
    assert all(report.recovered.values()), summary
    assert len(report.outcomes) == config.requests, summary
    faults = report.faults
    assert min(faults["kill"], faults["freeze"], faults["stop"]) >= 1, summary
    assert report.forwarded > 0, summary  # the faults met routed requests, not only local ones
    explicit = [o for o in report.outcomes if o.kind in ("http_error", "stream_error")]
    for outcome in explicit:
        assert outcome.error is not None and set(outcome.error) == {"message", "type", "param", "code"}
        assert outcome.code and outcome.error["message"]
    assert sum(o.kind == "ok" for o in report.outcomes) >= config.requests // 2, summary
