"""The dashboard's files are served from the package, and work with a token."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import create_app
from headwater.api.dashboard import STATIC_DIR
from headwater.runtime import Runtime
from tests.unit.api.mesh import Mesh


async def test_index_and_every_asset_it_loads_are_served(mesh: Mesh) -> None:
    index = await mesh.client.get("/")
    assert index.status == 200
    assert index.content_type == "text/html"
    assert "default-src 'self'" in index.headers["Content-Security-Policy"]
    html = await index.text()
    assets = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', html)
    assert assets, "the page loads its scripts and styles from /dashboard/"
    for path in assets:
        response = await mesh.client.get(path)
        assert response.status == 200, path
        assert response.headers["Cache-Control"] == "no-cache"


async def test_modules_import_only_shipped_files(mesh: Mesh) -> None:
    """Every ES module import is a relative path to a file in the package: no CDN."""
    for module in STATIC_DIR.rglob("*.js"):
        if "vendor" in module.parts:
            continue
        text = module.read_text()
        for target in re.findall(r'^import .* from "([^"]+)";$', text, re.M):
            assert target.startswith(("./", "../")), (module, target)
            assert (module.parent / target).resolve().is_file(), (module, target)
        code = text.replace('"http://www.w3.org/2000/svg"', "")  # a namespace name
        assert "http://" not in code and "https://" not in code, module


async def test_vendored_chart_library_ships_with_its_licence() -> None:
    vendor = STATIC_DIR / "vendor"
    assert (vendor / "uPlot.esm.js").stat().st_size > 50_000
    assert "MIT" in (vendor / "uPlot.LICENSE").read_text()
    assert (vendor / "VERSIONS").read_text().startswith("uplot@")


@pytest.mark.parametrize("path", ["/dashboard/../app.py", "/dashboard/%2e%2e/app.py"])
async def test_no_files_outside_the_static_dir(mesh: Mesh, path: str) -> None:
    assert (await mesh.client.get(path)).status in (403, 404)


async def test_the_page_is_public_the_api_needs_the_token() -> None:
    runtime = Runtime()
    async with TestClient(TestServer(create_app(runtime, token="s3cret"))) as client:
        assert (await client.get("/")).status == 200
        assert (await client.get("/dashboard/js/main.js")).status == 200
        assert (await client.get("/api/v1/topology")).status == 401
        # A token in the URL would end up in logs and histories: not accepted.
        assert (await client.get("/api/v1/topology?access_token=s3cret")).status == 401
        ok = await client.get("/api/v1/topology", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200
    await runtime.close()
