"""The GPU figures in one run: matmul ceiling, encoders, the whole extraction against the loop, one fold.

    python benchmarks/gpu_bench.py --cache /tmp/ecmf-hf            # full: one GPU, < 8 min on an H200
    python benchmarks/gpu_bench.py --quick --cache /tmp/ecmf-hf    # CPU check of the script, < 2 min

1. bf16 dense ``torch.matmul`` rate (square 8192; 1024 --quick): the ceiling.
2. CLIP ViT-L/14 vision forward (the encoders' ``clip_image_features``) at bf16, batch 64/128/256, eager and
   SDPA attention (and, as the last stage, ``torch.compile`` at the profile's forward batch; skipped with
   --no-compile): images/s and MFU against the ceiling,
   from FLOPs counted by ``torch.utils.flop_counter`` (~162 GFLOP per 224-px image at real size).
3. HuBERT-Large (batch ``extract.hubert.batch_size`` of 10 s windows, layers 16-21) and RoBERTa-Large (batch
   ``extract.roberta.batch_size`` of 128 tokens): items/s.
4. ``ecmf extract --config workstation`` on ``--clips`` synthetic release clips (``real_size.py``'s cache,
   ``HF_HOME`` offline), nvidia-smi utilisation and GPU memory per actor sampled every 0.5 s; then the
   sequential reference loop (``ecmf_ray.extract.reference``) on the same clips (the first ``--loop-clips``).
   Both figures include starting up and loading the models.
5. ``fold_cost.py`` for ``--fold-epochs`` epochs on cuda and on the CPU.

--quick runs everything at the ``reduced`` scale (real layer counts, width 32) on the CPU with small batches
and 4 clips. A stage that fails is recorded as its error and the others still run. The last stdout line is
one JSON object; ``--out`` gets it as gpu_bench.json, rewritten after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from process_kinds import run_sampled
from real_size import ENCODERS, ensure_cache

from ecmf_ray.config import load_config
from ecmf_ray.extract.encoders import clip_image_features, hubert_window_sums
from ecmf_ray.testing import hf_cache

HERE = Path(__file__).resolve().parent
ECMF = [sys.executable, "-m", "ecmf_ray.cli"]
STAGES = ("models", "extract", "loop", "fold", "compile")  # in this order; compile last, as it is slow


def rate(step: Callable[[], Any], items: int, seconds: float, sync: Callable[[], None]) -> float:
    """Items per second of ``step`` run for about ``seconds`` after one warm-up call."""
    step()
    sync()
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        step()
        runs += 1
    sync()
    return items * runs / (time.perf_counter() - start)


def flops_of(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def clip_vision(device: str, scale: str) -> Any:
    """CLIP's vision tower and projection at bf16 on ``device`` (what the encoders' load_clip gives)."""
    from transformers import CLIPVisionModelWithProjection

    clip = hf_cache.checkpoint_model("clip", scale)
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.vision_model, vision.visual_projection = clip.vision_model, clip.visual_projection
    return vision.to(device, torch.bfloat16).eval()


def clip_rate(
    model: Any, batch: int, args: argparse.Namespace, device: str, gflop: float, ceiling: float
) -> dict:
    """Images/s of ``model`` on ``batch`` random 224-px images, and the MFU against ``ceiling`` TFLOP/s."""
    pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.bfloat16)
    per_s = rate(
        lambda: clip_image_features(model, pixels, "image_embeds"), batch, args.seconds, sync_of(device)
    )
    return {"images_per_s": round(per_s, 1), "mfu": round(per_s * gflop / 1e3 / ceiling, 3)}


def sync_of(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def model_bench(args: argparse.Namespace, device: str, scale: str) -> dict[str, Any]:
    dtype = torch.bfloat16
    sync = sync_of(device)
    out: dict[str, Any] = {}
    side = 1024 if args.quick else 8192
    a = torch.randn(side, side, device=device, dtype=dtype)
    ceiling = out["bf16_matmul_tflops"] = rate(lambda: a @ a, 2 * side**3, args.seconds, sync) / 1e12
    cfg = load_config(["workstation"])
    with torch.inference_mode():
        vision = clip_vision(device, scale)
        one = torch.randn(1, 3, 224, 224, device=device, dtype=dtype)
        gflop = out["clip_gflop_per_image"] = (
            flops_of(lambda: clip_image_features(vision, one, "image_embeds")) / 1e9
        )
        for attention in ("eager", "sdpa"):
            vision.set_attn_implementation(attention)
            for batch in (4, 8) if args.quick else (64, 128, 256):
                out[f"clip {attention} b{batch}"] = clip_rate(vision, batch, args, device, gflop, ceiling)
        hubert = hf_cache.checkpoint_model("hubert", scale).to(device, dtype).eval()
        windows = 2 if args.quick else int(cfg.extract.hubert.batch_size)
        audio = torch.randn(windows, 160_000, device=device, dtype=dtype)
        mask = torch.ones(windows, 160_000, device=device, dtype=torch.long)
        layers = list(cfg.extract.hubert.layers)
        step = lambda: hubert_window_sums(hubert, audio, mask, layers, "mean")  # noqa: E731
        out["hubert_windows_per_s"] = round(rate(step, windows, args.seconds, sync), 2)
        roberta = hf_cache.checkpoint_model("roberta", scale).bert.to(device, dtype).eval()
        texts = 4 if args.quick else int(cfg.extract.roberta.batch_size)
        ids = torch.randint(0, hf_cache.BERT_VOCAB_SIZE, (texts, 128), device=device)
        out["roberta_texts_per_s"] = round(rate(lambda: roberta(input_ids=ids), texts, args.seconds, sync), 1)
    return out


def compile_bench(
    args: argparse.Namespace, device: str, scale: str, models: dict[str, Any]
) -> dict[str, Any]:
    """``torch.compile`` of the SDPA vision tower at the profile's forward batch (last: compiling is slow)."""
    batch = int(load_config(["workstation"]).extract.clip.forward_batch)
    with torch.inference_mode():
        vision = clip_vision(device, scale)
        vision.set_attn_implementation("sdpa")
        start = time.perf_counter()
        compiled = torch.compile(vision)
        figures = clip_rate(
            compiled, batch, args, device, models["clip_gflop_per_image"], models["bf16_matmul_tflops"]
        )
    return {
        f"clip compiled sdpa b{batch}": figures,
        "compile_and_time_s": round(time.perf_counter() - start, 1),
    }


def extract_env(args: argparse.Namespace, scale: str, work: Path) -> dict[str, str]:
    """The environment of every ``ecmf`` call: the offline cache, a HOME of its own, no inherited RAY_*."""
    home = ensure_cache(args.cache.resolve(), scale)
    (work / "home").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HOME": str(work / "home"),
        "RAY_DEDUP_LOGS": "0",
    }


def run_args(args: argparse.Namespace, work: Path, name: str, gpu: bool) -> list[str]:
    """``--config workstation`` and the overrides of the run called ``name`` under ``work``."""
    small = ["extract.frames.num=2"] if args.quick else []
    cpu_only = [] if gpu else ["ray.num_gpus=0", *(f"extract.{e}.num_gpus=0" for e in ENCODERS)]
    return ["--config", "workstation", f"run_dir={work / name}", *small, *cpu_only]


def extract_bench(args: argparse.Namespace, scale: str, gpu: bool, work: Path) -> dict[str, Any]:
    """A synthetic release of ``--clips`` clips, prepared twice (Ray's run, the loop's), then ``ecmf extract``."""
    env = extract_env(args, scale, work)
    data = work / "data"
    synth = [*ECMF, "synth", str(data), "--release-layout", "--n", str(args.clips)]
    subprocess.run([*synth, "--candidates", "1", "--extra", "0"], env=env, check=True)
    for name in ("ray", "loop"):
        prepare = [*ECMF, "prepare", *run_args(args, work, name, gpu), f"dataset.root={data}"]
        subprocess.run(prepare, env=env, check=True)
    out = run_sampled([*ECMF, "extract", *run_args(args, work, "ray", gpu)], env, gpu=gpu)
    return out | {"clips": args.clips + 1, "clips_per_s": round((args.clips + 1) / out["seconds"], 3)}


def loop_bench(args: argparse.Namespace, scale: str, gpu: bool, work: Path) -> dict[str, Any]:
    """The sequential reference loop on the first ``--loop-clips`` of the same clips, in one process."""
    loop = (
        "import sys; from ecmf_ray.config import load_config; "
        "from ecmf_ray.extract.reference import run_sequential; "
        "run_sequential(load_config(['workstation'], sys.argv[2:]), limit=int(sys.argv[1]))"
    )
    overrides = run_args(args, work, "loop", gpu)[2:]
    env = extract_env(args, scale, work)
    out = run_sampled([sys.executable, "-c", loop, str(args.loop_clips), *overrides], env, gpu=gpu)
    return out | {"clips": args.loop_clips, "clips_per_s": round(args.loop_clips / out["seconds"], 3)}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Ray over the loop, and the release projected from Ray's clips/s (model loading included in both)."""
    ray, loop = result.get("extract", {}), result.get("loop", {})
    if "clips_per_s" not in ray:
        return {}
    out = {"projected_27369_min": round(27369 / ray["clips_per_s"] / 60, 1)}
    if "clips_per_s" in loop:
        out["ray_over_loop"] = round(ray["clips_per_s"] / loop["clips_per_s"], 2)
    return out


def fold_bench(args: argparse.Namespace, device: str) -> dict[str, Any]:
    out = {}
    rows = ["--n-train", "600"] if args.quick else []
    for dev in dict.fromkeys([device, "cpu"]):
        cmd = [sys.executable, str(HERE / "fold_cost.py"), "--epochs", str(args.fold_epochs), "--device", dev]
        done = subprocess.run([*cmd, *rows], capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        out[dev] = {
            "wall_s_per_epoch": round(figures["wall_s"] / figures["epochs"], 3),
            "epochs": figures["epochs"],
        }
    return out


def run_stages(stages: list[tuple[str, Callable[[], Any]]], result: dict[str, Any], out: Path) -> None:
    """Each stage in turn; a failed one is recorded and the rest still run (a GPU lease allows one try).

    ``out/gpu_bench.json`` is rewritten after every stage, so a run cut off by its time limit keeps what
    it measured.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name, stage in stages:
        start = time.perf_counter()
        try:
            result[name] = stage()
        except Exception as err:
            traceback.print_exc()
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result[f"{name}_bench_s"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
        (out / "gpu_bench.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path, help="real_size.py's cache folder")
    parser.add_argument("--quick", action="store_true", help="reduced scale, on the CPU: checks the script")
    parser.add_argument("--clips", type=int, default=None, help="labelled clips to extract (500; 4 --quick)")
    parser.add_argument("--loop-clips", type=int, default=None, help="of those, for the loop (all)")
    parser.add_argument("--seconds", type=float, default=None, help="timing per measurement (3; 0.5 --quick)")
    parser.add_argument("--fold-epochs", type=int, default=None, help="epochs per fold (5; 1 --quick)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (always with --quick)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES, help="the stages to run (all)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_bench"))
    args = parser.parse_args()
    args.clips = args.clips or (4 if args.quick else 500)
    args.loop_clips = min(args.loop_clips or args.clips + 1, args.clips + 1)
    args.seconds = args.seconds or (0.5 if args.quick else 3.0)
    args.fold_epochs = args.fold_epochs or (1 if args.quick else 5)
    args.no_compile = args.no_compile or args.quick
    gpu = torch.cuda.is_available() and not args.quick
    device = "cuda" if gpu else "cpu"
    scale = "reduced" if args.quick else "real"
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, "
        + (torch.cuda.get_device_name() if gpu else "no GPU used"),
        "scale": scale,
    }
    work = Path(tempfile.mkdtemp(prefix="ecmf-gpu-bench-"))
    try:
        stages = {
            "models": lambda: model_bench(args, device, scale),
            "extract": lambda: extract_bench(args, scale, gpu, work),
            "loop": lambda: loop_bench(args, scale, gpu, work),
            "fold": lambda: fold_bench(args, device),
            "compile": lambda: compile_bench(args, device, scale, result["models"]),
        }
        chosen = [s for s in STAGES if s in args.stages and not (s == "compile" and args.no_compile)]
        run_stages(
            [*((s, stages[s]) for s in chosen), ("summary", lambda: summary(result))], result, args.out
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
