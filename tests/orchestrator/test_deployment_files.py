"""The deployment files hold together: every YAML in cluster/ and examples/ parses, the example
configs pass metasweep's own schema, the AWS cluster-launcher config passes Ray's schema, and the
Kubernetes manifests, the Dockerfiles and pyproject agree on one Ray version, on where secrets
come from, and on what listens where.

Nothing here starts a cluster: these are checks at the level of the files' schemas.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from metasweep.orchestrator.cli import app
from metasweep.orchestrator.config import RunConfig, SweepConfig, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS_CONFIG = CLUSTER / "aws" / "cluster.yaml"
KUBE = CLUSTER / "kubernetes"
SECRETS_EXAMPLE = KUBE / "secrets.example.yaml"
RAY_DOCKERFILE = KUBE / "Dockerfile"
MLFLOW_DOCKERFILE = KUBE / "mlflow.Dockerfile"
IMAGE_PROJECT = "/home/ray/metasweep"  # where the Dockerfile puts the project
PLACEHOLDER = "CHANGE-ME"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
PASSWORD_IN_URI = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
ALL_INTERFACES = re.compile(r"0\.0\.0\.0|\[::\]|(?<![\w:])::(?![\w:])")


def yaml_files() -> list[Path]:
    found = {p for pattern in ("*.yaml", "*.yml") for p in CLUSTER.rglob(pattern)}
    found |= {p for pattern in ("*.yaml", "*.yml") for p in (ROOT / "examples").glob(pattern)}
    return sorted(found)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def ray_specifier() -> SpecifierSet:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dependency in pyproject["project"]["dependencies"]:
        requirement = Requirement(dependency)
        if requirement.name == "ray":
            return requirement.specifier
    raise AssertionError("pyproject.toml does not depend on ray")


def dockerfile_base(path: Path) -> tuple[str, str]:
    """``(image, tag)`` of the Dockerfile's single FROM line."""
    froms = re.findall(r"^FROM\s+(\S+)", path.read_text(), flags=re.MULTILINE)
    assert len(froms) == 1, f"{path.name}: expected one FROM line, found {froms}"
    image, _, tag = froms[0].partition(":")
    assert tag, f"{path.name}: FROM {froms[0]} has no tag; pin the Ray version"
    return image, tag


def ray_pins(text: str) -> set[str]:
    """Versions of every ``ray[...]==X`` pin in a text."""
    return set(re.findall(r"ray(?:\[[\w,]+\])?==([\w.]+)", text))


def kube_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(KUBE.glob("*.yaml")) for doc in documents(path)]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """The manifests users apply as they are: everything but the example Secrets."""
    return [(path, doc) for path, doc in kube_documents() if path != SECRETS_EXAMPLE]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """Each RayCluster spec, standalone or inside a RayJob, with a name for messages."""
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in of_kind("RayCluster")]
    specs += [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in of_kind("RayJob")]
    return specs


def groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"])] + [
        (group["groupName"], group) for group in spec.get("workerGroupSpecs", [])
    ]


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def all_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in manifests():
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            for c in containers(doc["spec"]["template"]):
                yield f"{kind} {name}", c
    for owner, spec in ray_cluster_specs():
        for group_name, group in groups(spec):
            for c in containers(group["template"]):
                yield f"{owner} group {group_name}", c


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def cli_args(args: list[str]) -> dict[str, str | None]:
    """``--flag=value``, ``--flag value`` and bare ``--flag`` as a dict."""
    parsed: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag.startswith("--"):
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            parsed[flag] = value if (eq or value) else None
        i += 1
    return parsed


def secret_refs(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        if "secretKeyRef" in obj:
            yield obj["secretKeyRef"]
        for value in obj.values():
            yield from secret_refs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from secret_refs(item)


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from strings(item)


def code_lines(path: Path) -> list[str]:
    """The lines of a shell or YAML file without their comments."""
    return [re.sub(r"(^|\s)#.*", "", line) for line in path.read_text().splitlines()]


def binds_all_interfaces(path: Path) -> list[str]:
    """Lines of ``path`` outside comments that name every interface (0.0.0.0, ::)."""
    return [line.strip() for line in code_lines(path) if ALL_INTERFACES.search(line)]


# ---------------------------------------------------------------- every YAML file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_into_mappings(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.relative_to(ROOT)} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.relative_to(ROOT)}: a document is a {type(doc).__name__}"


def test_the_files_are_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in yaml_files()}
    for expected in (
        "cluster/aws/cluster.yaml",
        "cluster/kubernetes/raycluster.yaml",
        "cluster/kubernetes/rayjob.yaml",
        "cluster/kubernetes/mlflow.yaml",
        "cluster/kubernetes/secrets.example.yaml",
    ):
        assert expected in names
    assert RAY_DOCKERFILE.is_file() and MLFLOW_DOCKERFILE.is_file()


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.y*ml")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_example_configs_pass_metasweeps_schema(path: Path) -> None:
    # Sweep files are training configs plus 'search' (and 'tracking'); RunConfig refuses those keys.
    schema = SweepConfig if "search" in documents(path)[0] else RunConfig
    config = load_config(path, schema=schema)
    assert isinstance(config, schema)


# ---------------------------------------------------------------- one Ray version


def test_one_ray_version_everywhere_and_within_pyproject() -> None:
    base_image, base_tag = dockerfile_base(RAY_DOCKERFILE)
    assert base_image == "rayproject/ray", f"Dockerfile builds on {base_image}, not rayproject/ray"
    version = base_tag.split("-")[0]
    aws = yaml.safe_load(AWS_CONFIG.read_text())
    found = {
        "Dockerfile FROM": {version},
        "Dockerfile pip pin": ray_pins(RAY_DOCKERFILE.read_text()),
        "AWS setup_commands pin": ray_pins("\n".join(aws["setup_commands"])),
        "AWS docker images": {image.partition(":")[2].split("-")[0] for image in aws_images(aws).values()},
        "KubeRay rayVersion": {spec["rayVersion"] for _, spec in ray_cluster_specs()},
    }
    assert all(found.values()), f"no Ray version found in: {[k for k, v in found.items() if not v]}"
    assert set().union(*found.values()) == {version}, f"Ray versions disagree: {found}"
    assert version in ray_specifier(), f"Ray {version} is outside pyproject's ray{ray_specifier()}"


# ---------------------------------------------------------------- AWS cluster launcher


def aws_images(config: dict[str, Any]) -> dict[str, str]:
    docker = config.get("docker", {})
    return {key: docker[key] for key in ("image", "head_image", "worker_image") if docker.get(key)}


def test_aws_config_passes_rays_own_schema() -> None:
    import jsonschema

    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(yaml.safe_load(AWS_CONFIG.read_text()), json.loads(schema_path.read_text()))


def test_aws_config_has_a_head_and_autoscaling_gpu_workers() -> None:
    config = yaml.safe_load(AWS_CONFIG.read_text())
    assert config["cluster_name"]
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types, f"head_node_type {head!r} is none of {sorted(types)}"
    gpu_workers = {
        name: t
        for name, t in types.items()
        if name != head and t.get("resources", {}).get("GPU", 0) >= 1 and t.get("max_workers", 0) > 0
    }
    assert gpu_workers, "no worker type with GPU resources and max_workers > 0"
    for name, t in types.items():
        if name != head:
            assert 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0), f"{name}: min/max_workers"
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for t in gpu_workers.values()
    ), "no spot GPU worker type"
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    amis = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(amis) == 1, f"node types use different AMIs: {amis}"


def test_aws_images_are_rays_own_and_gpu_where_the_gpus_are() -> None:
    images = aws_images(yaml.safe_load(AWS_CONFIG.read_text()))
    assert images, "no docker image: nodes would run whatever Python the AMI has"
    for key, image in images.items():
        assert image.startswith("rayproject/ray:"), f"docker.{key}: {image} is not rayproject/ray"
    worker = images.get("worker_image", images.get("image", ""))
    assert worker.endswith("-gpu"), f"GPU workers run {worker}, not a -gpu image"


def test_aws_installs_the_project_and_takes_mlflow_settings_from_a_file() -> None:
    config = yaml.safe_load(AWS_CONFIG.read_text())
    mounts = config["file_mounts"]
    project = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert project, "file_mounts do not copy the project"
    assert any(re.search(rf"pip install .*{re.escape(project[0])}", c) for c in config["setup_commands"])
    start = " ".join(config["head_start_ray_commands"])
    env_files = [remote for remote in mounts if remote.endswith(".env")]
    assert env_files and any(f". {remote}" in start for remote in env_files), (
        "the head's `ray start` does not source the mounted MLflow settings"
    )
    text = AWS_CONFIG.read_text()
    assert not re.search(r"MLFLOW_TRACKING_(PASSWORD|TOKEN)\s*[=:]\s*[^.\s]", text.replace("=...", ""))
    assert not PASSWORD_IN_URI.search(text)


def test_aws_dashboard_listens_on_the_heads_loopback() -> None:
    start = " ".join(yaml.safe_load(AWS_CONFIG.read_text())["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts == ["127.0.0.1"], f"dashboard host {hosts}: the Jobs API must not face the network"


# ---------------------------------------------------------------- Kubernetes


def test_manifests_name_themselves_in_one_namespace() -> None:
    for path, doc in kube_documents():
        where = f"{path.name}: {doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind"), where
        assert doc.get("metadata", {}).get("name"), where
        assert doc["metadata"].get("namespace") == "metasweep", f"{where} is not in namespace metasweep"


def test_kuberay_resources_use_ray_io_v1() -> None:
    ray_docs = [doc for _, doc in manifests() if doc["kind"] in ("RayCluster", "RayJob")]
    assert {doc["kind"] for doc in ray_docs} == {"RayCluster", "RayJob"}
    assert {doc["apiVersion"] for doc in ray_docs} == {"ray.io/v1"}


def test_ray_pods_run_the_metasweep_image_of_the_manifests_ray_version() -> None:
    _, base_tag = dockerfile_base(RAY_DOCKERFILE)
    for owner, spec in ray_cluster_specs():
        version = spec["rayVersion"]
        assert version in ray_specifier(), f"{owner}: rayVersion {version} outside pyproject's range"
        gpu_groups = 0
        for group_name, group in groups(spec):
            for c in containers(group["template"]):
                where = f"{owner} group {group_name}"
                image, _, tag = c["image"].rpartition(":")
                assert "ray-ml" not in image, f"{where}: {c['image']} is the deprecated ray-ml image"
                assert image == "rayproject/ray" or image.endswith("/ray"), f"{where}: {c['image']}"
                assert tag.split("-")[0] == version, f"{where}: image {c['image']} vs rayVersion {version}"
                if image != "rayproject/ray":
                    assert tag == base_tag, f"{where}: {c['image']} is not tagged as the Dockerfile's base"
                limits = c.get("resources", {}).get("limits", {})
                if group_name != "head" and int(limits.get("nvidia.com/gpu", 0)) >= 1:
                    gpu_groups += 1
                    assert tag.endswith("-gpu"), f"{where} has GPUs but runs {c['image']}"
        assert gpu_groups, f"{owner}: no worker group requests nvidia.com/gpu"


def test_dashboards_on_all_interfaces_require_a_token() -> None:
    for owner, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        host = head.get("rayStartParams", {}).get("dashboard-host", "0.0.0.0")  # KubeRay's default
        if ALL_INTERFACES.search(host):
            assert spec.get("authOptions", {}).get("mode") == "token", (
                f"{owner}: the dashboard runs jobs for whoever reaches it; set authOptions.mode: token"
            )
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", owner


def test_services_stay_inside_the_cluster() -> None:
    services = of_kind("Service")
    assert services
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", (
            f"Service {svc['metadata']['name']} is {svc['spec']['type']}; "
            "expose it through an Ingress with TLS"
        )


def the_rayjob() -> dict[str, Any]:
    jobs = of_kind("RayJob")
    assert len(jobs) == 1
    return jobs[0]


def test_rayjob_entrypoint_is_a_metasweep_command_the_cli_accepts() -> None:
    entrypoint = the_rayjob()["spec"]["entrypoint"]
    commands = [shlex.split(part) for part in entrypoint.split("&&")]
    metasweep = [argv for argv in commands if argv and argv[0] == "metasweep"]
    assert len(metasweep) == 1, f"the entrypoint runs no (or several) metasweep commands: {entrypoint}"
    name, *args = metasweep[0][1:]
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert name in group.commands, f"metasweep has no command {name!r}"
    # Raises click's UsageError on an option the command does not have.
    params = group.commands[name].make_context(name, list(args)).params
    config = str(params["config"])
    assert config.startswith(IMAGE_PROJECT + "/"), f"{config} is not in the image's project copy"
    relative = config.removeprefix(IMAGE_PROJECT + "/")
    copied = [
        source
        for line in RAY_DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ")
        for source in [w for w in line.split()[1:] if not w.startswith("--")][:-1]
    ]
    assert relative.split("/")[0] in copied, f"the Dockerfile does not copy {relative} into the image"
    loaded = load_config(ROOT / relative, params["set_"] or [], schema=SweepConfig)
    assert isinstance(loaded, SweepConfig)


def test_rayjob_submits_with_a_submitter_config_and_a_head_that_reaches_mlflow() -> None:
    spec = the_rayjob()["spec"]
    assert spec.get("submitterConfig", {}).get("backoffLimit", -1) >= 0
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    env = env_of(containers(head)[0])
    uri = env["MLFLOW_TRACKING_URI"]["value"]
    host = re.match(r"https?://([^:/]+)", uri)
    assert host, uri
    mlflow_services = {
        f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local" for s in of_kind("Service")
    }
    assert host.group(1) in mlflow_services, f"{uri} names no Service of the manifests"
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret"


def mlflow_server() -> tuple[dict[str, Any], dict[str, Any]]:
    """The MLflow Deployment and its server container."""
    for deployment in of_kind("Deployment"):
        for c in containers(deployment["spec"]["template"]):
            if "server" in c.get("args", []) and "mlflow" in c["image"]:
                return deployment, c
    raise AssertionError("no Deployment runs `mlflow server`")


def test_mlflow_server_uses_postgresql_s3_and_basic_auth() -> None:
    deployment, server = mlflow_server()
    args = cli_args(server["args"])
    backend = args.get("--backend-store-uri") or ""
    assert backend.startswith("postgresql://"), f"backend store {backend!r} is not PostgreSQL"
    assert (args.get("--artifacts-destination") or "").startswith("s3://")
    assert "--serve-artifacts" in args
    assert args.get("--app-name") == "basic-auth"
    env = env_of(server)
    for name in (
        "PGPASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
    ):
        assert "secretKeyRef" in env.get(name, {}).get("valueFrom", {}), (
            f"MLflow's {name} is not from a Secret"
        )
    # The auth app's config: a mounted file whose database is PostgreSQL too.
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in server["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes[mount["name"]]["configMap"]["name"]
    data = next(cm["data"] for cm in of_kind("ConfigMap") if cm["metadata"]["name"] == config_map)
    ini = configparser.ConfigParser()
    ini.read_string(data[config_path.name])
    assert ini["mlflow"]["database_uri"].startswith("postgresql://")
    assert not ini["mlflow"].get("admin_password"), "the admin password belongs in a Secret"


def test_postgresql_runs_with_storage_and_a_secret_password() -> None:
    _, server = mlflow_server()
    backend_host = re.match(
        r"postgresql://[^@/]*@?([^:/]+)", cli_args(server["args"])["--backend-store-uri"] or ""
    )
    assert backend_host
    service = backend_host.group(1).split(".")[0]
    assert service in {s["metadata"]["name"] for s in of_kind("Service")}, f"no Service {service}"
    databases = [
        d
        for d in of_kind("StatefulSet") + of_kind("Deployment")
        if any(c["image"].startswith("postgres") for c in containers(d["spec"]["template"]))
    ]
    assert len(databases) == 1
    db = databases[0]
    postgres = containers(db["spec"]["template"])[0]
    env = env_of(postgres)
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"].get("valueFrom", {})
    # The data directory must be on a claim: a volumeClaimTemplate, or a PVC the pod mounts.
    data_dir = env.get("PGDATA", {}).get("value", "/var/lib/postgresql/data")
    mount = next(m for m in postgres["volumeMounts"] if data_dir.startswith(m["mountPath"]))
    claims = {t["metadata"]["name"] for t in db["spec"].get("volumeClaimTemplates", [])}
    claims |= {
        v["name"] for v in db["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v
    }
    assert mount["name"] in claims, f"PostgreSQL keeps {data_dir} on volume {mount['name']}, not a claim"


def test_mlflow_image_is_built_with_the_auth_extra_at_the_deployed_version() -> None:
    _, server = mlflow_server()
    dockerfile = MLFLOW_DOCKERFILE.read_text()
    version = re.search(r"^ARG MLFLOW_VERSION=(\S+)", dockerfile, re.MULTILINE)
    assert version, "mlflow.Dockerfile does not pin MLFLOW_VERSION"
    assert re.search(r"mlflow\[[\w,]*\bauth\b[\w,]*\]==\$\{?MLFLOW_VERSION", dockerfile)
    assert "psycopg" in dockerfile and "boto3" in dockerfile
    assert server["image"].rpartition(":")[2] == version.group(1)


# ---------------------------------------------------------------- secrets


def test_credentials_come_from_secrets_only() -> None:
    assert not [doc for _, doc in manifests() if doc["kind"] == "Secret"], (
        "Secrets belong in secrets.example.yaml (placeholders) and the cluster, not the manifests"
    )
    for owner, c in all_containers():
        for name, entry in env_of(c).items():
            if SECRET_NAME.search(name):
                assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), (
                    f"{owner}: {name} must come from a secretKeyRef"
                )
    for path, doc in manifests():
        for text in strings(doc):
            assert not PASSWORD_IN_URI.search(text), f"{path.name}: a password in a URI: {text}"


def test_every_secret_the_manifests_read_is_in_the_example() -> None:
    example = {doc["metadata"]["name"]: doc for doc in documents(SECRETS_EXAMPLE)}
    refs = [ref for _, doc in manifests() for ref in secret_refs(doc)]
    assert refs
    for ref in refs:
        if ref.get("optional"):
            continue
        assert ref["name"] in example, f"Secret {ref['name']} is missing from secrets.example.yaml"
        assert ref["key"] in example[ref["name"]]["stringData"], f"{ref['name']} has no key {ref['key']}"


def test_secrets_example_holds_placeholders_only() -> None:
    docs = documents(SECRETS_EXAMPLE)
    assert docs and {doc["kind"] for doc in docs} == {"Secret"}
    for doc in docs:
        for key, value in doc["stringData"].items():
            if SECRET_NAME.search(key) or re.search("password|secret|key", key, re.IGNORECASE):
                assert PLACEHOLDER in str(value), f"{doc['metadata']['name']}.{key} is not a placeholder"


# ---------------------------------------------------------------- what listens where


def local_and_aws_files() -> list[Path]:
    patterns = ("*.yaml", "*.yml", "*.sh", "*.env")
    local = sorted(p for pattern in patterns for p in (CLUSTER / "local").glob(pattern))
    return [AWS_CONFIG, *local]


@pytest.mark.parametrize("path", local_and_aws_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_local_and_aws_services_do_not_listen_on_every_interface(path: Path) -> None:
    assert not binds_all_interfaces(path), f"{path.relative_to(ROOT)} binds every interface"


def test_the_interface_check_sees_binds_and_skips_comments(tmp_path: Path) -> None:
    script = tmp_path / "start.sh"
    script.write_text("# never --host 0.0.0.0 here\nmlflow server --host 127.0.0.1  # not 0.0.0.0\n")
    assert binds_all_interfaces(script) == []
    script.write_text('BIND_HOST="${BIND_HOST:-0.0.0.0}"\nray start --head --dashboard-host "::"\n')
    assert len(binds_all_interfaces(script)) == 2
