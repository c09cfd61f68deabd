"""The ``finalize`` job: relabel -> ensemble members on the refined labels -> vote -> submission and report.

Writes ``${run_dir}/final/``: relabel.parquet, review_queue.csv, relabel_flows.csv (relabeling),
ensemble_oof.parquet and ensemble_test.parquet (the vote), report.md with its PNG plots, ensemble.json
(the members' experiment folders, which ``ecmf predict`` loads, and the inputs finalize ran on), and last
submission.csv, whose presence marks the job as complete. Every training run it needs is a ``train``
experiment found again on a rerun (:mod:`ecmf_ray.finalize.experiments`), so an interrupted finalize
continues with the runs it had not finished.
"""

from __future__ import annotations

import logging
import os

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich.job import record_path as enrich_record_path
from ecmf_ray.finalize.ensemble import Variant, ablation_variants, ensemble_variants, submission, vote
from ecmf_ray.finalize.experiments import (
    Experiment,
    VariantRequest,
    run_variants,
    unnamed_fingerprint,
    with_overrides,
)
from ecmf_ray.finalize.pseudo import self_train
from ecmf_ray.finalize.relabel import check_relabel_config, flows, run_relabel, weak_classifiers
from ecmf_ray.finalize.report import ReportInputs, TimedRun, write_report
from ecmf_ray.finalize.scores import reference_labels
from ecmf_ray.freshness import read_record, stale_reason, write_record
from ecmf_ray.train.distributed import SharedFeatures

logger = logging.getLogger(__name__)


def final_dir(run_dir: str) -> str:
    return storage.join(run_dir, "final")


def submission_path(run_dir: str) -> str:
    return storage.join(final_dir(run_dir), "submission.csv")


def ensemble_path(run_dir: str) -> str:
    return storage.join(final_dir(run_dir), "ensemble.json")


def finalize_inputs(cfg: DictConfig) -> dict:
    """What finalize's outputs depend on: the base experiment (seed, model, train, data), the finalize
    settings, and the enrichment (its LLM labels vote)."""
    return {
        "base": unnamed_fingerprint(cfg),
        "finalize": OmegaConf.to_container(cfg.finalize, resolve=True),
        "enrichment": read_record(enrich_record_path(str(cfg.run_dir))),
    }


def current(cfg: DictConfig) -> str | None:
    """None when ``final/submission.csv`` exists and finalize ran on the current inputs; else why not."""
    if not storage.exists(submission_path(str(cfg.run_dir))):
        return "no final/submission.csv yet"
    record = read_record(ensemble_path(str(cfg.run_dir)))
    return stale_reason("final/", record and record.get("inputs"), finalize_inputs(cfg))


def write_ensemble_record(cfg: DictConfig, members: list[tuple[Variant, Experiment]]) -> None:
    """``final/ensemble.json``: each member's name and experiment folder (what ``ecmf predict`` runs)."""
    record = {
        "members": [{"name": v.name, "experiment_dir": e.exp_dir, "cv_waf": e.cv_waf} for v, e in members],
        "inputs": finalize_inputs(cfg),
    }
    write_record(ensemble_path(str(cfg.run_dir)), record)


def read_truth(uri: str) -> pd.Series:
    """video_id -> true class from a CSV with ``name, true_label`` (``ecmf synth``'s truth.csv)."""
    with storage.open_file(uri, "rb") as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    missing = {"name", "true_label"} - set(df.columns)
    if missing:
        raise ValueError(f"{uri}: missing column(s) {', '.join(sorted(missing))}")
    return pd.Series(df["true_label"].to_numpy(), index=df["name"].to_numpy(), name="truth")


def plan_variants(cfg: DictConfig) -> tuple[list[Variant], list[Variant]]:
    """The ensemble members and ablation rows, each config checked before anything trains."""
    from ecmf_ray.models import validate_model_config

    check_relabel_config(cfg.finalize.relabel)
    members = ensemble_variants(cfg.finalize.ensemble, "refined")
    rows = ablation_variants(cfg.finalize.ablation, "refined")
    for v in [*members, *rows]:
        validate_model_config(with_overrides(cfg, v.overrides, f"finalize variant '{v.name}'").model)
    return members, rows


def needed_branches(cfg: DictConfig, variants: list[Variant]) -> list[str]:
    """Every feature branch finalize's experiments read: the weak classifiers' and the variants'."""
    from ecmf_ray.models import validate_model_config

    branches = {
        b for v in variants for b in validate_model_config(with_overrides(cfg, v.overrides, v.name).model)
    }
    if cfg.finalize.relabel.enabled:
        branches.update(b for r in weak_classifiers(cfg.finalize.relabel) for b in
                        validate_model_config(with_overrides(cfg, r.overrides, r.name).model))  # fmt: skip
    return sorted(branches)


def run_finalize(cfg: DictConfig) -> dict:
    """Relabel, train the ensemble and ablation variants, vote, and write the submission and the report.

    Needs a Ray session (:func:`ecmf_ray.runtime.init_ray`).
    """
    run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    cfg = with_overrides(cfg, [f"run_dir={run_dir}"], "finalize")
    fc = cfg.finalize
    out_dir = final_dir(run_dir)
    truth = read_truth(str(fc.truth)) if fc.truth else None

    member_variants, ablation_rows = plan_variants(cfg)
    shared = SharedFeatures(run_dir, needed_branches(cfg, [*member_variants, *ablation_rows]),
                            int(cfg.train.folds), int(cfg.seed))  # fmt: skip

    relabel, weak = run_relabel(cfg, out_dir, shared) if fc.relabel.enabled else (None, [])
    # Without relabeling, "refined" rows and members learn the original labels (None: the manifest's).
    refined = relabel.set_index("video_id")["refined"] if relabel is not None else None
    labels = {"original": None, "refined": refined}

    # The second wave: members and ablation rows, all at once.
    variants = [*member_variants, *ablation_rows]
    trained = run_variants(cfg, [VariantRequest(v.name, v.overrides, labels[v.labels]) for v in variants],
                           shared, "members")  # fmt: skip
    members = list(zip(member_variants, trained[: len(member_variants)], strict=True))
    ablation = list(zip(ablation_rows, trained[len(member_variants) :], strict=True))
    ensemble = vote([e for _, e in members])
    sections: list[str] = []
    timed = [TimedRun("weak classifier", "weak", e) for e in weak]
    timed += [TimedRun("member", "members", e) for _, e in members]
    timed += [TimedRun("ablation row", "members", e) for _, e in ablation]
    if fc.pseudo.enabled:
        ensemble, members, sections = self_train(cfg, members, ensemble, labels, truth, shared)
        timed += [TimedRun("self-trained member", "pseudo", e) for _, e in members]

    storage.write_table(ensemble.oof, storage.join(out_dir, "ensemble_oof.parquet"))
    storage.write_table(ensemble.test, storage.join(out_dir, "ensemble_test.parquet"))
    manifest = read_manifest(manifest_path(run_dir))
    sub = submission(ensemble.test, manifest.loc[manifest["split"].eq("test"), "video_id"].tolist())
    report = write_report(
        out_dir,
        ReportInputs(
            run_dir=run_dir,
            members=members,
            ensemble=ensemble,
            ablation=ablation,
            submission_rows=len(sub),
            relabel=relabel,
            flows=flows(relabel) if relabel is not None else None,
            truth=truth,
            reference=reference_labels(run_dir, int(cfg.train.folds), int(cfg.seed)),
            sections=sections,
            timed=timed,
        ),
    )
    write_ensemble_record(cfg, members)
    storage.write_csv(sub, submission_path(run_dir))  # last: marks finalize complete
    summary = {
        "submission": submission_path(run_dir),
        "report": report,
        "test_videos": len(sub),
        "ensemble_cv_waf": ensemble.metrics["cv_waf"]["mean"],
        "ensemble_oof_waf": ensemble.metrics["oof_waf"],
        "members_mean_oof_waf": ensemble.metrics["members_mean_oof_waf"],
        "members": {v.name: e.cv_waf for v, e in members},
        "relabel_changed": int(relabel["changed"].sum()) if relabel is not None else 0,
    }
    logger.info("finalize: ensemble OOF WAF %.4f; report %s", summary["ensemble_oof_waf"], report)
    return summary
