"""The cluster launcher file, KubeRay manifests and runtime env: valid, autoscaling, never public."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_aws_launcher_file_matches_the_schema_in_the_ray_wheel():
    config = load("aws.yaml")
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    jsonschema.validate(config, json.loads(Path(schema_path).read_text()))
    # What `ray up` does before launching: fill the provider defaults, then validate again.
    validate_config(prepare_config(config))


def test_aws_cluster_scales_gpus_from_zero_with_spot_and_a_cpu_head():
    config = load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "g" not in head["node_config"]["InstanceType"].split(".")[0]
    gpu_types = [t for name, t in types.items() if name.startswith("gpu_")]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu_types)
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types
    )
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0")
    assert any("HF_HOME=/mnt/local_disk" in cmd for cmd in config["setup_commands"])


def test_no_config_exposes_the_dashboard_publicly():
    config = load("aws.yaml")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = load(f"kuberay/{name}")
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    for text in [p.read_text() for p in CLUSTER.rglob("*.yaml")]:
        assert "LoadBalancer" not in text and "NodePort" not in text
        assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay requires, plus the autoscaling this project relies on."""
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for group in groups.values():
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name: str):
    manifest = load(f"kuberay/{name}")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["metadata"]["name"]
    if manifest["kind"] == "RayCluster":
        check_ray_cluster_spec(manifest["spec"])
        return
    assert manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert "jobs/pipeline.py" in spec["entrypoint"] and "run_dir=s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    check_ray_cluster_spec(spec["rayClusterSpec"])


def test_runtime_env_is_a_valid_ray_runtime_env():
    env = load("runtime_env.yaml")
    RuntimeEnv(**env)
    assert "HF_HOME" in env["env_vars"]
