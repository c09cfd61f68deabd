"""tune.space as a Ray Tune param space, and sampled trial configs back as config values."""

import pytest
from omegaconf import OmegaConf
from ray import tune

from ecmf_ray.config import load_config
from ecmf_ray.train.search_space import build_param_space, decode_trial, searched_keys

NO_RANGES = ("tune.space.train.lr=null", "tune.space.train.weight_decay=null")
# What the default tune.space searches: the keys the issue lists.
DEFAULT_SEARCHED = (
    "model.hidden",
    "model.dropout",
    "model.attention_layers",
    "model.heads",
    "model.branches",
    "train.lr",
    "train.weight_decay",
    "train.batch_size",
)


def searched(*overrides: str) -> dict:
    cfg = load_config([], list(overrides))
    base = {s: OmegaConf.to_container(cfg[s]) for s in ("model", "train")}
    return searched_keys(OmegaConf.to_container(cfg.tune.space), base)


def test_default_space_covers_the_issue_keys():
    assert set(searched()) == set(DEFAULT_SEARCHED)


def test_null_fixes_a_key_and_an_entry_is_replaced_whole():
    keys = searched("tune.space.model.heads=null", "tune.space.train.lr=[choice,1e-4,1e-3]")
    assert "model.heads" not in keys and keys["train.lr"] == ["choice", 1e-4, 1e-3]


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.space.train.lr=[normal,0,1]", "kind one of"),
        ("tune.space.train.lr=[uniform,1]", r"\[uniform, low, high\]"),
        ("tune.space.model.hidden=[choice]", "at least one value"),
    ],
)
def test_bad_entries_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        searched(override)


def test_random_space_and_decoding_of_list_choices():
    space, labels = build_param_space(searched(), "random", ["features/audio", "hubert_l20_23/audio"])
    assert isinstance(space["train.lr"], tune.search.sample.Float)
    assert space["model.branches"].categories[0] == "frame+face+audio+text"
    assert space["audio_features"].categories == ["features/audio", "hubert_l20_23/audio"]
    trial = {"model.branches": "face+audio+text", "model.hidden": 64, "train.lr": 1e-4, "audio_features": "x"}
    assert decode_trial(trial, labels) == {
        "model": {"branches": ["face", "audio", "text"], "hidden": 64},
        "train": {"lr": 1e-4},
        "audio_features": "x",
    }


def test_grid_makes_every_choice_an_axis_and_refuses_ranges():
    space, _ = build_param_space(searched("tune.space.model.dropout=null", *NO_RANGES), "grid")
    assert space["model.hidden"] == {"grid_search": [64, 128, 256]}
    with pytest.raises(ValueError, match="grid cannot search model.dropout"):
        build_param_space(searched(*NO_RANGES), "grid")
