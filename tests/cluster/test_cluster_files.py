"""The cluster launcher file, Dockerfile, IAM policies, KubeRay manifests and runtime env: valid,
autoscaling, token auth on everywhere, never public, and in agreement with each other and the README."""

import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler.sdk import fillout_defaults
from ray.runtime_env import RuntimeEnv

from ecmf_ray.cli import build_parser
from ecmf_ray.config import load_config
from tests.cluster.conftest import aws_auth_lines, aws_token_mount

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
README = (CLUSTER / "README.md").read_text()
# vCPUs and GiB of the instance types the manifests' groups mirror.
INSTANCES = {
    "m6i.2xlarge": (8, 32),
    "c6i.8xlarge": (32, 64),
    "g5.4xlarge": (16, 64),
    "g5.48xlarge": (192, 768),
}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / name).read_text()))


def test_aws_launcher_file_matches_the_schema_in_the_ray_wheel():
    config = load("aws.yaml")
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    schema = json.loads(Path(schema_path).read_text())
    jsonschema.validate(config, schema)
    # What `ray up` does before launching: fill the provider's defaults, then check the result.
    filled = fillout_defaults(config)
    jsonschema.validate(filled, schema)
    types = filled["available_node_types"]
    assert filled["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= filled["max_workers"]


def test_aws_cluster_scales_from_zero_on_the_deep_learning_ami():
    config = load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "g" not in head["node_config"]["InstanceType"].split(".")[0]
    assert config["idle_timeout_minutes"] > 0
    for name, node_type in types.items():
        # Ray's fallback AMI is an old Deep Learning AMI: every type names the current base GPU AMI.
        assert node_type["node_config"]["ImageId"] == (
            "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
        ), name
        assert node_type["node_config"]["InstanceType"] in INSTANCES, name
        if node_type is not head:
            assert node_type["min_workers"] == 0 and node_type["max_workers"] > 0, name
    market = {
        n: t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") for n, t in types.items()
    }
    assert market == {"head_cpu": None, "cpu_worker": "spot", "gpu_worker_1x": "spot", "gpu_worker_8x": None}
    # The README says the same.
    assert re.search(r"g5\.48xlarge[^|\n]*\|[^|\n]*on-demand", README)
    assert re.search(r"g5\.4xlarge[^|\n]*\|[^|\n]*spot", README)


def test_nodes_run_the_project_image_and_install_nothing_heavy():
    config = load("aws.yaml")
    docker = config["docker"]
    assert docker["image"].endswith("-gpu") and docker["head_image"].endswith("-cpu")
    assert config["available_node_types"]["cpu_worker"]["docker"]["worker_image"].endswith("-cpu")
    for command in config["setup_commands"] + config.get("worker_setup_commands", []):
        if "pip install" in command:
            assert "--no-deps" in command, command
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "ARG BASE=rayproject/ray:2.60.0-py311-gpu" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "rayproject/ray:2.60.0-py311-cpu" in dockerfile  # the CPU build is documented
    assert "[optuna]" in dockerfile  # tune.search=optuna works on the cluster
    ignored = (CLUSTER.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_every_node_starts_ray_with_the_same_token():
    config = load("aws.yaml")
    remote, local = aws_token_mount()
    assert local == "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes it
    head, worker = aws_auth_lines("head"), aws_auth_lines("worker")
    assert head == worker
    assigned = dict(word.split("=", 1) for line in head for word in shlex.split(line) if "=" in word)
    assert assigned == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": remote.replace("~", "$HOME", 1)}
    for kind in ("head", "worker"):
        start = next(c for c in config[f"{kind}_start_ray_commands"] if "ray start" in c)
        assert start.splitlines()[0] == head[0]  # the auth environment comes first, before `ray start`


def test_iam_policies_give_each_role_what_it_uses():
    config = load("aws.yaml")
    profiles = {
        t["node_config"]["IamInstanceProfile"]["Name"] for t in config["available_node_types"].values()
    }
    assert profiles == {"ecmf-ray-head", "ecmf-ray-worker"}
    head = json.loads((CLUSTER / "iam" / "head-policy.json").read_text())["Statement"]
    worker = json.loads((CLUSTER / "iam" / "worker-policy.json").read_text())["Statement"]
    head_actions = {a for s in head for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "ec2:CreateTags",
        "ec2:DescribeInstances",
    } <= head_actions
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ssm:GetParameters"} <= head_actions
    pass_role = next(s for s in head if s["Action"] == "iam:PassRole")
    assert pass_role["Resource"].endswith(":role/ecmf-ray-worker")  # only the workers' role, nothing wider
    worker_actions = {a for s in worker for a in s["Action"]}
    assert all(a.startswith("s3:") for a in worker_actions)


def test_no_config_exposes_the_dashboard_publicly():
    config = load("aws.yaml")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert config["provider"]["security_group"]["GroupName"]  # a group you create with narrow SSH
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = load(f"kuberay/{name}")
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    for text in [p.read_text() for p in CLUSTER.rglob("*.yaml")]:
        assert "LoadBalancer" not in text and "NodePort" not in text
        assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def memory_gib(quantity: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(Gi|Mi)", quantity).groups()
    return int(value) / (1024 if unit == "Mi" else 1)


def check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay requires, token auth, the images, and requests that fit the mirrored instances."""
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    pods = {"head": head["template"]["spec"]}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for name, group in groups.items():
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        pods[name] = group["template"]["spec"]
    assert groups["gpu"]["minReplicas"] == 0
    mirrors = {"head": "m6i.2xlarge", "cpu": "c6i.8xlarge", "gpu": "g5.4xlarge"}
    for name, pod in pods.items():
        assert pod["serviceAccountName"] == "ecmf-ray"
        container = pod["containers"][0]
        assert container["image"].endswith("-gpu" if name == "gpu" else "-cpu"), name
        requests = container["resources"]["requests"]
        vcpus, gib = INSTANCES[mirrors[name]]
        assert int(requests["cpu"]) < vcpus and memory_gib(requests["memory"]) <= gib - 8, name
    assert int(pods["gpu"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


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
    assert spec["shutdownAfterJobFinishes"] is True
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    check_ray_cluster_spec(spec["rayClusterSpec"])
    # The entrypoint gives every value the cluster profile requires: its config loads.
    python, script, *args = shlex.split(spec["entrypoint"])
    assert (python, script) == ("python", "/home/ray/ecmf_ray/jobs/pipeline.py")
    parsed = build_parser().parse_args(["pipeline", *args])
    cfg = load_config(parsed.config, parsed.overrides)
    assert cfg.run_dir.startswith("s3://") and cfg.dataset.root.startswith("s3://")


def test_kuberay_access_admits_only_ray_pods_and_uses_an_s3_role():
    account, policy = load_all("kuberay/access.yaml")
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "ecmf-ray"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    ray_pods = {"matchExpressions": [{"key": "ray.io/node-type", "operator": "Exists"}]}
    assert policy["spec"]["podSelector"] == ray_pods
    from_ray, from_clients = policy["spec"]["ingress"]
    assert from_ray == {"from": [{"podSelector": ray_pods}]}
    # Outside the Ray pods, only the RayJob's submitter and the operator, and only to the Jobs API.
    assert from_clients["ports"] == [{"port": 8265, "protocol": "TCP"}]
    job = load("kuberay/rayjob.yaml")["metadata"]["name"]
    selectors = [peer["podSelector"]["matchLabels"] for peer in from_clients["from"]]
    assert selectors == [
        {"batch.kubernetes.io/job-name": job},
        {"app.kubernetes.io/name": "kuberay-operator"},
    ]


def kuberay_objects() -> list[tuple[str, dict]]:
    """Every plain Kubernetes object of the KubeRay manifests: access.yaml's, and each pod template."""
    objects = [(f"access.yaml:{doc['kind']}", doc) for doc in load_all("kuberay/access.yaml")]
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = load(f"kuberay/{name}")
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        for group, group_spec in groups:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": group}, **group_spec["template"]}
            objects.append((f"{name}:{group}", pod))
    return objects


@pytest.mark.parametrize(("where", "obj"), kuberay_objects(), ids=[w for w, _ in kuberay_objects()])
def test_kuberay_objects_match_the_kubernetes_schemas(where: str, obj: dict):
    """Strict: a misspelt or misplaced field is an error (Kubernetes 1.33's OpenAPI schemas, shipped in
    kubernetes-validate). The RayCluster/RayJob fields above the pod templates are checked above."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, "1.33", strict=True)


def test_runtime_env_is_a_valid_ray_runtime_env():
    env = load("runtime_env.yaml")
    RuntimeEnv(**env)
    assert "HF_HOME" in env["env_vars"]
