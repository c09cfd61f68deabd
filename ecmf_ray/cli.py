"""The ``ecmf`` command: parse arguments and config, then call one job function of the library.

``ecmf <job> [--config FILE]... [key=value]...`` behaves exactly like
``python jobs/<job>.py [--config FILE]... [key=value]...`` (what ``ray job submit`` runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ecmf_ray.config import ConfigError, load_config
from ecmf_ray.job_table import JOBS, UsageError, run_job
from ecmf_ray.stall import Stalled


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML config (repeatable; later files win); 'local', 'workstation' and 'cluster' name packaged profiles",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="OmegaConf dotlist overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecmf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")

    synth = sub.add_parser("synth", help="write a synthetic dataset in the MER2025 layout")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--n", type=int, default=60, help="labelled videos")
    synth.add_argument("--unlabeled", type=int, default=0, help="unlabelled videos (the test candidates)")
    synth.add_argument("--label-noise", type=float, default=0.0, help="fraction of labels flipped")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=1, help="encoding processes")
    synth.add_argument(
        "--release-layout",
        action="store_true",
        help="the real release's layout: track_all_candidates.csv, audio/NAME.wav, openface_face/NAME/NAME.npy "
        "(one candidate without a video, one without its face file); --candidates and --extra replace --unlabeled",
    )
    synth.add_argument(
        "--candidates", type=int, default=20, help="release layout: unlabelled clips to predict"
    )
    synth.add_argument("--extra", type=int, default=10, help="release layout: unlabelled clips not listed")

    for name, (_, _, help_text) in JOBS.items():
        add_config_arguments(sub.add_parser(name, help=help_text))

    demo = sub.add_parser("demo", help="synthesise a small dataset and run the pipeline locally")
    demo.add_argument("--n", type=int, default=120, help="labelled videos")
    demo.add_argument("--unlabeled", type=int, default=40, help="unlabelled videos")
    demo.add_argument("--label-noise", type=float, default=0.1)
    add_config_arguments(demo)
    return parser


def configure_logging() -> None:
    """INFO lines with time and logger name: the jobs' progress lines (train, finalize) are INFO."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if args.job == "synth":
            from ecmf_ray.data.synth import synthesize

            if args.release_layout and args.unlabeled:
                raise UsageError("--release-layout takes --candidates and --extra, not --unlabeled")
            layout = (
                {
                    "unlabeled": args.candidates + args.extra,
                    "release_layout": True,
                    "candidates": args.candidates,
                }
                if args.release_layout
                else {"unlabeled": args.unlabeled}
            )
            summary = synthesize(
                args.out,
                args.n,
                label_noise=args.label_noise,
                seed=args.seed,
                workers=args.workers,
                **layout,
            )
            print(summary)
            return 0
        if args.job == "demo":
            from ecmf_ray.pipeline import run_demo

            # The demo runs on this machine: the local profile always, the user's files on top of it.
            cfg = load_config(["local", *args.config], args.overrides)
            run_demo(cfg, n=args.n, unlabeled=args.unlabeled, label_noise=args.label_noise)
            return 0
        cfg = load_config(args.config, args.overrides)
        run_job(args.job, cfg)
        return 0
    except (ConfigError, UsageError, ValueError, FileNotFoundError, Stalled) as err:
        print(f"ecmf {args.job}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
