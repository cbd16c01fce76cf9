"""A long fuzzing campaign against a real node: the client API and the peer endpoint (signed requests).

The same machinery as tests/test_fuzz.py (tests/fuzzing.py), with budgets for
hours instead of a minute: a node serving the tests' two tiny models on
loopback, fuzzed from its own /openapi.json. Prints, and writes as JSON, the
requests sent, their statuses and error codes, every distinct failure found
and how long it took; then checks the node still answers. Figures go to
bench/README.md ("Fuzzing").

    flock /tmp/p2pai-heavy.lock .venv/bin/python bench/fuzz.py --examples 400 --seconds 1800
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
import requests  # noqa: E402

from conftest import NodeProcess, write_test_models  # noqa: E402
from fuzzing import MODELS, NODE_FLAGS, Figures, campaign, load, member_session, report  # noqa: E402
from p2pai.token import new_token  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="requests per operation and mode (default 200)")
    parser.add_argument("--seconds", type=float, default=600, help="time budget per endpoint (default 600)")
    parser.add_argument("--endpoint", choices=["client", "peer", "both"], default="both")
    parser.add_argument("--seed", type=int, default=None, help="derandomize hypothesis (default: random)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "fuzz.json")
    args = parser.parse_args()

    token = new_token()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "examples": args.examples,
               "seconds_budget": args.seconds, "endpoints": {}}
    with tempfile.TemporaryDirectory(prefix="p2pai-fuzz-") as tmp:
        (Path(tmp) / "models").mkdir()
        models = write_test_models(Path(tmp) / "models")
        node = NodeProcess("--models-dir", str(models), "--token", token, *NODE_FLAGS, data_dir=Path(tmp) / "node")
        try:
            node.wait_ready()
            for endpoint in ("client", "peer") if args.endpoint == "both" else (args.endpoint,):
                figures = _run(endpoint, node, token, args)
                print(f"== {endpoint}\n{report(figures, outcomes=True)}", flush=True)
                results["endpoints"][endpoint] = _as_json(figures)
            results["node_after"] = _node_after(node.url)
            print("node after:", json.dumps(results["node_after"]))
        finally:
            results["node_exit"] = node.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


def _run(endpoint: str, node: NodeProcess, token: str, args: argparse.Namespace) -> Figures:
    session = requests.Session()
    url = node.url
    if endpoint == "peer":
        session = member_session(token, node.peer_id(), node.data_dir / "fuzz-member")
        url = node.swarm()["self"]["address"]
    return campaign(load(url, session), url, session, MODELS, args.examples, args.seconds, args.seed)


def _node_after(url: str) -> dict[str, object]:
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as http:
        health = http.get("/healthz").status_code
        answer = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}).status_code
        crashes = {m["id"]: m["crashes"] for m in http.get("/system").json()["loaded_models"]}
    return {"healthz": health, "completion": answer, "crashes": crashes,
            "answered_in_s": round(time.monotonic() - started, 2)}


def _as_json(figures: Figures) -> dict[str, object]:
    return {"requests": figures.requests, "seconds": round(figures.seconds, 1),
            "statuses": dict(sorted(figures.statuses.items())), "error_codes": dict(figures.errors.most_common()),
            "failures": figures.failures, "outcomes": dict(sorted(figures.outcomes.items()))}


if __name__ == "__main__":
    main()
