"""The Ray Data pipeline end to end: accounting, dimensions, resume, and equality with the sequential loop."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, MISSING, extract_config, make_run

from ecmf_ray import features, storage
from ecmf_ray.extract import store
from ecmf_ray.extract.pipeline import run_extract
from ecmf_ray.extract.reference import run_sequential

PREWRITTEN = 3  # videos the interrupted "first run" managed to write


@pytest.fixture(scope="module")
def resumed_run(ray_cluster, clips: pd.DataFrame, model_cache: str, tmp_path_factory: pytest.TempPathFactory):
    """An interrupted run (a few shards and a half-written temp file) finished by the Ray pipeline."""
    run_dir = make_run(str(tmp_path_factory.mktemp("ray-run")), clips)
    cfg = extract_config(run_dir, model_cache)
    run_sequential(cfg, limit=PREWRITTEN)
    storage.write_bytes(storage.join(store.shards_dir(run_dir), "x.parquet.tmp-dead"), b"PAR1 half")
    return cfg, run_extract(cfg)


@pytest.fixture(scope="module")
def sequential_run(clips: pd.DataFrame, model_cache: str, tmp_path_factory: pytest.TempPathFactory):
    run_dir = make_run(str(tmp_path_factory.mktemp("seq-run")), clips)
    return run_sequential(extract_config(run_dir, model_cache)) | {"run_dir": run_dir}


def _errors(run_dir: str) -> pd.DataFrame:
    return pd.read_parquet(features.errors_path(run_dir))


def test_resume_processes_only_the_rest(resumed_run, clips: pd.DataFrame) -> None:
    cfg, summary = resumed_run
    assert summary["resumed"] == PREWRITTEN
    assert summary["processed"] == len(clips) - PREWRITTEN
    assert not [n for n in storage.listdir(store.shards_dir(cfg.run_dir)) if ".tmp-" in n]


def test_every_video_accounted_once_per_branch(resumed_run, clips: pd.DataFrame) -> None:
    cfg, summary = resumed_run
    errors = _errors(cfg.run_dir)
    expected = set(clips["video_id"])
    for branch in features.BRANCHES:
        ids, _ = features.load_branch(cfg.run_dir, branch)
        failed = errors.loc[errors["branch"] == branch, "video_id"].tolist()
        assert len(ids) == len(set(ids)) and len(failed) == len(set(failed))
        assert not set(ids) & set(failed)
        assert set(ids) | set(failed) == expected
    good = {v for v in expected if v.startswith("sample_")}
    assert summary["videos_ok"] == GOOD and summary["videos_errored"] == len(expected) - GOOD
    assert good.isdisjoint(errors["video_id"])


def test_broken_inputs_report_their_stage(resumed_run) -> None:
    cfg, _ = resumed_run
    errors = _errors(cfg.run_dir).set_index(["video_id", "branch"])
    stage = errors["stage"].to_dict()
    for name in ("broken_empty", "broken_text", "broken_truncated"):
        assert stage[(name, "frame")] == stage[(name, "face")] == "decode_video"
        assert stage[(name, "audio")] == "decode_audio"
    for branch in ("frame", "face", "audio"):
        assert stage[(MISSING, branch)] == "open"
        assert errors.loc[(MISSING, branch), "error_type"] == "FileNotFoundError"
    # No audio stream: only the audio branch fails; the text branch never depends on the file.
    assert errors.loc[("broken_noaudio", "audio"), "error_type"] == "NoAudioStream"
    assert {b for v, b in errors.index if v == "broken_noaudio"} == {"audio"}
    assert not {b for _, b in errors.index} & {"text"}


def test_vectors_finite_with_configured_dims(resumed_run) -> None:
    cfg, _ = resumed_run
    dims = {
        "frame": 48,
        "face": 48,
        "audio": 64,
        "text": 64,
    }  # tiny CLIP projection, tiny HuBERT / BERT width
    for branch, dim in dims.items():
        table = pq.read_table(features.branch_dir(cfg.run_dir, branch))
        matrix = features.feature_matrix(table)
        assert matrix.shape[1] == dim and np.isfinite(matrix).all()
        assert set(table.column("dtype").to_pylist()) == {"fp32"}
    face = pq.read_table(features.branch_dir(cfg.run_dir, "face")).to_pandas()
    assert (face["n_frames"] == 4).all() and face["face_ratio"].between(0, 1).all()
    audio = pq.read_table(features.branch_dir(cfg.run_dir, "audio")).to_pandas()
    assert set(audio["layers"]) == {"2,3,4"} and set(audio["model"]) == {"tiny:hubert"}


def test_ray_matches_sequential(resumed_run, sequential_run) -> None:
    cfg, _ = resumed_run
    for branch in features.BRANCHES:
        ray_ids, ray_matrix = features.load_branch(cfg.run_dir, branch)
        seq_ids, seq_matrix = features.load_branch(sequential_run["run_dir"], branch)
        assert ray_ids == seq_ids
        np.testing.assert_allclose(ray_matrix, seq_matrix, rtol=1e-4, atol=1e-5, err_msg=branch)


def test_rerun_of_a_finished_run_changes_nothing(resumed_run) -> None:
    cfg, _ = resumed_run
    before = {b: features.load_branch(cfg.run_dir, b) for b in features.BRANCHES}
    summary = run_extract(cfg)
    assert summary["processed"] == 0
    for branch, (ids, matrix) in before.items():
        again_ids, again = features.load_branch(cfg.run_dir, branch)
        assert again_ids == ids and np.array_equal(again, matrix)
    assert os.listdir(features.branch_dir(cfg.run_dir, "frame")) == ["part-00000.parquet"]


def test_changed_config_is_refused(tmp_path, clips: pd.DataFrame, model_cache: str) -> None:
    run_dir = make_run(str(tmp_path), clips)
    store.check_spec(run_dir, store.feature_spec(extract_config(run_dir, model_cache)))
    storage.write_bytes(storage.join(store.shards_dir(run_dir), "a.parquet"), b"")
    changed = store.feature_spec(extract_config(run_dir, model_cache, "extract.hubert.layers=[1,2]"))
    with pytest.raises(ValueError, match="audio"):
        store.check_spec(run_dir, changed)
