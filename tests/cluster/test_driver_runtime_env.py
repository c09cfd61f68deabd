"""What a driver passes to `ray.init(runtime_env=...)` inside a submitted job: never a variable the job's
runtime env (cluster/runtime_env.yaml, the RayJob's runtimeEnvYAML) already sets, so Ray can merge them."""

import json
from pathlib import Path

import pytest
import yaml

from ecmf_ray.runtime import job_env_vars, worker_env_vars

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def job_environ(job_runtime_env: dict, **driver: str) -> dict[str, str]:
    """A driver's environment as Ray 2.60's job supervisor makes it: the job's env vars applied, and the
    job's runtime env in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    config = json.dumps({"runtime_env": job_runtime_env, "metadata": {}})
    return {**job_runtime_env.get("env_vars", {}), **driver, "RAY_JOB_CONFIG_JSON_ENV_VAR": config}


@pytest.mark.parametrize(
    "job_runtime_env",
    [
        yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text()),
        yaml.safe_load(
            yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())["spec"]["runtimeEnvYAML"]
        ),
    ],
    ids=["runtime_env.yaml", "rayjob.yaml"],
)
def test_driver_env_merges_with_the_shipped_job_runtime_env(job_runtime_env: dict):
    environ = job_environ(job_runtime_env, AWS_ENDPOINT_URL="http://minio:9000", HF_HUB_OFFLINE="1")
    env_vars = worker_env_vars(environ)
    assert env_vars == {"AWS_ENDPOINT_URL": "http://minio:9000", "HF_HUB_OFFLINE": "1"}
    assert job_env_vars(environ) == job_runtime_env["env_vars"]
    # Ray refuses to merge a driver's runtime env into the job's only where both set one variable; the
    # S3 job test (test_job_submit.py) has Ray merge them for real.
    assert not set(env_vars) & set(job_runtime_env["env_vars"])


def test_outside_a_job_the_driver_sends_its_own_settings():
    environ = {"HF_HOME": "/data/hf", "TOKENIZERS_PARALLELISM": "false", "PATH": "/bin"}
    assert job_env_vars(environ) == {}
    assert worker_env_vars(environ) == {"HF_HOME": "/data/hf", "TOKENIZERS_PARALLELISM": "false"}


def test_a_job_value_that_contradicts_the_config_is_an_error():
    environ = job_environ(
        {"env_vars": {"AWS_ENDPOINT_URL": "http://a:9000"}}, AWS_ENDPOINT_URL="http://b:9000"
    )
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        worker_env_vars(environ)
