"""The cluster run rehearsed on one machine (cluster/README.md, "Rehearse a cluster run locally"):
Ray's fake multi-node autoscaler from cluster/local-autoscaler.yaml, token auth on, the pipeline
submitted with `ray job submit`; GPU nodes come on demand, folds train side by side, nodes go at idle."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pandas as pd
import ray.autoscaler
import yaml
from ray_processes import RAY, REPO, RayProcesses, alive_nodes, cluster_env, state, wait_for, wait_for_head

from ecmf_ray.data.synth import synthesize
from ecmf_ray.finalize.report import peak_concurrency

CONFIG = REPO / "cluster" / "local-autoscaler.yaml"
# The local profile, with the GPU profiles' pool per encoder and GPU shares that put the three pools on one
# (logical) GPU node.
GPU_SHARES = ("extract.encoder_pools=separate", "extract.clip.num_gpus=0.5", "extract.hubert.num_gpus=0.25",
              "extract.roberta.num_gpus=0.25")  # fmt: skip
FOLDS = 3
SMALL_RUN = (
    f"train.folds={FOLDS}", "train.max_epochs=30", "train.checkpoint_every=1", "train.early_stopping_patience=null",
    "finalize.relabel.enabled=false", "finalize.ensemble=[{name: ecmf, overrides: []}]", "finalize.ablation=[]",
)  # fmt: skip


def test_local_autoscaler_file_is_a_valid_launcher_config_shaped_like_aws():
    config = yaml.safe_load(CONFIG.read_text())
    schema = Path(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    jsonschema.validate(config, json.loads(schema.read_text()))  # and the rehearsal below launches it
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())["available_node_types"]
    assert set(workers) <= set(aws)
    assert any("GPU" in t["resources"] for t in workers.values())
    assert any("GPU" not in t["resources"] for t in workers.values())
    assert all(t["min_workers"] == 0 for t in workers.values())


def fold_spans(exp_dir: Path) -> list[tuple[str, str]]:
    """Each fold's (started_at, finished_at), as its training worker recorded them in its result.json."""
    records = [json.loads(p.read_text()) for p in sorted(exp_dir.glob("folds/fold*/result.json"))]
    return [(r["started_at"], r["finished_at"]) for r in records]


def started_at(node: dict) -> float:
    """A node's start in seconds since the epoch."""
    return node["start_time_ms"] / 1000


def test_rehearsal_scales_from_zero_runs_the_pipeline_and_scales_back(tmp_path: Path):
    env = cluster_env(tmp_path)
    cluster = RayProcesses(tmp_path, env)
    # The shipped file as written, on this test's own GCS port (other clusters may hold 6379).
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["gcs_address"] = cluster.gcs_address
    (tmp_path / "local-autoscaler.yaml").write_text(yaml.safe_dump(config))
    idle_s = 60 * float(config["idle_timeout_minutes"])
    synthesize(str(tmp_path / "mer"), 24, unlabeled=6, seed=3, duration_s=2.0)
    run_dir = tmp_path / "run"
    try:
        cluster.start_head(
            f"--autoscaling-config={tmp_path / 'local-autoscaler.yaml'}", env={**env, "RAY_FAKE_CLUSTER": "1"}
        )
        head = wait_for_head(cluster)
        assert len(head) == 1 and head[0]["resources_total"].get("CPU", 0) == 0  # from zero workers

        submitted = time.time()
        command = [RAY, "job", "submit", "--address", cluster.dashboard, "--",
                   "python", "jobs/pipeline.py", "--config", "configs/local.yaml",
                   f"run_dir={run_dir}", f"dataset.root={tmp_path / 'mer'}", *GPU_SHARES, *SMALL_RUN]  # fmt: skip
        try:
            result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        except (
            subprocess.TimeoutExpired
        ) as hung:  # the job's and the autoscaler's own account of where it stopped
            raise AssertionError(
                cluster.log_tails("job-driver-*.log", "monitor.log", "gcs_server.out")
            ) from hung
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "succeeded" in output
        jobs = state(cluster, "jobs")
        assert [j["status"] for j in jobs if j["type"] == "SUBMISSION"] == ["SUCCEEDED"]

        # Every output of the pipeline.
        assert (run_dir / "manifest.parquet").is_file()
        for branch in ("frame", "face", "audio", "text"):
            assert any((run_dir / "features" / branch).glob("*.parquet")), branch
        metrics = json.loads((run_dir / "train" / "ecmf" / "metrics.json").read_text())
        assert len(metrics["per_fold"]) == FOLDS
        submission = pd.read_csv(run_dir / "final" / "submission.csv")
        assert len(submission) == submission["name"].nunique() == 6
        assert (run_dir / "final" / "report.md").is_file()

        # GPU nodes came on demand, after the submission, and the encoder actors ran on them.
        nodes = state(cluster, "nodes")
        gpu_nodes = {n["node_id"]: n for n in nodes if n["resources_total"].get("GPU", 0) > 0}
        assert gpu_nodes and all(started_at(n) > submitted for n in gpu_nodes.values())
        encoders = [
            a for a in state(cluster, "actors")
            if any(name in (a.get("repr_name") or "") for name in ("ClipEncoder", "HubertEncoder", "RobertaEncoder"))
        ]  # fmt: skip
        names = {name for a in encoders for name in ("Clip", "Hubert", "Roberta") if name in a["repr_name"]}
        assert names == {"Clip", "Hubert", "Roberta"}, [a.get("repr_name") for a in encoders]
        assert all(a["node_id"] in gpu_nodes for a in encoders)

        # The folds trained side by side, by their workers' own clocks.
        spans = fold_spans(run_dir / "train" / "ecmf")
        assert len(spans) == FOLDS and peak_concurrency(spans) >= 2, spans

        # Idle workers go after idle_timeout_minutes, back to the head alone.
        cluster.remember()
        done = time.time()
        wait_for(lambda: len(alive_nodes(cluster)) == 1, idle_s + 120, 2, "the idle workers to be terminated")
        first_gpu = min(started_at(n) for n in gpu_nodes.values())
        print(
            f"\nfirst GPU node up {first_gpu - submitted:.1f} s after submit; {len(nodes) - 1} worker nodes;"
            f" folds at once: {peak_concurrency(spans)}; back to the head alone {time.time() - done:.0f} s after"
            " the job"
        )
    finally:
        cluster.stop()
