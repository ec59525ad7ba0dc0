"""deploy/kubernetes and the Containerfile: valid for Kubernetes, consistent with Headwater.

The manifests are checked against the Kubernetes schemas that kubernetes-validate
ships (no network), strictly (an unknown field fails); the resources of the
ConfigMap load as Headwater loads files; every option the Deployment passes is
one ``headwater up`` knows; the probes' paths are routes the admin API serves
without its token. No cluster runs here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from headwater.api.app import create_app
from headwater.api.http import PUBLIC_PATHS
from headwater.cli.up import up
from headwater.resources import collect_text
from headwater.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def documents() -> list[tuple[str, dict[str, Any]]]:
    yaml = YAML(typ="safe")
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.load_all(path.read_text())
        if doc
    ]


def of_kind(kind: str, name: str) -> dict[str, Any]:
    for _, doc in documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


@pytest.mark.parametrize(
    ("where", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_manifest_is_valid_for_kubernetes(where: str, doc: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


def test_nats_runs_three_jetstream_servers_that_take_a_headwater_event() -> None:
    statefulset = of_kind("StatefulSet", "nats")
    assert statefulset["spec"]["replicas"] == 3
    config = of_kind("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"^\s*jetstream\s*\{", config, re.M)
    assert re.search(r"max_payload:\s*2MB", config)  # a 1 MiB event and its attributes
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", config)
    assert routes == ["nats-0", "nats-1", "nats-2"]


def test_the_deployment_runs_up_with_options_it_knows() -> None:
    deployment = of_kind("Deployment", "headwater")
    assert deployment["spec"]["replicas"] >= 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "up"
    known = {opt for param in up.params for opt in param.opts}
    given = [a for a in args if a.startswith("-")]
    assert set(given) <= known, set(given) - known
    assert "--nats" in given and "--node-name" in given
    env = {e["name"] for e in container["env"]}
    assert "HEADWATER_TOKEN" in env  # a non-loopback admin API needs a token


def test_the_probes_read_routes_served_without_the_token() -> None:
    [container] = of_kind("Deployment", "headwater")["spec"]["template"]["spec"]["containers"]
    app = create_app(Runtime(), token="secret")
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path in routes, path
        assert path in PUBLIC_PATHS, path


def test_the_configmap_resources_load_as_files_do() -> None:
    data = of_kind("ConfigMap", "headwater-resources")["data"]
    for name, text in data.items():
        found = collect_text(text, name)
        assert found.problems == [], [str(p) for p in found.problems]
        assert {i.resource.kind for i in found.loaded} >= {"Broker", "MqttBrokerSource"}


def test_the_containerfile_installs_the_wheel_on_a_slim_python() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim$", text, re.M)
    assert "--require-hashes -r /tmp/main.lock" in text
    assert re.search(r"pip install --no-deps /tmp/headwater-\*\.whl", text)
    assert re.search(r"^USER 10001$", text, re.M)
    assert 'ENTRYPOINT ["headwater"]' in text
