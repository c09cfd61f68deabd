"""Feature extraction: a sequential loop (how the MER baselines extract) against the Ray Data pipeline.

Run by hand, never as a test::

    python benchmarks/extract_bench.py --n 500                  # CPU, tiny models (configs/local.yaml)
    python benchmarks/extract_bench.py --n 2000 --skip-seq      # memory at scale
    python benchmarks/extract_bench.py --gpu --n 256            # real model sizes, random weights

Both paths run the same decode, face and encoder code on the same synthetic MER2025-like clips (5 s,
25 fps, 640x360, with audio) with the same decode thread settings. The sequential loop runs first, in
this process, before Ray starts; ``ray.init`` is outside the timing, actor start-up and model loading
are inside it. Peak RSS is this process's for the loop, and for Ray the sum over this process and all
its children (raylet, object store, workers; shared pages count once per process that maps them).
Both print the CPU seconds of each process kind (``process_kinds.py``: driver, decode task, decoder
child, each encoder pool, write task, Ray's own) and the cores they kept busy. Sampled every 0.2 s.
``--repeat R`` alternates the two R times and keeps the best of each (for shared machines), and lists each
pair's ratio too. Every Ray run starts its own cluster and shuts it down after, so each is a cold start
and no loop runs beside an idle cluster. The loop's later runs are warm (this process has already imported
transformers and built and run the models): for like-for-like pairs, run the benchmark once per pair.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from process_kinds import ProcessSampler

from ecmf_ray.config import load_config
from ecmf_ray.data import manifest
from ecmf_ray.data.synth import synthesize

CLIP_GFLOP_PER_IMAGE = 162.0  # ViT-L/14 at 224x224: ~81 GMACs


def dataset(work: str, n: int, distinct: int) -> pd.DataFrame:
    """A manifest frame of ``n`` videos over ``min(n, distinct)`` rendered clips, reused in turn.

    Each row is decoded and encoded on its own whatever file it names, so repeating clips changes
    nothing for throughput or memory and spares rendering thousands of them.
    """
    clips = min(n, distinct)
    data_dir = os.path.join(work, f"clips-{clips}")
    marker = os.path.join(data_dir, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"rendering {clips} clips (5 s, 25 fps, 640x360, with audio) into {data_dir} ...", flush=True)
        synthesize(
            data_dir, clips, duration_s=5.0, width=640, height=360, fps=25, workers=os.cpu_count() or 1
        )
        open(marker, "w").close()
    subtitles = pd.read_csv(os.path.join(data_dir, "subtitle_chieng.csv"))
    source = subtitles.iloc[[i % clips for i in range(n)]].reset_index(drop=True)
    return pd.DataFrame(
        {
            "video_id": [f"video_{i:06d}" for i in range(n)],
            "video_path": [os.path.join(data_dir, "video", f"{v}.mp4") for v in source["name"]],
            "text": source["chinese"],
            "label": None,
            "split": "unlabeled",
            "valence": None,
        }
    )


def timed(fn: Callable[[], Any]) -> tuple[float, dict[str, Any]]:
    """Seconds of ``fn()``, and the :class:`ProcessSampler` figures of this process's tree meanwhile."""
    sampler = ProcessSampler(os.getpid(), interval_s=0.2).start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - start
        figures = sampler.stop()
    return seconds, figures


def cpu_line(seconds: float, figures: dict[str, Any]) -> str:
    """CPU seconds per process kind, largest first, the cores they kept busy on average, and the processes
    that started during the run, by kind."""
    cpu = sorted(figures["cpu_s"].items(), key=lambda kv: -kv[1])
    kinds = ", ".join(f"{kind} {s:.1f}" for kind, s in cpu if s >= 0.5)
    started = ", ".join(f"{kind} {n}" for kind, n in figures["processes"].items())
    return (
        f"    CPU s by process kind: {kinds}; {sum(dict(cpu).values()) / seconds:.2f} cores busy\n"
        f"    processes started: {started or 'none'}"
    )


def cpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import torch

    from ecmf_ray.extract.pipeline import run_extract
    from ecmf_ray.extract.reference import run_sequential
    from ecmf_ray.runtime import init_ray

    frame = dataset(args.work, args.n, args.distinct)
    result: dict[str, Any] = {"videos": args.n}

    def config(name: str):
        run_dir = os.path.join(args.work, f"run-{name}-{args.n}")
        shutil.rmtree(run_dir, ignore_errors=True)
        manifest.write_manifest(frame, manifest.manifest_path(run_dir))
        return load_config(args.config, [*args.overrides, f"run_dir={run_dir}"])

    # One torch thread, as each Ray encoder actor has: two OpenMP threads on two shared cores thrash.
    torch.set_num_threads(args.torch_threads)
    # Alternating repeats, best of each: the machine may be shared, and load comes and goes.
    for attempt in range(1, args.repeat + 1):
        seq_rate = ray_rate = None
        if not args.skip_seq:
            seconds, figures = timed(lambda: run_sequential(config("seq")))
            seq_rate = args.n / seconds
            result["seq_videos_per_s"] = max(result.get("seq_videos_per_s", 0.0), seq_rate)
            print(
                f"[{attempt}] sequential loop: {seq_rate:.2f} videos/s ({seconds:.1f} s), "
                f"peak RSS {figures['peak_process_mb']['driver']:.0f} MB"
            )
            print(cpu_line(seconds, figures))
        if not args.skip_ray:
            cfg = config("ray")
            init_ray(cfg)
            try:
                seconds, figures = timed(functools.partial(run_extract, cfg))
            finally:
                ray.shutdown()  # the next attempt starts cold, and the next loop runs beside no cluster
            peak = figures["peak_tree_mb"]
            ray_rate = args.n / seconds
            result["ray_videos_per_s"] = max(result.get("ray_videos_per_s", 0.0), ray_rate)
            result["peak_rss_mb"] = round(max(result.get("peak_rss_mb", 0.0), peak), 1)
            print(
                f"[{attempt}] ray pipeline:    {ray_rate:.2f} videos/s ({seconds:.1f} s), peak RSS {peak:.0f} MB"
            )
            print(cpu_line(seconds, figures))
        if seq_rate and ray_rate:
            result.setdefault("pair_ratios", []).append(round(ray_rate / seq_rate, 3))
    if "seq_videos_per_s" in result and "ray_videos_per_s" in result:
        result["ratio"] = result["ray_videos_per_s"] / result["seq_videos_per_s"]
        print(f"ratio ray/sequential: {result['ratio']:.2f}")
    return result


def gpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Real-size CLIP-ViT-L/14 and HuBERT-Large (random weights) through the encoders' own functions."""
    import torch

    from ecmf_ray.extract.encoders import clip_image_features, hubert_window_sums
    from ecmf_ray.hub import build_model_from_config, torch_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch_dtype(args.dtype or ("bf16" if device == "cuda" else "fp32"))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def rate(step: Callable[[], Any], items: int, repeats: int) -> float:
        step()  # warm-up (kernels, allocator)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        sync()
        return items * repeats / (time.perf_counter() - start)

    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    result["dtype"] = str(dtype).removeprefix("torch.")
    n = max(1, args.n)
    with torch.inference_mode():
        side = 8192 if device == "cuda" else 1024
        a = torch.randn(side, side, device=device, dtype=torch.bfloat16)
        result["bf16_matmul_tflops"] = rate(lambda: a @ a, 2 * side**3, 5) / 1e12

        clip = build_model_from_config("clip", "real").to(device, dtype)
        batch = min(n, args.gpu_batch)
        pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        step = lambda: clip_image_features(clip, pixels, "image_embeds")  # noqa: E731
        images_per_s = rate(step, batch, max(1, n // batch))
        result["clip_images_per_s"] = images_per_s
        result["clip_tflops"] = images_per_s * CLIP_GFLOP_PER_IMAGE / 1e3
        result["clip_fraction_of_matmul"] = result["clip_tflops"] / result["bf16_matmul_tflops"]
        clip = None  # free its memory before HuBERT loads

        hubert = build_model_from_config("hubert", "real").to(device, dtype)
        clips = max(1, min(n, 16))
        audio = torch.randn(clips, 160_000, device=device, dtype=dtype)  # 10 s windows
        mask = torch.ones(clips, 160_000, device=device, dtype=torch.long)
        layers = list(range(16, 22))
        step = lambda: hubert_window_sums(hubert, audio, mask, layers, "mean")  # noqa: E731
        result["hubert_clips_per_s"] = rate(step, clips, max(1, n // clips))
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="videos (CPU) or images (--gpu)")
    parser.add_argument("--config", action="append", default=None, help="config files (default: local)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ecmf_extract_bench"))
    parser.add_argument("--distinct", type=int, default=500, help="rendered clips, reused beyond that")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs of each; the best counts")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads of the sequential loop")
    parser.add_argument("--skip-seq", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="real model sizes, random weights; CPU if no CUDA")
    parser.add_argument("--gpu-batch", type=int, default=64, help="images per CLIP forward in --gpu mode")
    parser.add_argument(
        "--dtype", default=None, help="--gpu compute dtype (default bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    args.config = args.config or ["local"]
    result = gpu_bench(args) if args.gpu else cpu_bench(args)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
