"""CPU-seconds of `ecmf train` by process kind, per fold: what Ray spends on each fold besides training it.

    python benchmarks/fold_overhead.py                    # 6 folds of 4 epochs on small synthetic features
    python benchmarks/fold_overhead.py --folds 6 --epochs 4 --repeat 3
    python benchmarks/fold_overhead.py train.preemption_watcher=true   # with config overrides

Runs `ecmf train --config local` (its own 2-CPU Ray cluster) on the training tests' synthetic feature
store, with folds so short that Ray's per-fold processes (the fold's driving task, Ray Train's controller
and helpers, the worker) are most of the CPU, under :class:`process_kinds.ProcessSampler`. Prints one
JSON line per run: wall seconds, CPU seconds in all, per fold, and by process kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from process_kinds import run_sampled

ECMF = str(Path(sys.executable).with_name("ecmf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value) for every run")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
    from fake_features import SMALL, write_fake_run

    with tempfile.TemporaryDirectory(prefix="fold-overhead-") as tmp:
        run_dir = os.path.join(tmp, "run")
        write_fake_run(run_dir, n_train=args.n_train, n_test=args.n_train // 8)
        for attempt in range(args.repeat):
            overrides = [*SMALL, f"train.folds={args.folds}", f"train.max_epochs={args.epochs}",
                         "train.early_stopping_patience=null", f"train.experiment=overhead{attempt}", *args.overrides]  # fmt: skip
            figures = run_sampled(
                [ECMF, "train", "--config", "local", f"run_dir={run_dir}", *overrides],
                {**os.environ, "HOME": tmp},
            )
            cpu = figures["cpu_s"]
            total = sum(cpu.values())
            print(json.dumps({
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "folds": args.folds,
                "epochs": args.epochs, "overrides": args.overrides, "seconds": figures["seconds"], "cpu_s": round(total, 1),
                "cpu_s_per_fold": round(total / args.folds, 1), "cpu_s_by_kind": cpu,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
