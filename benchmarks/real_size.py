"""The default encoders at their real size (random weights), stage by stage, as a user runs them.

    python benchmarks/real_size.py --cache /tmp/ecmf-real-hf --n 12             # ~4.3 GB cache, built once
    python benchmarks/real_size.py --cache /tmp/ecmf-reduced-hf --scale reduced --n 4   # same layout, 32 wide

Builds (once per ``--cache``/``--scale``) an offline Hugging Face cache holding the three default hub ids
(``ecmf_ray.testing.hf_cache``: ``model.safetensors`` for CLIP, ``pytorch_model.bin`` only for HuBERT and
RoBERTa). Then, with ``HF_HOME`` at it and ``HF_HUB_OFFLINE=1``: ``ecmf synth --release-layout`` (N labelled
clips, N/4 candidates), ``ecmf prepare`` and ``ecmf extract --config workstation`` (GPU shares 0, the
profile's bf16), then ``ecmf train`` on the features. Each stage runs in its own process tree, sampled every
0.5 s from /proc: seconds per clip, peak memory per process kind (driver, decode task, decoder child, each
encoder actor, fold worker, Ray's own processes) beside what the profile declares, CPU time per encoder,
and the output widths. Writes ``real_size.json`` and ``real_size.md`` into ``--out``.
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
from typing import Any

import pyarrow.parquet as pq
from process_kinds import run_sampled

from ecmf_ray import features
from ecmf_ray.config import load_config
from ecmf_ray.testing import hf_cache

BRANCHES = ("frame", "face", "audio", "text")
ENCODERS = ("clip", "hubert", "roberta")


def ensure_cache(root: Path, scale: str) -> Path:
    """``root/scale`` as ``$HF_HOME``, built on first use (in a sibling folder, renamed when complete)."""
    home = root / scale
    if home.is_dir():
        return home
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{scale}-", dir=root))
    print(f"building the {scale} cache in {home} ...", flush=True)
    start = time.perf_counter()
    hf_cache.build_hf_home(building, dict(load_config().models), scale, str(root / "tiny"))
    building.rename(home)
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path, help="folder for the offline HF cache(s)")
    parser.add_argument("--scale", choices=hf_cache.SCALES, default="real")
    parser.add_argument("--n", type=int, default=12, help="labelled clips (plus n/4 candidates)")
    parser.add_argument("--out", type=Path, default=Path("runs/real_size"))
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument(
        "--train-overrides",
        nargs="*",
        default=["train.folds=2", "train.max_epochs=5", "train.early_stopping_patience=null"],
        help="overrides for `ecmf train` (few clips: few folds)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra overrides for extract")
    args = parser.parse_args()

    home = ensure_cache(args.cache.resolve(), args.scale)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ecmf-real-size-"))
    data, run = work / "data", work / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # HOME too: Ray's token and ecmf's model cache stay in the work folder, never under ~.
    (work / "home").mkdir()
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HOME": str(work / "home"), "RAY_DEDUP_LOGS": "0"}
    ecmf = [sys.executable, "-m", "ecmf_ray.cli"]
    no_gpu = ["ray.num_gpus=0", *(f"extract.{e}.num_gpus=0" for e in ENCODERS)]
    candidates = max(1, args.n // 4)
    stages: dict[str, dict[str, Any]] = {}
    try:
        synth = [*ecmf, "synth", str(data), "--release-layout", "--n", str(args.n)]
        stages["synth"] = run_sampled([*synth, "--candidates", str(candidates), "--extra", "0"], env)
        common = ["--config", "workstation", f"run_dir={run}"]
        stages["prepare"] = run_sampled([*ecmf, "prepare", *common, f"dataset.root={data}"], env)
        stages["extract"] = run_sampled([*ecmf, "extract", *common, *no_gpu, *args.overrides], env)
        if not args.no_train:
            stages["train"] = run_sampled([*ecmf, "train", *common, *args.train_overrides], env)
        clips = pq.read_metadata(run / "manifest.parquet").num_rows
        widths = {
            b: pq.read_schema(next(Path(features.branch_dir(str(run), b)).rglob("*.parquet")))
            .field("feature")
            .type.list_size
            for b in BRANCHES
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for figures in stages.values():
        figures["s_per_clip"] = round(figures["seconds"] / clips, 2)
    profile = load_config(["workstation"])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "scale": args.scale,
        "clips": clips,
        "widths": widths,
        "profile_memory_mb": {
            "decode task": profile.extract.decode.memory_mb,
            **{f"encoder {e}": profile.extract[e].memory_mb for e in ENCODERS},
        },
        "stages": stages,
    }
    (args.out / "real_size.json").write_text(json.dumps(result, indent=1))
    (args.out / "real_size.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps(result))


def markdown(result: dict[str, Any]) -> str:
    """One table per run: a row per stage, then a row per process kind of the extraction."""
    lines = [
        f"{result['date']}, {result['machine']}, load average {result['load_average'][0]:.1f}; "
        f"scale {result['scale']}, {result['clips']} clips; widths {result['widths']}",
        "",
        "| stage | s | s/clip | peak tree MB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {f['seconds']} | {f['s_per_clip']} | {f['peak_tree_mb']} |"
        for name, f in result["stages"].items()
    ]
    lines += [
        "",
        "| process kind (stage) | peak MB, one process | peak MB, all of the kind | profile memory_mb | CPU s | encoder CPU share |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in result["stages"].items():
        if name == "synth":
            continue
        for kind, peak in f["peak_process_mb"].items():
            declared = result["profile_memory_mb"].get(kind, "") if name == "extract" else ""
            share = f["encoder_cpu_share"].get(kind, "")
            lines.append(
                f"| {kind} ({name}) | {peak} | {f['peak_kind_mb'][kind]} | {declared} | {f['cpu_s'].get(kind, 0)} | {share} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
