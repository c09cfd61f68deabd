"""Every stage at the mission's scale: N clips in the MER2025 release layout, prepare -> extract -> train -> finalize.

    python benchmarks/scale_bench.py --videos 2737           # a tenth of the mission
    python benchmarks/scale_bench.py --videos 27369          # the mission: 7,369 labelled + 20,000 candidates

The clips are short and small (``--duration``, ``--size``), so the run measures the system (scheduling,
streaming, writes, memory), not the encoders: the tiny seeded models and ``configs/local.yaml`` run every
stage exactly as a cluster does, at the real ratio of labelled videos (7,369 of 27,369) to candidates.

Per stage it records wall time, peak memory summed over the driver and every Ray process it started
(sampled from /proc), and the files each stage wrote under ``run_dir``; with ``--floors``, the same
training folds in this process without Ray, to show Ray's share of the train stage. It checks that every
manifest video is accounted for exactly once in every branch (a feature row or an error row, never both,
never twice). The last stdout line is one JSON object: ``videos``, ``all_accounted_once``, ``peak_rss_mb``,
``stage_seconds``, ``stage_peak_rss_mb``, ``files_written``, ``seconds_per_video``, and more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from process_kinds import process_tree, rss_bytes

MISSION_LABELLED, MISSION_VIDEOS = 7369, 27369


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Ray's GCS, raylet, workers are the driver's)."""
    return sum(rss_bytes(pid) for pid in process_tree(root))


class PeakMemory:
    """Samples :func:`tree_rss_bytes` of this process every ``interval_s`` in a thread; the peak per stage."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.current, self.overall = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = tree_rss_bytes(os.getpid())
            self.current, self.overall = max(self.current, rss), max(self.overall, rss)

    @contextmanager
    def stage(self) -> Iterator[None]:
        self.current = tree_rss_bytes(os.getpid())
        yield

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def count_files(folder: str, skip: str) -> int:
    return sum(1 for p in Path(folder).rglob("*") if p.is_file() and not str(p).startswith(skip))


def accounted_once(run_dir: str, branches: list[str]) -> dict[str, int]:
    """Per branch, the manifest videos not accounted for exactly once (0 everywhere: all accounted once)."""
    from ecmf_ray import storage
    from ecmf_ray.data.manifest import manifest_path, read_manifest
    from ecmf_ray.features import branch_dir, errors_path

    ids = read_manifest(manifest_path(run_dir))["video_id"].astype(str)
    errors = (
        storage.read_table(errors_path(run_dir)).to_pandas() if storage.exists(errors_path(run_dir)) else None
    )
    off = {}
    for branch in branches:
        rows = storage.read_table(branch_dir(run_dir, branch)).column("video_id").to_pylist()
        if errors is not None:
            rows += errors.loc[errors["branch"].eq(branch), "video_id"].astype(str).tolist()
        counts = pd.Series(rows).value_counts().reindex(ids, fill_value=0)
        off[branch] = int(counts.ne(1).sum()) + len(set(rows) - set(ids))
    return off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--videos", type=int, default=2737, help="clips in all (27% labelled, the rest candidates)"
    )
    parser.add_argument("--run-dir", help="where to write (default: a temp folder, removed at the end)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per clip")
    parser.add_argument("--size", default="96x64", help="clip width x height")
    parser.add_argument("--floors", action="store_true", help="also train the same folds in-process (no Ray)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()

    from ecmf_ray.cli import configure_logging
    from ecmf_ray.config import load_config
    from ecmf_ray.data.synth import synthesize
    from ecmf_ray.job_table import JOBS, resolve_job
    from ecmf_ray.runtime import init_ray

    configure_logging()  # as `ecmf`: train's and finalize's progress lines
    run_dir = os.path.abspath(args.run_dir or tempfile.mkdtemp(prefix="ecmf_scale_bench_"))
    data_root = os.path.join(run_dir, "synth")
    labelled = round(args.videos * MISSION_LABELLED / MISSION_VIDEOS)
    candidates = args.videos - labelled
    width, height = (int(v) for v in args.size.split("x"))
    started = time.perf_counter()
    if not os.path.exists(os.path.join(data_root, "truth.csv")):
        synthesize(
            data_root, labelled, unlabeled=candidates, seed=0, duration_s=args.duration, width=width, height=height,
            fps=10, workers=os.cpu_count() or 1, release_layout=True, candidates=candidates,
        )  # fmt: skip
    synth_s = time.perf_counter() - started

    cfg = load_config(
        ["local"],
        [
            f"run_dir={run_dir}",
            "dataset.format=mer2025",
            f"dataset.root={data_root}",
            f"finalize.truth={data_root}/truth.csv",
            "pipeline.tune=false",
            "enrich.enabled=false",
            *args.overrides,
        ],
    )
    memory = PeakMemory()
    seconds, peaks, files = {}, {}, {}
    init_ray(cfg)
    for step in ("prepare", "extract", "train", "finalize"):
        before = count_files(run_dir, data_root)
        with memory.stage():
            t0 = time.perf_counter()
            resolve_job(JOBS[step][0])(cfg)
            seconds[step] = round(time.perf_counter() - t0, 1)
        peaks[step] = round(memory.current / 2**20)
        files[step] = count_files(run_dir, data_root) - before
        print(
            f"scale_bench: {step} {seconds[step]} s, peak {peaks[step]} MB, {files[step]} files", flush=True
        )
    memory.stop()

    floors = {}
    if args.floors:
        from ecmf_ray.train.data import load_feature_set
        from ecmf_ray.train.loop import cross_validate, set_torch_threads

        set_torch_threads(1)
        data = load_feature_set(run_dir, list(cfg.model.branches), int(cfg.train.folds), int(cfg.seed))
        t0 = time.perf_counter()
        cross_validate(
            data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), int(cfg.seed)
        )
        floors["train"] = round(time.perf_counter() - t0, 1)

    off = accounted_once(run_dir, list(cfg.extract.branches))
    figures = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "videos": args.videos,
        "labelled": labelled,
        "candidates": candidates,
        "synth_seconds": round(synth_s, 1),
        "stage_seconds": seconds,
        "seconds_per_video": {k: round(v / args.videos, 4) for k, v in seconds.items()},
        "in_process_floor_seconds": floors,
        "ray_share": {k: round(1 - floors[k] / seconds[k], 2) for k in floors},
        "stage_peak_rss_mb": peaks,
        "peak_rss_mb": round(memory.overall / 2**20),
        "files_written": files,
        "not_accounted_once": off,
        "all_accounted_once": not any(off.values()),
    }
    if not args.run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
