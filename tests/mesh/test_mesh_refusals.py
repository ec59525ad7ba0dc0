"""`headwater up --nats` that cannot join: one clear line and exit code 1, never a hang.

A server without JetStream, no server at all, wrong credentials, a second
node with a name already taken, a node of another mesh protocol.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from headwater.cluster.nodes import MESH_PROTOCOL, NODE_TTL, NODES_BUCKET
from headwater.state.jetstream import JetStreamStore
from tests.mesh.nodes import HEADWATER, Node
from tests.servers import NatsCluster, NatsServer, free_port

pytestmark = pytest.mark.integration

REFUSAL_TIMEOUT = 60.0
"""Seconds `up` may take to give up (it must not hang: the test fails past this)."""


def refused(nats_url: str, data_dir: Path, *extra: str) -> str:
    """Run `headwater up --nats` that must fail; its error output."""
    result = subprocess.run(
        [
            *HEADWATER,
            "up",
            "--nats",
            nats_url,
            "--data-dir",
            str(data_dir),
            "--http-port",
            "0",
            "--mqtt-port",
            "0",
            "--no-http-worker",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT,
    )
    assert result.returncode != 0, result.stdout
    assert "ready" not in result.stdout.splitlines()
    return result.stderr


def test_a_server_without_jetstream_is_named(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", jetstream=False) as server:
        error = refused(server.url, tmp_path / "node")
    assert "does not offer JetStream" in error
    assert "-js" in error


def test_no_server_at_the_address(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    error = refused(url, tmp_path / "node")
    assert f"no NATS server answers at {url}" in error


def test_wrong_credentials_are_named(tmp_path: Path) -> None:
    auth = "authorization { user: hw, password: right }\n"
    with NatsServer(tmp_path / "nats", extra=auth) as server:
        wrong = server.url.replace("nats://", "nats://hw:wrong@")
        error = refused(wrong, tmp_path / "node")
        assert "refused our credentials" in error
        assert "Authorization Violation" in error


def test_mesh_options_need_nats_and_existing_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HEADWATER, "up", "--node-name", "n1", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT,
    )
    assert result.returncode == 2 and "need --nats" in result.stderr
    error = refused("nats://127.0.0.1:4222", tmp_path, "--nats-creds", str(tmp_path / "none.creds"))
    assert "--nats-creds" in error and "no such file" in error


def test_a_second_node_with_a_taken_name_is_refused(
    mesh_node: Callable[..., Node], nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    mesh_node("n1")
    error = refused(nats_cluster.url, tmp_path / "other", "--node-name", "n1")
    assert "node name 'n1' is taken by a running node" in error
    assert "--node-name" in error


def test_a_node_of_another_mesh_protocol_is_refused(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async def pretend_newer_node() -> None:
        store = JetStreamStore(nats_cluster.urls, bucket_ttl={NODES_BUCKET: NODE_TTL})
        try:
            bucket = await store.bucket(NODES_BUCKET)
            doc = {
                "name": "future",
                "version": "9.0.0",
                "protocol": MESH_PROTOCOL + 1,
                "instance": "elsewhere",
                "started": time.time(),
                "heartbeat": time.time(),
            }
            await bucket.put("future", orjson.dumps(doc))
        finally:
            await store.close()

    asyncio.run(pretend_newer_node())
    error = refused(nats_cluster.url, tmp_path / "node", "--node-name", "n1")
    assert "mixed Headwater versions" in error
    assert "headwater 9.0.0" in error and f"mesh protocol {MESH_PROTOCOL + 1}" in error


def test_tls_to_nats_with_the_right_ca_joins_and_with_another_is_refused(
    tmp_path: Path,
) -> None:
    from tests.certs import self_signed

    server_dir, other_dir = tmp_path / "server-cert", tmp_path / "other-cert"
    server_dir.mkdir()
    other_dir.mkdir()
    cert, key = self_signed(server_dir)
    other, _ = self_signed(other_dir)
    tls = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
    with NatsServer(tmp_path / "nats", extra=tls) as server:
        url = server.url.replace("nats://", "tls://")
        error = refused(url, tmp_path / "wrong", "--nats-tls-ca", str(other))
        assert "TLS with NATS" in error and "--nats-tls-ca" in error
        node = Node("secure", url, tmp_path / "secure", extra=["--nats-tls-ca", str(cert)])
        node.start()
        try:
            assert node.api(path="/api/v1/nodes")["items"][0]["name"] == "secure"
        finally:
            node.stop()
