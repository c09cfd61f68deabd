"""The slow-down from a lost node: the node-loss tests' jobs timed with a worker node lost and with none.

    python benchmarks/node_loss_bench.py                 # extract and train, each both ways
    python benchmarks/node_loss_bench.py --jobs extract

Runs exactly the jobs of ``tests/cluster/test_node_loss.py`` (its ``extract_run`` and ``train_run``):
`ray start` nodes on this machine, one SIGKILLed mid-`ecmf extract` (40 clips, blocks and shards of 4)
or mid-`ecmf train` (2 folds x 200 epochs, a replacement node added), and the same jobs with no node
lost, each on a fresh cluster. Prints one JSON line per run: job, whether a node was lost, wall seconds.
The tests always lose the node; this is where the no-loss baseline lives.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests" / "train")]

from ray_processes import RayProcesses, cluster_env, wait_for_head  # noqa: E402
from test_node_loss import extract_run, train_run  # noqa: E402

RUNS = {"extract": extract_run, "train": train_run}


def timed(job: str, lose_node: bool) -> float:
    """One job on a fresh cluster (a 0-CPU head; the run adds its workers); its wall seconds."""
    with tempfile.TemporaryDirectory(prefix="ecmf-node-loss-") as folder:
        tmp = Path(folder)
        cluster = RayProcesses(tmp, cluster_env(tmp))
        try:
            cluster.start_head()
            wait_for_head(cluster)
            return RUNS[job](cluster, tmp, lose_node).seconds
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", choices=sorted(RUNS), default=["extract", "train"])
    args = parser.parse_args()
    for job in args.jobs:
        for lose_node in (False, True):
            seconds = timed(job, lose_node)
            print(json.dumps({"job": job, "node_lost": lose_node, "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
