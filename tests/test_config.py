from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ecmf_ray.cli import main
from ecmf_ray.config import ConfigError, configs_dir, load_config, save_config


def test_base_holds_the_paper_defaults():
    cfg = load_config()
    assert (cfg.model.hidden, cfg.model.dropout, cfg.model.heads, cfg.model.attention_layers) == (
        128,
        0.6,
        2,
        2,
    )
    assert (cfg.train.lr, cfg.train.grad_clip, cfg.train.max_epochs, cfg.train.folds) == (5e-5, 1.0, 200, 6)
    assert list(cfg.extract.hubert.layers) == [16, 17, 18, 19, 20, 21]
    assert cfg.models.clip == "openai/clip-vit-large-patch14"
    assert cfg.models.hubert == "TencentGameMate/chinese-hubert-large"
    assert cfg.models.roberta == "hfl/chinese-roberta-wwm-ext-large"
    assert list(cfg.model.branches) == ["frame", "face", "audio", "text"]


def test_later_files_and_overrides_win(tmp_path: Path):
    first = tmp_path / "a.yaml"
    first.write_text("seed: 1\ntrain:\n  folds: 6\n  max_epochs: 10\n")
    second = tmp_path / "b.yaml"
    second.write_text("seed: 2\n")
    cfg = load_config([str(first), str(second)], ["train.max_epochs=3", "model.branches=[audio,text]"])
    assert cfg.seed == 2
    assert cfg.train.folds == 6
    assert cfg.train.max_epochs == 3
    assert list(cfg.model.branches) == ["audio", "text"]


def test_packaged_profiles_resolve_by_name():
    assert load_config(["local"]).models.clip == "tiny:clip"
    cfg = load_config(["configs/cluster.yaml"], ["run_dir=s3://b/run", "dataset.root=s3://b/mer"])
    shipped = OmegaConf.load(configs_dir() / "cluster.yaml")
    assert (cfg.run_dir, cfg.extract.clip.num_gpus) == ("s3://b/run", shipped.extract.clip.num_gpus)


def test_cluster_profile_names_every_value_the_user_must_give():
    with pytest.raises(ConfigError) as err:
        load_config(["cluster"])
    message = str(err.value)
    assert "'dataset.root'" in message and "'run_dir'" in message and "cluster.yaml" in message
    assert "predict.output" not in message  # ${run_dir}/... is missing only because run_dir is
    with pytest.raises(ConfigError, match=r"'dataset\.root' \(required by .*cluster\.yaml\)") as err:
        load_config(["cluster"], ["run_dir=s3://b/run"])
    assert "run_dir" not in str(err.value)


def test_a_later_file_supplies_or_requires_a_value(tmp_path: Path):
    values = tmp_path / "mine.yaml"
    values.write_text("run_dir: s3://b/run\ndataset:\n  root: s3://b/mer\n")
    assert load_config(["cluster", str(values)]).dataset.root == "s3://b/mer"
    # A file's ??? wins over an earlier value, and the error names that file.
    required = tmp_path / "required.yaml"
    required.write_text("seed: ???\n")
    with pytest.raises(ConfigError, match=r"'seed' \(required by .*required\.yaml\)"):
        load_config([str(values), str(required)])


def test_cli_refuses_a_missing_value_before_the_job_runs(tmp_path: Path, capsys):
    assert main(["prepare", "--config", "cluster", f"run_dir={tmp_path}"]) == 2
    assert "'dataset.root'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # not even the resolved config was written


def test_demo_config_adds_to_the_local_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ecmf_ray.pipeline

    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  folds: 4\n")
    seen = {}
    monkeypatch.setattr(ecmf_ray.pipeline, "run_demo", lambda cfg, **kwargs: seen.update(cfg=cfg))
    assert main(["demo", "--config", str(extra), "seed=3"]) == 0
    cfg = seen["cfg"]
    assert cfg.models.clip == "tiny:clip" and cfg.ray.num_cpus == 2  # local.yaml still applies
    assert (cfg.train.folds, cfg.seed) == (4, 3)  # the user's file and override on top of it


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config([], ["train.epochz=3"])


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hiden: 64\n")
    with pytest.raises(ConfigError, match=r"model\.hiden.*bad\.yaml"):
        load_config([str(bad)])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["train.folds"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(["no/such/file.yaml"])


def test_resolved_config_is_saved(tmp_path: Path):
    cfg = load_config([], [f"run_dir={tmp_path}", "seed=7"])
    uri = save_config(cfg, "train")
    assert Path(uri) == tmp_path / "config" / "train.yaml"
    assert load_config([uri]).seed == 7


def test_cli_reports_unknown_key_without_traceback(capsys):
    assert main(["prepare", "no_such_key=1"]) == 2
    assert "unknown config key 'no_such_key'" in capsys.readouterr().err
