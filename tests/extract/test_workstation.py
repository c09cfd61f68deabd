"""The one-GPU workstation profile, end to end on a Ray cluster with one logical GPU.

``ecmf extract --config workstation`` runs as a user runs it, in its own process with its own local
Ray cluster (``ray.num_gpus=1``): only the models are the tiny ones and the frames fewer. Ray schedules
a logical GPU exactly like a real one, so the three encoder pools must share it by the fractional
``num_gpus`` the profile derives from their ``gpu_memory_gb`` (on a GPU named as a 24 GiB card, since
this machine has none for NVML to read); this machine has no CUDA, so each encoder actor must say once
that it runs on the CPU, naming the GPU Ray granted it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from ecmf_ray import features
from ecmf_ray.config import load_config
from ecmf_ray.data import manifest
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import resources

ENCODERS = ("clip", "hubert", "roberta")
# "(MapWorker(MapBatches(ClipEncoder)) pid=123) clip encoder: asked for num_gpus=0.5; Ray granted GPU ids [0] ..."
WARNING = re.compile(
    r"pid=(?P<pid>\d+)[^)]*\)[^\n]*? (?P<encoder>\w+) encoder: asked for num_gpus=(?P<asked>[\d.]+); "
    r"Ray granted GPU ids \[(?P<ids>[^\]]*)\] \(resources (?P<resources>\{[^}]*\})\), but CUDA is not available"
)


@pytest.fixture(scope="module")
def workstation_run(tmp_path_factory: pytest.TempPathFactory, model_cache: str):
    root = str(tmp_path_factory.mktemp("ws-data"))
    synthesize(root, 3, duration_s=2.0, width=160, height=120, hide_prob=0.0)
    names = pd.read_csv(os.path.join(root, "subtitle_chieng.csv"))
    clips = pd.DataFrame(
        {
            "video_id": names["name"],
            "video_path": [os.path.join(root, "video", f"{n}.mp4") for n in names["name"]],
            "text": names["chinese"],
        }
    ).assign(label=None, split="unlabeled", valence=None)
    run_dir = str(tmp_path_factory.mktemp("ws-run"))
    manifest.write_manifest(clips, manifest.manifest_path(run_dir))
    overrides = [
        f"run_dir={run_dir}",
        f"storage.model_cache={model_cache}",
        "ray.num_gpus=1",
        "extract.node_gpu_memory_gb=24",
        "ray.num_cpus=2",
        "models.clip=tiny:clip",
        "models.hubert=tiny:hubert",
        "models.roberta=tiny:roberta",
        "extract.hubert.layers=[2,3,4]",  # tiny:hubert has 4 layers
        "extract.frames.num=2",
    ]
    ecmf = os.path.join(os.path.dirname(sys.executable), "ecmf")
    env = dict(os.environ, RAY_DEDUP_LOGS="0", HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [ecmf, "extract", "--config", "workstation", *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir, clips, proc.stdout + proc.stderr, overrides


def test_workstation_extracts_every_clip(workstation_run) -> None:
    run_dir, clips, _, _ = workstation_run
    for branch in features.BRANCHES:
        ids, vectors = features.load_branch(run_dir, branch)
        assert sorted(ids) == sorted(clips["video_id"])
        assert vectors.shape[0] == len(clips)
    assert (
        not os.path.exists(features.errors_path(run_dir))
        or pd.read_parquet(features.errors_path(run_dir)).empty
    )


def test_each_encoder_actor_gets_its_gpu_share_and_warns_once(workstation_run) -> None:
    _, _, log, overrides = workstation_run
    cfg = resources.with_gpu_shares(load_config(["workstation"], overrides), joined=False)
    found = [m.groupdict() for m in WARNING.finditer(log)]
    per_actor = {(f["encoder"], f["pid"]) for f in found}
    assert len(per_actor) == len(found)  # exactly one warning per actor
    assert sorted(f["encoder"] for f in found) == sorted(ENCODERS)  # one actor per pool (pool_max 1)
    for f in found:
        share = float(cfg.extract[f["encoder"]].num_gpus)
        assert float(f["asked"]) == share
        assert f["ids"].strip() in ("0", "'0'")  # the one logical GPU
        assert ast.literal_eval(f["resources"])["GPU"] == pytest.approx(share)
