"""The dashboard's Nodes view, for a mesh of two nodes and for a single node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.dashboard.conftest import console_errors, until
from tests.e2e.headwater_process import Headwater
from tests.mesh.nodes import Node
from tests.servers import NatsServer


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    root: Path = tmp_path_factory.mktemp("mesh-dashboard")
    with NatsServer(root / "nats") as server:
        nodes = (Node("alpha", server.url, root / "alpha"), Node("beta", server.url, root / "beta"))
        try:
            for node in nodes:
                node.start()
            yield nodes
        finally:
            for node in nodes:
                node.stop()


def rows(page: WebDriver) -> dict[str, str]:
    return {
        str(row.get_attribute("data-node")): str(row.text)
        for row in page.find_elements(By.CSS_SELECTOR, "#node-rows tr")
    }


def test_the_nodes_of_a_mesh_are_listed(browser: WebDriver, two_nodes: tuple[Node, Node]) -> None:
    alpha, beta = two_nodes
    browser.get(alpha.url + "/#nodes")
    console_errors(browser)
    listed = until(lambda: r if len(r := rows(browser)) == 2 else None, what="two nodes")
    assert "this node" in listed["alpha"] and "this node" not in listed["beta"]
    assert beta.url in listed["beta"] and f":{beta.mqtt_port}" in listed["beta"]
    note = browser.find_element(By.ID, "nodes-note").text
    assert "2 node(s) in the mesh" in note
    assert "node alpha" in browser.find_element(By.ID, "conn").text
    # Each address leads to that node's own dashboard.
    link = browser.find_element(By.CSS_SELECTOR, '#node-rows tr[data-node="beta"] a')
    assert link.get_attribute("href") == f"{beta.url}/#nodes"
    errors = console_errors(browser)
    browser.get("about:blank")
    assert errors == []


def test_a_single_node_lists_itself(page: WebDriver, headwater: Headwater) -> None:
    page.find_element(By.CSS_SELECTOR, '#tabs a[data-view="nodes"]').click()
    listed = until(lambda: rows(page), what="the node")
    assert len(listed) == 1
    assert headwater.url in next(iter(listed.values()))
    assert "A single node" in page.find_element(By.ID, "nodes-note").text
