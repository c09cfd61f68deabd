"""tune.space as a Ray Tune param space, and sampled trial configs back as config values."""

import pytest
from omegaconf import OmegaConf
from ray import tune

from ecmf_ray.config import load_config
from ecmf_ray.train.search_space import (
    build_param_space,
    decode_trial,
    is_start,
    param_point,
    searched_keys,
    start_point,
)

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


def test_logfactor_ranges_move_with_the_starting_value():
    keys = searched("train.lr=1e-3")
    assert keys["train.lr"] == [
        "loguniform",
        pytest.approx(3e-4),
        pytest.approx(1e-2),
    ]  # base.yaml: [0.3, 10]
    assert searched("train.lr=5e-5")["train.lr"][1:] == [pytest.approx(1.5e-5), pytest.approx(5e-4)]
    with pytest.raises(ValueError, match="logfactor needs a positive model.hidden"):
        searched("tune.space.model.hidden=[logfactor,0.5,2]", "model.hidden=0")


def test_the_start_is_a_point_of_the_space():
    cfg = load_config(
        [], ["model.hidden=96", "model.dropout=0.9", "tune.space.model.dropout=[uniform,0.2,0.7]"]
    )
    base = {s: OmegaConf.to_container(cfg[s]) for s in ("model", "train")}
    keys = searched_keys(OmegaConf.to_container(cfg.tune.space), base)
    start = start_point(keys, base, ["a/audio", "b/audio"])
    assert start["model.hidden"] == 96 and start["model.branches"] == ["frame", "face", "audio", "text"]
    assert start["audio_features"] == "a/audio"  # the folder a trial uses by default
    assert param_point(start)["model.branches"] == "frame+face+audio+text"
    space, labels = build_param_space(keys, "random", ["a/audio", "b/audio"], start)
    assert space["model.hidden"].categories == [64, 128, 256, 96]  # a choice gets the start's value
    assert (space["model.dropout"].lower, space["model.dropout"].upper) == (0.2, 0.9)  # a range is stretched
    assert decode_trial(param_point(start), labels)["model"]["branches"] == start["model.branches"]
    assert is_start(param_point(start), start)
    assert not is_start({**param_point(start), "model.hidden": 64}, start)
    assert is_start({**param_point(start), "train.lr": start["train.lr"] * (1 + 1e-12)}, start)
    grid_keys = {k: v for k, v in keys.items() if v[0] == "choice"}
    grid, _ = build_param_space(grid_keys, "grid", (), start)
    assert grid["model.hidden"] == {"grid_search": [64, 128, 256, 96]}  # the start is one grid point
