"""`stepstream serve` serves /docs with no internet: every asset the page references comes
from the server itself (Swagger UI from the installed swagger-ui-bundle package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from stepstream.stack import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_docs_and_every_asset_they_reference_are_served_locally(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPSTREAM_")}
    env |= {"PYTHONPATH": str(ROOT), "STEPSTREAM_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepstream.cli",
            "serve",
            "--port",
            str(port),
            "--redis-url",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        page = None
        while time.monotonic() < deadline:
            try:
                page = httpx.get(f"{base}/docs", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "stepstream serve exited"
                time.sleep(0.2)
        assert page is not None and page.status_code == 200
        html = page.text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert len(refs) >= 4, html  # JS, CSS, icon, the OpenAPI schema
        for ref in refs:
            url = urljoin(f"{base}/docs", ref)
            assert urlsplit(url).netloc == f"127.0.0.1:{port}", f"{ref} is not same-origin"
            response = httpx.get(url, timeout=5)
            assert response.status_code == 200, url
            assert len(response.content) > 100, url
        bundle = httpx.get(f"{base}/docs-assets/swagger-ui-bundle.js", timeout=5)
        assert "SwaggerUIBundle" in bundle.text
        assert httpx.get(f"{base}/openapi.json", timeout=5).json()["info"]["title"] == (
            "stepstream query API"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
