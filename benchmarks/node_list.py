"""How `metasweep submit` lists a cluster's nodes: Ray's state API against the raw REST call it
replaced, on a token-authenticated cluster (both send the same bearer token).

    cluster/local/start-ray.sh
    .venv/bin/python benchmarks/node_list.py --address http://127.0.0.1:8265 --repeats 20

Prints the median wall time of each way and their ratio, measured in the same run, and checks that
both list the same alive nodes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import requests

from metasweep.orchestrator.jobs.client import Cluster


def raw_rest(cluster: Cluster) -> list[dict]:
    response = requests.get(
        f"{cluster.url}/api/v0/nodes", headers=cluster._headers, params={"limit": 10000}, timeout=10
    )
    response.raise_for_status()
    nodes = response.json()["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="http://127.0.0.1:8265")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cluster = Cluster(args.address)
    timings: dict[str, list[float]] = {"state_api": [], "raw_rest": []}
    for _ in range(args.repeats):
        for name, call in (("state_api", cluster.nodes), ("raw_rest", lambda: raw_rest(cluster))):
            started = time.perf_counter()
            listed = call()
            timings[name].append(time.perf_counter() - started)
    ours = sorted(n["node_ip"] + str(n["is_head_node"]) for n in cluster.nodes())
    theirs = sorted(n["node_ip"] + str(n["is_head_node"]) for n in raw_rest(cluster))
    assert ours == theirs, (ours, theirs)
    median = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    print(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "nodes": len(listed), "repeats": args.repeats,
        "median_ms": {k: round(v, 2) for k, v in median.items()},
        "state_api_over_raw_rest": round(median["state_api"] / median["raw_rest"], 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
