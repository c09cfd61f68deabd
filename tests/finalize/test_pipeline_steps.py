"""The pipeline's steps: which run, each step's "done and current" check, and what a changed setting does.

Runs are marked as prepared and extracted the way those steps record it, so most tests need no Ray.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_features import small_config, write_fake_run
from pipeline_records import mark_extracted, mark_prepared, write_shard_of

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.data.prepare import run_prepare
from ecmf_ray.data.synth import synthesize
from ecmf_ray.finalize.experiments import with_labels
from ecmf_ray.job_table import JOBS, resolve_job
from ecmf_ray.pipeline import enabled_steps, reason_to_run, run_pipeline, with_best_trial
from ecmf_ray.train.distributed import experiment_fingerprint
from tests.finished_run import copy_run, training_time_rows


def mark_trained(cfg) -> None:
    exp = Path(cfg.run_dir, "train", str(cfg.train.experiment))
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "experiment.json").write_text(json.dumps(experiment_fingerprint(cfg)))
    (exp / "metrics.json").write_text("{}")


@pytest.fixture
def fake_run(tmp_path):
    """A fake feature run that prepare, extract and train have finished."""
    cfg = small_config(str(tmp_path), "extract.branches=[audio,text]", "model.branches=[audio,text]")
    manifest = write_fake_run(cfg.run_dir, n_train=30, n_test=6)
    mark_prepared(cfg)
    mark_extracted(cfg, manifest)
    mark_trained(cfg)
    return cfg


@pytest.fixture
def mer_run(tmp_path):
    """A real MER2025-layout dataset that `prepare` reads, with extraction marked as finished."""
    root = str(tmp_path / "mer")
    synthesize(root, 6, duration_s=0.5, width=64, height=48)
    cfg = small_config(str(tmp_path / "run"), "dataset.format=mer2025", f"dataset.root={root}")
    run_prepare(cfg)
    mark_extracted(cfg, read_manifest(manifest_path(cfg.run_dir)))
    return cfg


def test_enabled_steps(tmp_path):
    cfg = small_config(str(tmp_path))
    assert enabled_steps(cfg) == ["prepare", "extract", "train", "finalize"]
    cfg.enrich.enabled, cfg.pipeline.tune = True, True
    assert enabled_steps(cfg) == ["prepare", "enrich", "extract", "train", "tune", "finalize"]


def test_done_and_current(fake_run):
    cfg = fake_run
    for step in ("prepare", "extract", "train"):
        assert reason_to_run(cfg, step) is None, step
    assert reason_to_run(cfg, "finalize") == "no final/submission.csv yet"

    # Features with a shard missing are unfinished, not current.
    write_shard_of(cfg, read_manifest(manifest_path(cfg.run_dir))["video_id"][:-1])
    assert reason_to_run(cfg, "extract") == "1 of 36 videos not extracted yet"

    cfg.pipeline.force = ["extrct"]
    with pytest.raises(ValueError, match="extrct"):
        run_pipeline(cfg)


def test_changed_hubert_layers_reextract_audio_alone_and_make_training_stale(fake_run):
    cfg = fake_run.copy()
    cfg.extract.hubert.layers = [1, 2]
    reason = reason_to_run(cfg, "extract")
    assert "changed: audio.layers" in reason and "audio extracted again, text kept" in reason
    # What the re-extraction leaves (tests/extract/test_pipeline.py runs it): the experiment trained on the
    # old audio features is then not current, and the pipeline refuses to reuse it.
    mark_extracted(cfg, read_manifest(manifest_path(cfg.run_dir)))
    assert reason_to_run(cfg, "extract") is None
    assert "changed: data" in reason_to_run(cfg, "train")
    with pytest.raises(ValueError, match=r"changed: data.*set another train.experiment"):
        run_pipeline(cfg)
    assert not Path(cfg.run_dir, "final").exists()


def test_enrich_turned_on_reruns_enrich_and_makes_the_text_features_stale(fake_run):
    cfg = fake_run.copy()
    ids = read_manifest(manifest_path(cfg.run_dir))["video_id"]
    answers = Path(cfg.run_dir, "llm.csv")
    pd.DataFrame({"name": ids, "label": "happy", "keywords": "笑", "description": "开心"}).to_csv(
        answers, index=False
    )
    cfg.enrich.enabled, cfg.enrich.backend, cfg.enrich.path = True, "precomputed", str(answers)
    assert reason_to_run(cfg, "enrich") == "no enrich/enrichment.parquet yet"
    resolve_job(JOBS["enrich"][0])(cfg)
    assert reason_to_run(cfg, "enrich") is None
    reason = reason_to_run(cfg, "extract")
    assert "changed: text.source" in reason and "text extracted again, audio kept" in reason
    cfg.enrich.use_keywords = False  # the enriched text changes too
    assert "text.use_keywords" in reason_to_run(cfg, "extract")


def test_changed_train_config_refuses_to_reuse_the_experiment(fake_run):
    cfg = fake_run.copy()
    cfg.train.lr = 0.5
    assert "changed: train.lr" in reason_to_run(cfg, "train")
    with pytest.raises(ValueError, match=r"changed: train.lr.*set another train.experiment, or delete"):
        run_pipeline(cfg)
    assert not Path(cfg.run_dir, "final").exists()
    # The same holds when the data under the experiment changed (here: the manifest's labels).
    cfg = fake_run.copy()
    manifest = read_manifest(manifest_path(cfg.run_dir))
    manifest.loc[0, "label"] = "sad" if manifest.loc[0, "label"] != "sad" else "happy"
    manifest.to_parquet(manifest_path(cfg.run_dir))
    assert "changed: data" in reason_to_run(cfg, "train")


def test_changed_dataset_settings_rerun_prepare_and_refuse_stale_text_features(mer_run, capsys):
    cfg = mer_run.copy()
    assert reason_to_run(cfg, "prepare") is None and reason_to_run(cfg, "extract") is None
    cfg.dataset.text_column = "english"
    assert "dataset.text_column" in reason_to_run(cfg, "prepare")
    with pytest.raises(ValueError, match=r"6 videos .* another video file or text .*delete .*features"):
        run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "pipeline: running prepare: manifest.parquet was made with other settings" in out
    assert "pipeline: running extract: 6 extracted videos have another video file or text now" in out
    assert reason_to_run(cfg, "prepare") is None  # the manifest now has the English text


def test_finalize_labels_equal_to_the_manifest_are_the_manifest(fake_run):
    cfg = fake_run
    manifest = read_manifest(manifest_path(cfg.run_dir))
    train = manifest[manifest["split"].eq("train")]
    same = pd.Series(train["label"].to_numpy(), index=train["video_id"].to_numpy())
    assert with_labels(cfg, same).train.labels is None
    other = same.copy()
    other.iloc[0] = "sad" if other.iloc[0] != "sad" else "happy"
    assert with_labels(cfg, other).train.labels.endswith(".parquet")


def test_best_trial_feeds_finalize(tmp_path):
    cfg = small_config(str(tmp_path))
    storage.write_text(
        storage.join(str(tmp_path), "tune", "best.yaml"),
        "# best\nmodel:\n  hidden: 64\ntrain:\n  experiment: best\n  lr: 0.01\n",
    )
    tuned = with_best_trial(cfg)
    assert (tuned.model.hidden, tuned.train.lr, tuned.train.experiment) == (64, 0.01, cfg.train.experiment)


def test_pipeline_trains_the_base_config_once(finished_run, tmp_path):
    """The session's finished pipeline run (tests/finished_run.py) trained the base config once, as
    train/ecmf: finalize's Baseline row (the base config on the manifest's labels) is that run, found."""
    trained = sorted(p.name for p in Path(finished_run.run_dir, "train").iterdir())
    assert trained[0] == "ecmf" and all(name.startswith("final-") for name in trained[1:])
    rows = training_time_rows(Path(finished_run.summary["report"]).read_text())
    assert rows["Baseline", "ablation row"][2] == "`ecmf`"
    assert sum(cells[2] == "`ecmf`" for cells in rows.values()) == 1

    # On a copy: a rerun finds every step current; changed finalize inputs rerun finalize, training nothing.
    run = copy_run(finished_run, tmp_path / "run")
    cfg = run.config()
    assert run_pipeline(cfg) == dict.fromkeys(["prepare", "extract", "train", "finalize"], "complete")
    cfg.finalize.ensemble, cfg.finalize.pseudo.enabled = [{"name": "ecmf"}], False
    assert "finalize.ensemble" in reason_to_run(cfg, "finalize")
    assert run_pipeline(cfg)["finalize"]["members"].keys() == {"ecmf"}
    assert sorted(p.name for p in Path(run.run_dir, "train").iterdir()) == trained
