"""/docs and /redoc were blank on an air-gapped host: FastAPI's pages load their scripts from a public
CDN. Every script, style and icon they reference must be served by Kiln itself."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_load_only_from_kiln(client, page):
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    references = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
    assert references, html.text
    for reference in references:
        assert reference.startswith("/"), f"{page} loads {reference} from outside Kiln"
        asset = client.get(reference)
        assert asset.status_code == 200, reference
    scripts = [reference for reference in references if reference.endswith(".js")]
    assert scripts and all(len(client.get(script).content) > 100_000 for script in scripts)


def test_the_assets_are_served_on_every_host(client):
    """A request whose Host starts with `queue.` gets the queue API at the root; the assets keep theirs."""
    assert client.get("/docs/assets/swagger-ui.css", headers={"Host": "queue.kiln.example"}).status_code == 200
