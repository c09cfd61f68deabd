"""The Modal-Token ablation: cv_waf of ``model.modality_token`` = prepend | add | none over several seeds.

    python benchmarks/modality_token_ablation.py                      # 240 labelled clips, seeds 42 1 2, 5 folds
    python benchmarks/modality_token_ablation.py --seeds 42 1 2 3 4 --n 400 --out runs/modality_token

What it runs, through the project's own code paths:

1. ``ecmf synth DATA --release-layout`` (a synthetic MER2025 release: every modality carries the class,
   one modality of some clips another class's signal, some labels flipped);
2. ``ecmf prepare`` and ``ecmf extract`` with ``configs/local.yaml`` (tiny seeded encoders), once, in a
   subprocess (so its Ray cluster ends with it);
3. per variant and seed, every fold in this process with ``cross_validate`` (the same ``FoldRun`` that a
   Ray Train worker runs, without a Ray trial per fold), ``configs/local.yaml``'s training otherwise,
   ``train.folds`` folds and ``seed=S`` (the folds and the initialisation both follow it).

Prints a Markdown table (cv_waf mean ± std over seeds, and each seed's) and one JSON line, and writes
``results.json`` under ``--out``. Everything goes under ``--out`` (default: a new temp dir), the tiny
models and Ray's token included; nothing under ``~``. Extra ``key=value`` arguments override the
training config (e.g. ``train.select_epoch=inner``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
from omegaconf import OmegaConf

from ecmf_ray.config import load_config
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import cross_validate, set_torch_threads

VARIANTS = ("prepend", "add", "none")


def ecmf(*args: str, env: dict[str, str]) -> None:
    """One ``ecmf`` command in a subprocess; its output streams through, a failure stops the benchmark."""
    command = [sys.executable, "-m", "ecmf_ray.cli", *args]
    print("$ ecmf " + " ".join(args), flush=True)
    subprocess.run(command, env=env, check=True)


def build_run(out: str, n: int, candidates: int, label_noise: float) -> str:
    """Synthesise the release, prepare and extract it with the local profile; the run_dir."""
    data, run_dir = os.path.join(out, "data"), os.path.join(out, "run")
    token = os.path.join(out, "ray_auth_token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": token,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": os.path.join(out, "home"),  # whatever a library caches under ~ lands here
    }
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own, never someone else's
    ecmf(
        "synth",
        data,
        "--release-layout",
        "--n",
        str(n),
        "--candidates",
        str(candidates),
        "--extra",
        "0",
        "--label-noise",
        str(label_noise),
        "--seed",
        "0",
        env=env,
    )
    common = ["--config", "local", f"run_dir={run_dir}", f"storage.model_cache={os.path.join(out, 'models')}"]
    ecmf("prepare", *common, f"dataset.root={data}", env=env)
    ecmf("extract", *common, env=env)
    return run_dir


def cv_waf(run_dir: str, variant: str, seed: int, folds: int, overrides: list[str]) -> float:
    """The mean held-out WAF over ``folds`` folds of the fused model with ``model.modality_token=variant``."""
    cfg = load_config(
        ["local"],
        [
            f"run_dir={run_dir}",
            f"seed={seed}",
            f"train.folds={folds}",
            f"model.modality_token={variant}",
            *overrides,
        ],
    )
    data = load_feature_set(run_dir, list(cfg.model.branches), folds, seed)
    runs = cross_validate(data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), seed)
    return float(np.mean([run.best_waf for run in runs]))


def table(scores: dict[str, dict[int, float]], seeds: list[int]) -> str:
    """Markdown: one row per variant, mean ± std (sample std over seeds), the paired difference from
    ``none`` (same seed: same folds) and each seed's cv_waf."""

    def mean_std(values: list[float]) -> str:
        return f"{np.mean(values):+.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"

    lines = [
        "| `model.modality_token` | cv_waf mean ± std | minus `none`, paired by seed | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " |",
        "|---|---|---|" + "---|" * len(seeds),
    ]
    for variant, by_seed in scores.items():
        values = [by_seed[s] for s in seeds]
        paired = mean_std([by_seed[s] - scores["none"][s] for s in seeds]) if "none" in scores else "-"
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| `{variant}` | {mean_std(values).lstrip('+')} | {paired} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temp dir)")
    parser.add_argument("--n", type=int, default=240, help="labelled clips")
    parser.add_argument("--candidates", type=int, default=4, help="candidate clips (extracted, not scored)")
    parser.add_argument("--label-noise", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--run-dir", default=None, help="an extracted run to reuse (skips synth and extract)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="ecmf_modality_token_")
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    run_dir = args.run_dir or build_run(out, args.n, args.candidates, args.label_noise)
    extracted = time.perf_counter()
    set_torch_threads(1)  # a shared machine: one core for training
    scores: dict[str, dict[int, float]] = {v: {} for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            scores[variant][seed] = cv_waf(run_dir, variant, seed, args.folds, args.overrides)
            print(f"seed {seed} {variant}: cv_waf {scores[variant][seed]:.4f}", flush=True)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "run_dir": run_dir,
        "labelled": args.n,
        "folds": args.folds,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "cv_waf": scores,
        "extract_s": round(extracted - start, 1),
        "train_s": round(time.perf_counter() - extracted, 1),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(table(scores, args.seeds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
