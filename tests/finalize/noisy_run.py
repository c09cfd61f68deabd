"""A fake feature run (tests/train/fake_features.py) with label noise injected and the truth kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fake_features import write_fake_run

from ecmf_ray.data.manifest import manifest_path, write_manifest
from ecmf_ray.labels import EMOTIONS


def write_noisy_run(run_dir: str, *, noise: float = 0.2, seed: int = 0, **fake: object) -> pd.Series:
    """Flip ``noise`` of the training labels to another class; returns video_id -> true label, every video."""
    manifest = write_fake_run(run_dir, seed=seed, **fake)
    # write_fake_run draws every video's class first from default_rng(seed); test labels it leaves out.
    classes = np.arange(len(manifest)) % len(EMOTIONS)
    np.random.default_rng(seed).shuffle(classes)
    truth = pd.Series(np.array(EMOTIONS)[classes], index=manifest["video_id"].to_numpy(), name="truth")
    train = manifest["split"].eq("train")
    assert (truth[train.to_numpy()].to_numpy() == manifest.loc[train, "label"].to_numpy()).all()

    rng = np.random.default_rng(seed + 1)
    for i in rng.choice(np.flatnonzero(train), size=int(noise * train.sum()), replace=False):
        manifest.loc[i, "label"] = rng.choice([e for e in EMOTIONS if e != manifest.loc[i, "label"]])
    write_manifest(manifest, manifest_path(run_dir))
    return truth
