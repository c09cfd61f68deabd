"""Wall time of K-fold training on Ray: folds in parallel against the same folds one after another.

    python benchmarks/train_bench.py                      # synthetic features at the real encoders' sizes
    python benchmarks/train_bench.py --run-dir RUN        # features already extracted under RUN

Both runs use the same data, config and seed (so the same cv_waf, which is checked); only
``train.max_concurrent_folds`` differs. The same folds trained in this process without Ray are
timed too, to show Ray's own cost. Prints one JSON line and a Markdown row for benchmarks/README.md.

It also reports the resume checkpoints' bytes per fold, as the workers counted them (result.json's
``checkpoints``), against what the same reports cost when every checkpoint also held the best weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ecmf_ray import storage
from ecmf_ray.config import load_config
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.distributed import run_train
from ecmf_ray.train.loop import cross_validate, set_torch_threads
from ecmf_ray.train.outputs import experiment_dir

# The real encoders' feature sizes: CLIP-L image_embeds (frame, face), HuBERT-L, RoBERTa-large.
REAL_DIMS = {"frame": 768, "face": 768, "audio": 1024, "text": 1024}


def synthesise(run_dir: str, n_train: int, seed: int) -> None:
    # The synthetic feature store the training tests use (tests/train/fake_features.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
    from fake_features import write_fake_run

    write_fake_run(run_dir, n_train=n_train, n_test=n_train // 10, dims=REAL_DIMS, seed=seed)


def timed_train(cfg) -> tuple[float, float]:
    shutil.rmtree(experiment_dir(cfg.run_dir, cfg.train.experiment), ignore_errors=True)
    started = time.perf_counter()
    result = run_train(cfg)
    return time.perf_counter() - started, result["cv_waf"]["mean"]


def checkpoint_mb_per_fold(exp_dir: str, folds: int) -> tuple[float, float]:
    """Resume bytes written per fold (MB), and what they were with the best weights in every checkpoint."""
    now, before = [], []
    for fold in range(folds):
        result = json.loads(storage.read_text(storage.join(exp_dir, "folds", f"fold{fold}", "result.json")))
        c = result["checkpoints"]
        now.append(c["state_bytes"] + c["best_bytes"])
        before.append(c["state_bytes"] + c["reports"] * c["best_bytes"] / max(1, c["best_writes"]))
    return round(float(np.mean(now)) / 1e6, 1), round(float(np.mean(before)) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a run with manifest.parquet and features/ (default: synthesise)")
    parser.add_argument("--n-train", type=int, default=2000, help="labelled videos to synthesise")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--cpus", type=int, default=None, help="CPUs for the local Ray cluster (default: all)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()

    import ray

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="ecmf_train_bench_")
    if not args.run_dir:
        synthesise(run_dir, args.n_train, seed=0)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources()["CPU"])
    base = [
        f"run_dir={run_dir}",
        f"train.folds={args.folds}",
        f"train.max_epochs={args.epochs}",
        "train.early_stopping_patience=null",  # every fold runs every epoch: equal work per fold
        "train.checkpoint_every=5",
        *args.overrides,
    ]
    parallel_cfg = load_config([], [*base, "train.experiment=bench_parallel"])
    sequential_cfg = load_config(
        [], [*base, "train.experiment=bench_sequential", "train.max_concurrent_folds=1"]
    )

    parallel_s, parallel_waf = timed_train(parallel_cfg)
    sequential_s, sequential_waf = timed_train(sequential_cfg)
    if not np.isclose(parallel_waf, sequential_waf, atol=1e-9):
        raise SystemExit(f"cv_waf differs: parallel {parallel_waf} vs sequential {sequential_waf}")

    set_torch_threads(int(parallel_cfg.train.cpus_per_worker))
    data = load_feature_set(run_dir, list(parallel_cfg.model.branches), args.folds, int(parallel_cfg.seed))
    started = time.perf_counter()
    cross_validate(
        data,
        OmegaConf.to_container(parallel_cfg.model),
        OmegaConf.to_container(parallel_cfg.train),
        int(parallel_cfg.seed),
    )
    in_process_s = time.perf_counter() - started
    checkpoint_mb, checkpoint_mb_before = checkpoint_mb_per_fold(
        experiment_dir(run_dir, "bench_parallel"), args.folds
    )

    figures = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Ray cluster {cpus} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "videos": len(data.video_ids),
        "dims": data.dims,
        "folds": args.folds,
        "epochs": args.epochs,
        "parallel_s": round(parallel_s, 1),
        "sequential_s": round(sequential_s, 1),
        "speedup": round(sequential_s / parallel_s, 2),
        "in_process_no_ray_s": round(in_process_s, 1),
        "cv_waf": round(parallel_waf, 4),
        "checkpoint_every": int(parallel_cfg.train.checkpoint_every),
        "checkpoint_mb_per_fold": checkpoint_mb,
        "checkpoint_mb_per_fold_with_best_in_each": checkpoint_mb_before,
    }
    print(json.dumps(figures))
    print(
        f"| {figures['date']} | {figures['machine']} | {figures['videos']} | {args.folds} | {args.epochs} "
        f"| {figures['parallel_s']} | {figures['sequential_s']} | {figures['speedup']}x "
        f"| {figures['in_process_no_ray_s']} | {figures['cv_waf']} |"
    )
    if not args.run_dir:
        storage.remove(run_dir, recursive=True)


if __name__ == "__main__":
    main()
