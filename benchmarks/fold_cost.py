"""CPU-seconds of one fold at the paper's settings: the number the cluster README's training cost rests on.

    python benchmarks/fold_cost.py                       # 7,369 labelled videos, 200 epochs, 6 folds
    python benchmarks/fold_cost.py --epochs 20           # a quicker look

Synthetic features at the real encoders' sizes (frame 768, face 768, audio 1,024, text 1,024), the
paper-sized model and training settings of ``configs/base.yaml`` (hidden 128, 2 heads, 2 layers,
dropout 0.6, lr 5e-5), every epoch run (early stopping off: the upper bound), one thread as a
``train.cpus_per_worker=1`` worker has. Trains fold 0 in this process, the same ``FoldRun`` a Ray Train
worker runs, and prints one JSON line: CPU-seconds, wall seconds, seconds per epoch, and the core-hours
of one experiment (every fold) and of ``configs/base.yaml``'s finalize.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from omegaconf import OmegaConf
from train_bench import synthesise

from ecmf_ray import storage
from ecmf_ray.config import load_config
from ecmf_ray.finalize.job import plan_variants
from ecmf_ray.finalize.relabel import weak_classifiers
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import FoldRun, set_torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=7369, help="labelled videos (MER2025: 7,369)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="torch device of the fold (cuda for the GPU figure)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()

    run_dir = tempfile.mkdtemp(prefix="ecmf_fold_cost_")
    synthesise(run_dir, args.n_train, seed=0)
    cfg = load_config(
        [],
        [
            f"run_dir={run_dir}",
            f"train.max_epochs={args.epochs}",
            "train.early_stopping_patience=null",
            *args.overrides,
        ],
    )
    folds = int(cfg.train.folds)
    set_torch_threads(1)
    data = load_feature_set(run_dir, list(cfg.model.branches), folds, int(cfg.seed))
    run = FoldRun(
        data,
        0,
        OmegaConf.to_container(cfg.model),
        OmegaConf.to_container(cfg.train),
        int(cfg.seed),
        device=args.device,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    while not run.done:
        run.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    members, rows = plan_variants(cfg)
    experiments = len(weak_classifiers(cfg.finalize.relabel)) + len(members) + len(rows)
    figures = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "device": args.device,
        "train_rows": len(run.train_rows),
        "dims": data.dims,
        "epochs": run.epoch,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "cpu_s_per_epoch": round(cpu / run.epoch, 3),
        "folds": folds,
        "experiment_core_hours": round(cpu * folds / 3600, 2),
        # At most: some experiments are shared (an ablation row that is a member's config).
        "finalize_experiments": experiments,
        "finalize_core_hours": round(cpu * folds * experiments / 3600, 1),
    }
    print(json.dumps(figures))
    storage.remove(run_dir, recursive=True)


if __name__ == "__main__":
    main()
