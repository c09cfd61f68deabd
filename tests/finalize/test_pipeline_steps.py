"""The pipeline's step selection and completion checks (no Ray: every step here is already complete)."""

import pandas as pd
import pytest
from fake_features import small_config, write_fake_run

from ecmf_ray import storage
from ecmf_ray.extract.store import shards_dir
from ecmf_ray.pipeline import enabled_steps, is_complete, run_pipeline, with_best_trial


def test_enabled_steps(tmp_path):
    cfg = small_config(str(tmp_path))
    assert enabled_steps(cfg) == ["prepare", "extract", "train", "finalize"]
    cfg.enrich.enabled, cfg.pipeline.tune = True, True
    assert enabled_steps(cfg) == ["prepare", "enrich", "extract", "train", "tune", "finalize"]


def test_completion_and_skipping(tmp_path):
    run_dir = str(tmp_path)
    cfg = small_config(run_dir, "extract.branches=[audio,text]")
    manifest = write_fake_run(run_dir, n_train=30, n_test=6)
    assert is_complete(cfg, "prepare")
    assert not is_complete(cfg, "extract")  # features, but no record that every video went through
    shard = pd.DataFrame({"video_id": manifest["video_id"][:-1]})
    storage.write_table(shard, storage.join(shards_dir(run_dir), "a.parquet"))
    assert not is_complete(cfg, "extract")
    storage.write_table(manifest[["video_id"]][-1:], storage.join(shards_dir(run_dir), "b.parquet"))
    assert is_complete(cfg, "extract")

    assert not is_complete(cfg, "train")
    storage.write_text(storage.join(run_dir, "train", str(cfg.train.experiment), "metrics.json"), "{}")
    assert is_complete(cfg, "train")
    assert not is_complete(cfg, "finalize")
    storage.write_text(storage.join(run_dir, "final", "submission.csv"), "name,discrete\n")
    assert run_pipeline(cfg) == dict.fromkeys(["prepare", "extract", "train", "finalize"], "complete")

    cfg.pipeline.force = ["extrct"]
    with pytest.raises(ValueError, match="extrct"):
        run_pipeline(cfg)


def test_best_trial_feeds_finalize(tmp_path):
    cfg = small_config(str(tmp_path))
    storage.write_text(
        storage.join(str(tmp_path), "tune", "best.yaml"),
        "# best\nmodel:\n  hidden: 64\ntrain:\n  experiment: best\n  lr: 0.01\n",
    )
    tuned = with_best_trial(cfg)
    assert (tuned.model.hidden, tuned.train.lr, tuned.train.experiment) == (64, 0.01, cfg.train.experiment)
