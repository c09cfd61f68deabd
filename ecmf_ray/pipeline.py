"""The end-to-end pipeline and the demo.

``ecmf pipeline`` runs prepare -> enrich -> extract -> train -> tune -> finalize in one Ray session, each
step reading what the one before wrote under ``run_dir``. enrich runs when ``enrich.enabled`` (it comes
before extract, whose text branch encodes the enriched text), tune when ``pipeline.tune``.

Each step owns the answer to "are my outputs done and current?": a ``current(cfg)`` function beside its
code returns None, or the reason to run it (outputs missing, unfinished, or made from other settings or
inputs). The pipeline asks in order, skips a current step, and otherwise prints the reason and runs the
step: it resumes what is unfinished, redoes what it can, and refuses, naming what changed and how to
proceed, where rerunning would mix stale outputs with new ones (features of another spec, an experiment
trained with another config). Every record includes what the step read, so a rerun upstream makes the
steps downstream of it stale too.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.config import save_config
from ecmf_ray.job_table import JOBS, resolve_job, run_job

logger = logging.getLogger(__name__)

STEPS: tuple[str, ...] = ("prepare", "enrich", "extract", "train", "tune", "finalize")

# step -> its ``current(cfg) -> None | reason`` check, beside the step's code.
CURRENT: dict[str, str] = {
    "prepare": "ecmf_ray.data.prepare:current",
    "enrich": "ecmf_ray.enrich.job:current",
    "extract": "ecmf_ray.extract.store:current",
    "train": "ecmf_ray.train.distributed:current",
    "tune": "ecmf_ray.train.tune:current",
    "finalize": "ecmf_ray.finalize.job:current",
}


def reason_to_run(cfg: DictConfig, step: str) -> str | None:
    """None when ``step``'s outputs under ``cfg.run_dir`` are done and current (the pipeline skips it);
    else why it must run."""
    return resolve_job(CURRENT[step])(cfg)


def best_yaml_path(run_dir: str) -> str:
    from ecmf_ray.train.tune import tune_dir

    return storage.join(tune_dir(run_dir), "best.yaml")


def with_best_trial(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the tuned ``model:``/``train:`` values of ``tune/best.yaml`` (the experiment name aside)."""
    best = OmegaConf.create(storage.read_text(best_yaml_path(cfg.run_dir)))
    best.train.pop("experiment", None)
    return OmegaConf.merge(cfg, best)


def enabled_steps(cfg: DictConfig) -> list[str]:
    skip = {"enrich": not cfg.enrich.enabled, "tune": not cfg.pipeline.tune}
    return [s for s in STEPS if not skip.get(s, False)]


def run_pipeline(cfg: DictConfig) -> dict:
    """Run every enabled step that is not done and current; returns each step's summary (or 'complete')."""
    cfg = cfg.copy()
    cfg.run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    unknown = set(cfg.pipeline.force) - set(STEPS)
    if unknown:
        raise ValueError(f"pipeline.force names unknown step(s) {sorted(unknown)}; steps: {', '.join(STEPS)}")
    results: dict[str, object] = {}
    for step in enabled_steps(cfg):
        if step == "finalize" and cfg.pipeline.tune:
            cfg = with_best_trial(cfg)
        if step == "finalize":
            from ecmf_ray.review.decisions import with_review_decisions

            cfg = with_review_decisions(cfg)  # ``ecmf review``'s final/reviewed.csv, when it exists
        reason = "named in pipeline.force" if step in cfg.pipeline.force else reason_to_run(cfg, step)
        if reason is None:
            print(f"pipeline: {step} is done and current; skipped")
            results[step] = "complete"
            continue
        print(f"pipeline: running {step}: {reason}")
        save_config(cfg, step)
        results[step] = resolve_job(JOBS[step][0])(cfg)
    return results


def run_demo(cfg: DictConfig, *, n: int, unlabeled: int, label_noise: float) -> dict:
    """Synthesise a small MER2025-layout dataset under ``run_dir`` and run the pipeline on it.

    The dataset's true labels (``truth.csv``) go to ``finalize.truth``, so the report scores the test
    predictions and the relabeling against them. Enrichment runs with two SIMULATED LLM sources
    (:mod:`ecmf_ray.data.synth_llm`), so the report shows the audio-visual source's votes. A rerun
    reuses the dataset and every finished step.
    """
    from ecmf_ray.data.synth import TRUTH_FILE, synthesize
    from ecmf_ray.data.synth_llm import use_simulated_llms

    storage.use_endpoint(cfg.storage.endpoint_url)
    data_root = storage.join(cfg.run_dir, "synth")
    truth = storage.join(data_root, TRUTH_FILE)
    if storage.exists(truth):
        print(f"reusing the synthetic dataset in {data_root} (delete it for a new one)")
    else:
        print(f"synthesising {n} labelled + {unlabeled} unlabelled videos into {data_root}")
        # Ray is not up yet, so the clips can be rendered on every core.
        workers = os.cpu_count() or 1
        synthesize(
            data_root, n, unlabeled=unlabeled, label_noise=label_noise, seed=int(cfg.seed), workers=workers
        )
    cfg.dataset.format = "mer2025"
    cfg.dataset.root = data_root
    cfg.finalize.truth = cfg.finalize.truth or truth
    # No network and no LLM here: the text and audio-visual LLM sources answer from simulated files.
    use_simulated_llms(cfg, data_root, int(cfg.seed))
    result = run_job("pipeline", cfg)
    final = result.get("finalize")
    report = final["report"] if isinstance(final, dict) else storage.join(cfg.run_dir, "final", "report.md")
    print(f"demo finished: the report is {report}")
    return result
