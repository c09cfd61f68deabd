"""The cluster README's `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python jobs/…`
against a head started the way cluster/aws.yaml starts one, token auth on: the demo pipeline on local
disk, and the pipeline with its dataset and run_dir on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml

from tests.cluster.conftest import REPO, Head, client_env, submit

# The submit options of cluster/README.md, step 3: the shipped runtime env, nothing of the test's own.
README_SUBMIT = ("--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--")
# The smallest finalize: no relabeling, one ensemble member, no ablation rows.
SMALL_FINALIZE = (
    "finalize.relabel.enabled=false",
    "finalize.ensemble=[{name: ecmf, overrides: []}]",
    "finalize.ablation=[]",
)


def test_readme_submit_command_is_the_one_tested():
    text = (REPO / "cluster" / "README.md").read_text()
    assert re.search(
        r"ray job submit " + re.escape(" ".join(README_SUBMIT)) + r" \\\n\s+python jobs/pipeline\.py", text
    )


def test_head_refuses_a_client_without_the_token(aws_head: Head, tmp_path: Path):
    """A client with no token, or with another token, is refused; the same command with it is served."""
    listing = ("--", "python", "-c", "print('served')")
    no_token = submit(aws_head, *listing, env=client_env(tmp_path, None), timeout=120)
    assert no_token.returncode != 0 and "served" not in no_token.stdout
    assert "auth" in (no_token.stdout + no_token.stderr).lower()
    wrong = tmp_path / "other_token"
    wrong.write_text("0" * 32)
    other = submit(aws_head, *listing, env=client_env(tmp_path, wrong), timeout=120)
    assert other.returncode != 0 and "served" not in other.stdout
    ok = submit(aws_head, *listing, timeout=300)
    assert ok.returncode == 0 and "served" in ok.stdout, ok.stdout + ok.stderr


def test_demo_pipeline_as_a_ray_job(aws_head: Head, tmp_path: Path):
    run_dir = tmp_path / "job_run"
    result = submit(
        aws_head, *README_SUBMIT,
        "python", "jobs/demo.py", "--n", "24", "--unlabeled", "6",
        f"run_dir={run_dir}", "train.folds=2", "train.max_epochs=4", *SMALL_FINALIZE,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    assert (run_dir / "manifest.parquet").is_file()
    assert (run_dir / "config" / "pipeline.yaml").is_file()
    for branch in ("frame", "face", "audio", "text"):
        assert any((run_dir / "features" / branch).glob("*.parquet")), branch
    assert (run_dir / "train" / "ecmf" / "metrics.json").is_file()
    submission = pd.read_csv(run_dir / "final" / "submission.csv")
    assert list(submission.columns) == ["name", "discrete"]
    assert len(submission) == submission["name"].nunique() == 6
    assert (run_dir / "final" / "report.md").is_file()
    shutil.rmtree(run_dir)


def test_pipeline_on_s3_as_a_ray_job(aws_head: Head, s3_env: str, tmp_path: Path):
    """Dataset, run_dir, features, checkpoints (train and tune) and final outputs all in a moto bucket,
    and finalize trains the search's best config (pipeline.tune=true).

    The job's runtime env (cluster/runtime_env.yaml) sets TOKENIZERS_PARALLELISM and HF_HOME while the
    driver sends AWS_ENDPOINT_URL (from storage.endpoint_url) to its workers: Ray merges both only if
    the driver leaves the job's variables alone.
    """
    import s3fs

    from ecmf_ray import storage
    from ecmf_ray.data.synth import synthesize

    synthesize(str(tmp_path / "mer"), 16, unlabeled=4, seed=3, duration_s=2.0)
    fs = s3fs.S3FileSystem()
    fs.mkdir("ecmf-e2e")
    for path in (tmp_path / "mer").rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://ecmf-e2e/mer/{path.relative_to(tmp_path / 'mer')}", path.read_bytes())
    run_dir = "s3://ecmf-e2e/run"
    result = submit(
        aws_head, *README_SUBMIT,
        "python", "jobs/pipeline.py", "--config", "local",
        f"run_dir={run_dir}", "dataset.root=s3://ecmf-e2e/mer", f"storage.endpoint_url={s3_env}",
        "dataset.format=mer2025", "train.folds=2", "train.max_epochs=4", "train.checkpoint_every=2",
        "pipeline.tune=true", "tune.num_samples=2", "tune.scheduler=fifo", "tune.checkpoint_every=2",
        *SMALL_FINALIZE,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output

    manifest = storage.read_table(f"{run_dir}/manifest.parquet").to_pandas()
    assert len(manifest) == 20 and manifest["video_path"].str.startswith("s3://ecmf-e2e/mer/video/").all()
    for branch in ("frame", "face", "audio", "text"):
        assert fs.glob(f"ecmf-e2e/run/features/{branch}/*.parquet"), branch
    files = fs.find("ecmf-e2e/run")
    assert any("/train/ecmf/" in f and f.endswith(".safetensors") for f in files)  # fold checkpoints
    assert any("/tune/ray/" in f and f.endswith(".safetensors") for f in files)  # trial checkpoints
    assert fs.exists("ecmf-e2e/run/final/report.md")
    # finalize's one member is trained with the search's best config (a new final-* experiment, or
    # train/ecmf reused when the search's start config won).
    best = yaml.safe_load(storage.read_text(f"{run_dir}/tune/best.yaml"))
    (member,) = json.loads(storage.read_text(f"{run_dir}/final/ensemble.json"))["members"]
    trained = json.loads(storage.read_text(storage.join(member["experiment_dir"], "experiment.json")))
    for section in ("model", "train"):
        for key, value in best[section].items():
            if key != "experiment":
                assert trained[section][key] == value, f"{section}.{key}"
    submission = pd.read_csv(fs.open("ecmf-e2e/run/final/submission.csv"))
    test_names = manifest.loc[manifest["split"].eq("test"), "video_id"]
    assert sorted(submission["name"]) == sorted(test_names) and len(submission) > 0


def test_cluster_profile_names_what_the_user_must_give(aws_head: Head):
    """The README's command with the cluster profile but no dataset.root: refused before any work."""
    result = submit(
        aws_head, *README_SUBMIT,
        "python", "jobs/pipeline.py", "--config", "configs/cluster.yaml", "run_dir=s3://ecmf-e2e/never",
        timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'dataset.root'" in output and "cluster.yaml" in output and "'run_dir'" not in output


def test_the_shipped_excludes_upload_the_code_and_no_local_clutter(aws_head: Head, tmp_path: Path):
    """`--working-dir` with cluster/runtime_env.yaml, from a checkout full of what must stay home: the job
    sees only the code. No .gitignore helps here, as in a tarball of the project."""
    tree = tmp_path / "checkout"
    code = {"ecmf_ray/cli.py", "jobs/pipeline.py", "configs/base.yaml", "cluster/runtime_env.yaml"}
    clutter = {".venv/lib/torch.so", "venv/bin/python", "runs/local/manifest.parquet", ".git/HEAD",
               "ecmf_ray/__pycache__/cli.pyc", ".pytest_cache/v", ".ruff_cache/x", "ecmf_ray.egg-info/PKG-INFO"}  # fmt: skip
    for path in code | clutter:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text("x")
    listing = "import json, os; print('FILES', json.dumps([os.path.join(d, f)[2:] for d, _, fs in os.walk('.') for f in fs]))"
    result = submit(
        aws_head, "--working-dir", str(tree), *README_SUBMIT[2:],  # the README's options, this tree
        "python", "-c", listing, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("FILES "))
    assert set(json.loads(line.removeprefix("FILES "))) == code
