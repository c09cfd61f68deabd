"""The ``tune.space`` config as a Ray Tune param space, and a sampled trial config back as config values.

Each searched key is written ``[kind, ...]`` in the config, so a whole entry is replaced by one
override (``tune.space.train.lr=[choice,1e-4,1e-3]``) and a null entry leaves the key at its
``model:``/``train:`` value:

=============================  ==============================================================
``[choice, v1, v2, ...]``      one of the values; lists (e.g. branch sets) are allowed
``[uniform, low, high]``       a float drawn uniformly
``[loguniform, low, high]``    a float drawn log-uniformly (learning rates, weight decay)
``[logfactor, low, high]``     the ``model:``/``train:`` value times a log-uniform factor in
                               ``[low, high]``: a range that moves with the starting config
                               (e.g. a learning rate that suits its ``train.max_epochs``)
=============================  ==============================================================

The search starts from the config it runs with: :func:`start_point` is that config as a point of
the space, evaluated as the first trial, and :func:`build_param_space` stretches any range (or adds
a choice) that would not hold it.

With ``tune.search=grid`` every choice becomes a grid axis and continuous kinds are refused.
Tune's param space is flat, keyed ``model.hidden``; list-valued choices travel as ``a+b+c``
labels (Optuna only takes scalar categories) and are decoded by :func:`decode_trial`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

KINDS = ("choice", "uniform", "loguniform", "logfactor")
SECTIONS = ("model", "train")
AUDIO_KEY = "audio_features"

# label -> value, per key whose choices are lists.
Labels = dict[str, dict[str, Any]]


def _label(value: Any) -> Any:
    return "+".join(map(str, value)) if isinstance(value, list | tuple) else value


def searched_keys(space: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]]) -> dict:
    """``{"model.hidden": [kind, ...], ...}`` for every non-null entry; unknown keys and kinds raise."""
    out: dict[str, list] = {}
    for section in SECTIONS:
        for key, spec in (space.get(section) or {}).items():
            if spec is None:
                continue
            name = f"{section}.{key}"
            if key not in base[section]:
                raise ValueError(f"tune.space.{name}: '{key}' is not a {section}: key")
            spec = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
            if not spec or spec[0] not in KINDS:
                raise ValueError(f"tune.space.{name} must be [kind, ...] with kind one of {', '.join(KINDS)}")
            if spec[0] == "choice" and len(spec) < 2:
                raise ValueError(f"tune.space.{name}: a choice needs at least one value")
            if spec[0] != "choice" and len(spec) != 3:
                raise ValueError(f"tune.space.{name}: {spec[0]} takes [{spec[0]}, low, high]")
            if spec[0] == "logfactor":
                value = base[section][key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"tune.space.{name}: logfactor needs a positive {name}, not {value!r}")
                spec = ["loguniform", float(spec[1]) * value, float(spec[2]) * value]
            out[name] = spec
    return out


def start_point(
    searched: Mapping[str, list], base: Mapping[str, Mapping[str, Any]], audio_features: Sequence[str] = ()
) -> dict[str, Any]:
    """The starting config's values (``base``: its model:/train: sections) of every searched key.

    Its audio features are the first of ``audio_features``, the folder a trial uses by default.
    :func:`param_point` turns it into a point of the flat param space (``points_to_evaluate``).
    """
    point = {}
    for name in searched:
        section, _, key = name.partition(".")
        point[name] = base[section][key]
    if len(audio_features) > 1:
        point[AUDIO_KEY] = audio_features[0]
    return point


def build_param_space(
    searched: Mapping[str, list],
    search: str,
    audio_features: Sequence[str] = (),
    start: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Labels]:
    """The flat Tune param space and the labels of list-valued choices.

    ``audio_features``: alternative audio feature folders (one per HuBERT layer combination),
    searched as one more choice when there are several. ``start``: a point (:func:`start_point`) the
    space must hold: a choice that lacks its value gets it, a range that misses it is stretched to it.
    """
    from ray import tune

    entries = dict(searched)
    if len(audio_features) > 1:
        entries[AUDIO_KEY] = ["choice", *audio_features]
    space: dict[str, Any] = {}
    labels: Labels = {}
    for name, (kind, *args) in entries.items():
        if start is not None and name in start:
            args = _holding(kind, args, start[name])
        if kind == "choice":
            values = [_label(v) for v in args]
            if any(isinstance(v, list | tuple) for v in args):
                labels[name] = {_label(v): list(v) for v in args}
            space[name] = tune.grid_search(values) if search == "grid" else tune.choice(values)
        elif search == "grid":
            raise ValueError(f"tune.search=grid cannot search {name} over a {kind} range; use [choice, ...]")
        else:
            low, high = float(args[0]), float(args[1])
            space[name] = tune.loguniform(low, high) if kind == "loguniform" else tune.uniform(low, high)
    return space, labels


def param_point(start: Mapping[str, Any]) -> dict[str, Any]:
    """Config values as a point of the flat param space (list choices by their labels)."""
    return {name: _label(value) for name, value in start.items()}


def _holding(kind: str, args: list, value: Any) -> list:
    """A ``[kind, *args]`` entry's arguments, widened to hold ``value``."""
    if kind == "choice":
        return args if _label(value) in [_label(v) for v in args] else [*args, value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"the starting value {value!r} cannot be the start of a {kind} range")
    return [min(float(args[0]), value), max(float(args[1]), value)]


def is_start(config: Mapping[str, Any], start: Mapping[str, Any]) -> bool:
    """Whether a trial's flat config is the starting point (floats to a relative 1e-9)."""
    for name, value in param_point(start).items():
        other = plain(config.get(name))
        if isinstance(value, float) and isinstance(other, int | float) and not isinstance(other, bool):
            if abs(other - value) > 1e-9 * abs(value):
                return False
        elif other != value:
            return False
    return True


def plain(value: Any) -> Any:
    """numpy scalars (what Tune's samplers return) as Python values, so they dump as plain YAML."""
    return value.item() if hasattr(value, "item") else value


def decode_trial(config: Mapping[str, Any], labels: Labels) -> dict[str, Any]:
    """A trial's flat config as ``{"model": {...}, "train": {...}, "audio_features": str | None}``."""
    out: dict[str, Any] = {section: {} for section in SECTIONS}
    out[AUDIO_KEY] = config.get(AUDIO_KEY)
    for name, value in config.items():
        section, _, key = name.partition(".")
        if section in SECTIONS:
            out[section][key] = labels.get(name, {}).get(value, plain(value))
    return out
