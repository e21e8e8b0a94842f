"""infra/ checked offline: the kustomize base and overlay build and validate (Kubernetes
schemas, KEDA's ScaledObject CRD), the compose file matches the compose spec, and all of
infra/'s YAML passes yamllint."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from ecpds.core.roles import Role, role_queue
from ecpds.core.settings import WORKER_METRICS_PORT, WORKER_SDK_METRICS_PORT, Settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
BUILDS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
COMPOSE = INFRA / "compose.yaml"
KUBERNETES_VERSION = "1.32.0"  # the oldest cluster these manifests are meant for

Doc = dict[str, Any]


# Rendering: kustomize itself where a binary is installed, else the subset of it that
# infra/k8s uses (resources, namespace, labels, images, strategic-merge patches).


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize(folder: Path) -> list[Doc]:
    command = kustomize_command()
    assert command is not None
    done = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def merge(target: Any, patch: Any) -> Any:
    """A strategic merge as kustomize does it for these manifests: maps merge, null
    deletes, lists of named items merge by name, other lists are replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(target.get(key), value)
        return merged
    if (
        isinstance(target, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in target + patch)
    ):
        by_name = {item["name"]: item for item in target}
        for item in patch:
            by_name[item["name"]] = merge(by_name.get(item["name"]), item)
        return list(by_name.values())
    return copy.deepcopy(patch)


def matches(doc: Doc, target: dict[str, str]) -> bool:
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and doc["metadata"]["name"] != target["name"]:
        return False
    if "labelSelector" in target:
        key, value = target["labelSelector"].split("=")
        if doc["metadata"].get("labels", {}).get(key) != value:
            return False
    return True


def render(folder: Path) -> list[Doc]:
    """What `kustomize build folder` gives for the features infra/k8s uses."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs += render(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        target = entry.get("target") or {
            "kind": patch["kind"],
            "name": patch["metadata"]["name"],
        }
        chosen = [i for i, doc in enumerate(docs) if matches(doc, target)]
        assert chosen, f"patch {entry['path']} matches nothing"
        for i in chosen:
            body = {key: value for key, value in patch.items() if key != "metadata"}
            docs[i] = merge(docs[i], body)
    for labels in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"] = merge(doc["metadata"], {"labels": labels["pairs"]})
    if "namespace" in kustomization:
        for doc in docs:
            doc["metadata"] = merge(doc["metadata"], {"namespace": kustomization["namespace"]})
    for image in kustomization.get("images", []):
        for container in containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                name = image.get("newName", image["name"])
                container["image"] = f"{name}:{image['newTag']}"
    return docs


def pods(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["spec"]["template"]["spec"]


def containers(docs: list[Doc]) -> Iterator[Doc]:
    for pod in pods(docs):
        yield from pod["containers"]


@cache
def built(name: str) -> tuple[str, list[Doc]]:
    """The build of infra/k8s/`name` and what made it."""
    if kustomize_command() is None:
        return "ecpds's Python subset of kustomize (no kustomize or kubectl binary)", render(
            BUILDS[name]
        )
    return " ".join(kustomize_command() or []), kustomize(BUILDS[name])


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


# Kubernetes


@pytest.mark.parametrize("build", list(BUILDS))
def test_every_built_in_kind_is_valid_kubernetes(build: str) -> None:
    """Strict: a misspelt or misplaced field is an error, not a field the cluster drops."""
    _, docs = built(build)
    checked, errors = 0, []
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.absolute_path))
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")
        checked += 1
    assert not errors, f"{build}: {errors}"
    assert checked >= 10


def strict(schema: Any) -> Any:
    """The CRD's OpenAPI schema with unknown fields refused, as `kubectl apply`'s strict
    field validation does (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def scaled_object_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((K8S / "schemas" / "keda-scaledobject.json").read_text())
    schema["properties"]["metadata"] = {"type": "object"}  # checked by Kubernetes itself
    return jsonschema.Draft7Validator(strict(schema))


@pytest.mark.parametrize("build", list(BUILDS))
def test_scaled_objects_match_kedas_crd(build: str) -> None:
    _, docs = built(build)
    scaled = by_kind(docs, "ScaledObject")
    assert len(scaled) == len(Role)
    for name, doc in scaled.items():
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in scaled_object_validator().iter_errors(doc)
        ]
        assert not errors, f"{build}: ScaledObject {name}: {errors}"


@pytest.mark.parametrize("build", list(BUILDS))
def test_each_role_has_a_worker_scaled_on_its_task_queue(build: str) -> None:
    """The names that tie the manifests to the code: roles, task queues, ports, probes."""
    how, docs = built(build)
    deployments = by_kind(docs, "Deployment")
    scaled = by_kind(docs, "ScaledObject")
    budgets = by_kind(docs, "PodDisruptionBudget")
    settings = by_kind(docs, "ConfigMap")["ecpds-settings"]["data"]
    assert set(settings) <= {f"ECPDS_{name.upper()}" for name in Settings.model_fields} | {
        "FSSPEC_S3_ENDPOINT_URL"
    }, f"a setting that core/settings.py does not know ({how})"
    task_queue = settings.get("ECPDS_TASK_QUEUE", Settings().task_queue)
    for role in Role:
        name = f"ecpds-worker-{role}"
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["worker", "--role", str(role)]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"metrics": WORKER_METRICS_PORT, "sdk-metrics": WORKER_SDK_METRICS_PORT}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        assert trigger["type"] == "temporal"
        assert trigger["metadata"]["taskQueue"] == role_queue(task_queue, role)
        assert trigger["metadata"]["endpoint"] == settings["ECPDS_TEMPORAL_ADDRESS"]
        assert budgets[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    (portal,) = deployments["ecpds-portal"]["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert portal[probe]["httpGet"] == {
            "path": "/api/v1/health",
            "port": "https",
            "scheme": "HTTPS",
        }
    passive = Settings(ftp_passive_ports=settings["ECPDS_FTP_PASSIVE_PORTS"]).ftp_passive_range
    assert passive is not None
    assert {p["containerPort"] for p in portal["ports"]} == {
        getattr(Settings(), f"{door}_port")
        for door in ("https", "s3", "ftp", "sftp", "mqtt", "mqtts", "mqtt_ws")
    } | set(passive)
    # The doors' LoadBalancer publishes every door but HTTPS (the Ingress's), passive
    # FTP's data ports included.
    doors = by_kind(docs, "Service")["ecpds-portal-doors"]["spec"]["ports"]
    published = {p["containerPort"] for p in portal["ports"] if p["name"] != "https"}
    assert {door["port"] for door in doors} == published


def test_production_scales_up_and_keeps_pods_available() -> None:
    _, base = built("base")
    _, production = built("production")
    for doc in production:
        assert doc["metadata"]["namespace"] == "ecpds"
    assert by_kind(production, "Deployment")["ecpds-portal"]["spec"]["replicas"] == 2
    for name, budget in by_kind(production, "PodDisruptionBudget").items():
        assert budget["spec"] == {
            "minAvailable": 1,
            "selector": by_kind(base, "PodDisruptionBudget")[name]["spec"]["selector"],
        }
    for scaled in by_kind(production, "ScaledObject").values():
        assert scaled["spec"]["minReplicaCount"] >= 2
    images = {container["image"] for container in containers(production)}
    assert images == {"ecpds:0.1.0"}


def test_no_secret_value_is_in_the_manifests() -> None:
    """Secrets are referenced (secretKeyRef, Secret volumes), never written in."""
    for build in BUILDS:
        _, docs = built(build)
        assert not by_kind(docs, "Secret")
        for pod in pods(docs):
            secrets = {
                mount["mountPath"]
                for container in pod["containers"]
                for mount in container.get("volumeMounts", [])
                if any(
                    volume["name"] == mount["name"] and "secret" in volume
                    for volume in pod.get("volumes", [])
                )
            }
            for container in pod["containers"]:
                for variable in container.get("env", []):
                    name = variable["name"]
                    if not re.search(r"PASSWORD|SECRET_ACCESS|DATABASE_URL", name):
                        continue
                    if name.endswith("_FILE"):  # a path: into a mounted Secret
                        assert any(variable["value"].startswith(f"{m}/") for m in secrets)
                    else:
                        assert "secretKeyRef" in variable.get("valueFrom", {}), variable


@pytest.mark.skipif(kustomize_command() is None, reason="no kustomize or kubectl binary")
@pytest.mark.parametrize("build", list(BUILDS))
def test_the_python_render_is_what_kustomize_builds(build: str) -> None:
    """Where no kustomize binary exists the tests above use `render`: it must agree."""

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(render(BUILDS[build]), key=key) == sorted(kustomize(BUILDS[build]), key=key)


# Compose


def compose() -> Doc:
    document: Doc = yaml.safe_load(COMPOSE.read_text())
    return document


def test_the_compose_file_matches_the_compose_spec() -> None:
    """Against the compose-spec JSON schema kept in infra/compose/ (the one Debian's
    docker-compose 1.29 ships): there is no `docker compose` plugin to ask offline."""
    schema = json.loads((INFRA / "compose" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert not errors, errors


def test_the_compose_file_commits_no_password() -> None:
    """Every value it interpolates is required or defaulted, and named in env.example;
    every password-like setting is an interpolation, never a literal."""
    text = COMPOSE.read_text()
    example = (INFRA / "env.example").read_text()
    named = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    for variable, operator in re.findall(r"\$\{([A-Za-z_]+)(:\?|:-)?[^}]*\}", text):
        assert operator, f"${{{variable}}} has neither :? nor :-"
        assert variable in named, f"{variable} is not in infra/env.example"
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|PWD|SECRET|DATABASE_URL", key) and not key.endswith("_FILE"):
                assert re.search(r"\$\{\w+:\?", str(value)), f"{name}: {key} is a literal"


def test_the_compose_file_runs_every_role_and_scrapes_it() -> None:
    services = compose()["services"]
    commands = [service.get("command") for service in services.values()]
    for role in Role:
        assert ["worker", "--role", str(role)] in commands
    assert ["portal"] in commands
    build = compose()["x-ecpds"]["build"]
    dockerfile = (INFRA / build["context"] / build["dockerfile"]).read_text()
    assert 'ENTRYPOINT ["ecpds"]' in dockerfile
    scrape = yaml.safe_load((INFRA / "compose" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
        for job in scrape["scrape_configs"]
    }
    workers = [f"worker-{role}" for role in Role]
    assert set(workers) <= set(services)
    assert targets == {
        "ecpds-portal": {f"portal:{Settings().https_port}"},
        "ecpds-worker": {f"{w}:{WORKER_METRICS_PORT}" for w in workers},
        "ecpds-worker-temporal-sdk": {f"{w}:{WORKER_SDK_METRICS_PORT}" for w in workers},
    }


def docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    return done.returncode == 0


@pytest.mark.skipif(
    not docker_compose(),
    reason="no `docker compose` plugin here (at most the docker client):"
    " test_the_compose_file_matches_the_compose_spec checks the file against the schema",
)
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """On a copy, with the secret file and infra/.env an operator makes first."""
    shutil.copytree(INFRA, tmp_path / "infra")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    (tmp_path / "infra" / "secrets").mkdir(exist_ok=True)
    (tmp_path / "infra" / "secrets" / "ecpds-secret.key").write_text("not-a-real-key\n")
    example = (INFRA / "env.example").read_text()
    env = re.sub(r"^([A-Z_]+)=$", r"\1=not-a-real-value", example, flags=re.M)
    (tmp_path / "infra" / ".env").write_text(env)
    done = subprocess.run(
        ["docker", "compose", "-f", str(tmp_path / "infra" / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


# YAML style


def infra_yaml() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_all_of_infras_yaml_passes_yamllint() -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    files = infra_yaml()
    assert COMPOSE in files and len(files) >= 10
    problems = [
        f"{path.relative_to(ROOT)}:{problem.line}: {problem.message}"
        for path in files
        for problem in linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)
