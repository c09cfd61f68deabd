"""`ecmf pipeline` with pipeline.tune=true on Ray: train, a small search, then finalize on the best trial."""

import json
from pathlib import Path

import yaml
from fake_features import small_config, write_fake_run
from pipeline_records import mark_extracted, mark_prepared

from ecmf_ray.pipeline import run_pipeline


def test_finalize_trains_the_tuned_config(ray_cluster, tmp_path):
    run_dir = str(tmp_path)
    manifest = write_fake_run(run_dir, n_train=60, n_test=8)
    cfg = small_config(
        run_dir,
        "extract.branches=[audio,text]",
        "model.branches=[audio,text]",
        "train.folds=2",
        "train.max_epochs=4",
        "pipeline.tune=true",
        "tune.num_samples=2",
        "tune.scheduler=fifo",
        "tune.space.model.hidden=[choice,8,16]",
        "tune.space.model.branches=null",
        "tune.space.model.heads=[choice,1,2]",
        "tune.space.train.batch_size=null",
        "finalize.relabel.enabled=false",
        "finalize.ensemble=[{name: ecmf}]",
        "finalize.ablation=[]",
    )
    # Record prepare and extract as done, so the pipeline starts at train.
    mark_prepared(cfg)
    mark_extracted(cfg, manifest)
    steps = run_pipeline(cfg)
    assert [s for s, r in steps.items() if r == "complete"] == ["prepare", "extract"]
    assert list(steps) == ["prepare", "extract", "train", "tune", "finalize"]

    best = yaml.safe_load(Path(run_dir, "tune", "best.yaml").read_text())
    # The search also evaluates the starting config (its first trial), so the best may be the start.
    assert best["model"]["hidden"] in (8, 16, cfg.model.hidden) and best["model"]["heads"] in (
        1,
        2,
        cfg.model.heads,
    )
    # The member is a new final-* experiment, or train/ecmf reused when the start config won.
    (member,) = json.loads(Path(run_dir, "final", "ensemble.json").read_text())["members"]
    trained = json.loads(Path(member["experiment_dir"], "experiment.json").read_text())
    for section in ("model", "train"):
        for key, value in best[section].items():
            if key != "experiment":
                assert trained[section][key] == value, f"{section}.{key}"
    assert Path(run_dir, "final", "submission.csv").exists()
