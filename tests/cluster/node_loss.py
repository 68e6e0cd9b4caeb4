"""Run the job on a local multi-node cluster (head + two workers) and remove a worker node mid-run.

Run as a script (its own driver process): python tests/cluster/node_loss.py CONFIG RESULT_JSON
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from embedding.config_file import load_config
from embedding.job.run import run


def main(config_path: str, result_path: str) -> None:
    # The head runs the driver only; decoding and the encoder run on the two workers.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = load_config(config_path)
    commits = Path(cfg.output.root) / "_state" / "image" / "model_version=demo" / "commits"
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["summary"] = run(cfg)
        except Exception as exc:  # reported to the test, which fails on it
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        if commits.exists() and len(list(commits.glob("*.json"))) >= 2:
            # The encoder is running (units are being committed): take away the node it most likely uses.
            actors = [
                a
                for a in ray.util.state.list_actors(filters=[("state", "=", "ALIVE")])
                if "Encode" in a.class_name  # MapWorker(MapBatches(EncodeActor))
            ]
            nodes = {a.node_id for a in actors}
            victim = next((w for w in workers if w.node_id in nodes), workers[0])
            cluster.remove_node(victim)
            outcome["removed"] = {
                "node": victim.node_id,
                "had_encoder": victim.node_id in nodes,
                "actors": [a.class_name for a in actors],
                "committed_before": len(list(commits.glob("*.json"))),
            }
            break
        time.sleep(0.05)
    thread.join(timeout=600)
    Path(result_path).write_text(json.dumps(outcome))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
