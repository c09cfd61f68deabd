"""The end-to-end pipeline and the demo.

``ecmf pipeline`` runs prepare -> enrich -> extract -> train -> tune -> finalize in one Ray session, each
step reading what the one before wrote under ``run_dir``. enrich runs when ``enrich.enabled`` (it comes
before extract, whose text branch encodes the enriched text), tune when ``pipeline.tune``. A step whose
outputs are complete is skipped (unless named in ``pipeline.force``), so rerunning after a failure
continues where it stopped; steps that stopped half-way resume on their own (extract, train, finalize).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.config import save_config

logger = logging.getLogger(__name__)

STEPS: tuple[str, ...] = ("prepare", "enrich", "extract", "train", "tune", "finalize")


def _extract_complete(cfg: DictConfig) -> bool:
    from ecmf_ray.data.manifest import manifest_path, read_manifest
    from ecmf_ray.extract.store import completed_ids
    from ecmf_ray.features import branch_dir

    # Consolidated branch folders exist only once every video was written (or failed, with an error row).
    if not all(storage.exists(branch_dir(cfg.run_dir, b)) for b in cfg.extract.branches):
        return False
    ids = set(read_manifest(manifest_path(cfg.run_dir))["video_id"])
    return ids <= completed_ids(cfg.run_dir)


def _complete_checks(cfg: DictConfig) -> dict[str, Callable[[], bool]]:
    """Per step: a check of whether its outputs are complete."""
    from ecmf_ray.data.manifest import manifest_path
    from ecmf_ray.enrich import enrichment_path
    from ecmf_ray.finalize.job import submission_path
    from ecmf_ray.train.outputs import experiment_dir

    run_dir = cfg.run_dir
    return {
        "prepare": lambda: storage.exists(manifest_path(run_dir)),
        "enrich": lambda: storage.exists(enrichment_path(run_dir)),
        "extract": lambda: _extract_complete(cfg),
        "train": lambda: storage.exists(
            storage.join(experiment_dir(run_dir, str(cfg.train.experiment)), "metrics.json")
        ),
        "tune": lambda: storage.exists(best_yaml_path(run_dir)),
        "finalize": lambda: storage.exists(submission_path(run_dir)),
    }


def is_complete(cfg: DictConfig, step: str) -> bool:
    """Whether ``step``'s outputs under ``cfg.run_dir`` are complete (the pipeline then skips it)."""
    return _complete_checks(cfg)[step]()


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
    """Run every enabled step whose outputs are not complete; returns each step's summary (or 'complete')."""
    from ecmf_ray.cli import JOBS, resolve_job

    cfg = cfg.copy()
    cfg.run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    unknown = set(cfg.pipeline.force) - set(STEPS)
    if unknown:
        raise ValueError(f"pipeline.force names unknown step(s) {sorted(unknown)}; steps: {', '.join(STEPS)}")
    complete = _complete_checks(cfg)
    results: dict[str, object] = {}
    for step in enabled_steps(cfg):
        if step == "finalize" and cfg.pipeline.tune:
            cfg = with_best_trial(cfg)
        if step not in cfg.pipeline.force and complete[step]():
            logger.info("pipeline: %s is complete; skipped", step)
            results[step] = "complete"
            continue
        logger.info("pipeline: %s", step)
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
    from ecmf_ray.cli import run_job
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
