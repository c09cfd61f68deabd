"""Fusion against single branches on features really extracted from a synthesised dataset."""

from pathlib import Path

import pytest
from fake_features import small_config
from test_train_cv import cv_waf

from ecmf_ray.data.prepare import run_prepare
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract.reference import run_sequential
from ecmf_ray.features import BRANCHES
from ecmf_ray.train.loop import set_torch_threads


@pytest.fixture(scope="module")
def extracted_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """90 clips with one modality's signal hidden in 40% of them, through prepare and extraction."""
    root = tmp_path_factory.mktemp("extracted")
    data, run_dir = str(root / "data"), str(root / "run")
    synthesize(data, 90, duration_s=2.0, width=160, height=120, hide_prob=0.4, seed=5)
    cfg = small_config(
        run_dir,
        f"dataset.root={data}",
        f"storage.model_cache={root / 'models'}",
        "extract.frames.num=4",
    )
    run_prepare(cfg)
    summary = run_sequential(cfg)
    assert summary["videos_ok"] == 90
    return run_dir


def test_fusion_beats_every_branch_on_extracted_features(extracted_run: str):
    set_torch_threads(1)
    fused = cv_waf(extracted_run)
    unimodal = {b: cv_waf(extracted_run, "model.name=unimodal", f"model.branches=[{b}]") for b in BRANCHES}
    print(f"ecmf {fused:.3f}; unimodal {unimodal}")
    assert fused > max(unimodal.values())
    assert fused > 0.5  # chance is about 1/6
    assert Path(extracted_run, "features", "errors.parquet").is_file()
