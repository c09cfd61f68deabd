"""Configuration: the packaged base defaults, then --config files, then key=value overrides.

Every key must exist in ``base.yaml``; anything else is a typo and fails loudly with its name. A value
a profile cannot know (``run_dir: ???`` in cluster.yaml) must be given by a later file or override, or
loading fails naming every such key and the file that required it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ecmf_ray import storage


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def configs_dir() -> Path:
    """The folder holding base.yaml, local.yaml and cluster.yaml.

    Wheels ship it inside the package (``ecmf_ray/configs``); a source checkout has it at the top.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "base.yaml").is_file():
            return candidate
    raise ConfigError(f"base.yaml not found next to {here}; is the package installed correctly?")


def resolve_config_path(name: str) -> Path:
    """A config given on the command line: a path, or the name of a packaged profile (``local``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    packaged = configs_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    # configs/local.yaml from another working directory still means the packaged file.
    packaged = configs_dir() / path.name
    if path.parent.name == "configs" and packaged.is_file():
        return packaged
    raise ConfigError(f"config file not found: {name}")


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(f"unknown config key '{key}' in {source}") from None


def _interpolates(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    return OmegaConf.is_interpolation(OmegaConf.select(cfg, parent) if parent else cfg, leaf)


def _check_required(cfg: DictConfig, required_by: dict[str, str]) -> None:
    """Raise naming every ``???`` value no later file or override supplied, and the file that left it."""
    # A value that only interpolates a missing one (predict.output: ${run_dir}/...) is not itself required.
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not _interpolates(cfg, k))
    if missing:
        listed = ", ".join(f"'{key}' (required by {required_by.get(key, 'the config')})" for key in missing)
        raise ConfigError(f"required config values not given: {listed}; pass them as key=value overrides")


def load_config(files: Sequence[str] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Base defaults, then each file in order, then ``key=value`` overrides.

    Unknown keys raise, and so do required (``???``) values still missing at the end.
    """
    base = configs_dir() / "base.yaml"
    cfg = OmegaConf.load(base)
    required_by = dict.fromkeys(OmegaConf.missing_keys(cfg), str(base))
    OmegaConf.set_struct(cfg, True)
    for name in files:
        path = resolve_config_path(name)
        try:
            layer = OmegaConf.load(path)
        except Exception as err:  # yaml errors carry line numbers; keep them
            raise ConfigError(f"cannot parse config {path}: {err}") from None
        if layer is None:
            continue
        cfg = _merge(cfg, layer, str(path))
        # merge() keeps the old value where the layer says ???; a profile's ??? must win.
        for key in OmegaConf.missing_keys(layer):
            OmegaConf.update(cfg, key, "???", merge=False)
            required_by[key] = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    _check_required(cfg, required_by)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, job: str) -> str:
    """Write the resolved config to ``${run_dir}/config/<job>.yaml`` and return its URI."""
    uri = storage.join(cfg.run_dir, "config", f"{job}.yaml")
    storage.write_text(uri, to_yaml(cfg))
    return uri
