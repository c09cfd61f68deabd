"""Pseudo-labelling and one self-training round (beyond the paper; ``finalize.pseudo``).

Test and unlabelled videos on which every ensemble member predicts the same class, with a mean
probability of at least ``finalize.pseudo.threshold``, join training with that class (in every fold's
training rows, never a validation fold, so cv_waf stays comparable). Every member is then trained
again and the ensemble votes anew; the report compares the two rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig

from ecmf_ray.finalize.ensemble import EnsembleResult, Variant, vote
from ecmf_ray.finalize.experiments import Experiment, VariantRequest, run_variants
from ecmf_ray.finalize.report import markdown_table, pct, truth_waf
from ecmf_ray.train.outputs import PROB_COLUMNS

if TYPE_CHECKING:
    from ecmf_ray.train.distributed import SharedFeatures


def select_pseudo_labels(test: pd.DataFrame, threshold: float) -> pd.Series:
    """video_id -> class where the members agree unanimously with mean probability >= ``threshold``."""
    confident = test["agreement"].eq(1.0) & (test[PROB_COLUMNS].max(axis=1) >= threshold)
    chosen = test[confident]
    return pd.Series(chosen["predicted"].to_numpy(), index=chosen["video_id"].astype(str), name="label")


def self_train(
    cfg: DictConfig,
    members: Sequence[tuple[Variant, Experiment]],
    ensemble: EnsembleResult,
    labels: dict[str, pd.Series | None],
    truth: pd.Series | None,
    shared: SharedFeatures | None = None,
) -> tuple[EnsembleResult, list[tuple[Variant, Experiment]], list[str]]:
    """Retrain every member with the ensemble's confident pseudo-labels (one wave); the new vote, members,
    report lines."""
    pseudo = select_pseudo_labels(ensemble.test, float(cfg.finalize.pseudo.threshold))
    requests = [
        VariantRequest(v.name, v.overrides, pd.concat([labels[v.labels], pseudo])) for v, _ in members
    ]
    retrained = list(zip([v for v, _ in members], run_variants(cfg, requests, shared, "pseudo"), strict=True))
    after = vote([e for _, e in retrained])
    rows = [
        ("ensemble", pct(ensemble.metrics["oof_waf"]), pct(truth_waf(ensemble.test, truth))),
        ("after self-training", pct(after.metrics["oof_waf"]), pct(truth_waf(after.test, truth))),
    ]
    # Held-out truth decides when there is one; otherwise only the OOF score (on the training labels) can.
    by_truth = truth_waf(ensemble.test, truth) is not None
    helps = (
        truth_waf(after.test, truth) > truth_waf(ensemble.test, truth)
        if by_truth
        else after.metrics["oof_waf"] > ensemble.metrics["oof_waf"]
    )
    accuracy = truth_waf(pd.DataFrame({"video_id": pseudo.index, "predicted": pseudo.to_numpy()}), truth)
    lines = [
        "## Self-training with pseudo-labels",
        "",
        f"{len(pseudo)} of {len(ensemble.test)} test/unlabelled videos pseudo-labelled (unanimous members, "
        f"mean probability >= {cfg.finalize.pseudo.threshold})"
        + (f"; their WAF against the true labels: {pct(accuracy)}." if accuracy is not None else "."),
        "",
        markdown_table(rows, ["round", "OOF WAF", "test WAF"]),
        "",
        f"Self-training {'helps' if helps else 'does not help'} here "
        f"(by {'test WAF against the true labels' if by_truth else 'OOF WAF'}); "
        "the submission comes from the self-trained ensemble.",
        "",
    ]
    return after, retrained, lines
