"""Input URLs that point into the server's own network are refused with 422 by default.

`ipaddress.is_global` alone is not enough on this Python (3.11.7: CVE-2024-4032 makes
192.0.0.192 "global", 100.64/10 is not "private", NAT64 forms of link-local are "global").
"""

from __future__ import annotations

import socket

import pytest

REFUSED = [
    "http://127.0.0.1/image.png",
    "http://10.0.0.5/image.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/image.png",
    "http://[::1]/image.png",
    "http://[64:ff9b::a9fe:a9fe]/image.png",
    "http://[::ffff:127.0.0.1]/image.png",
    "http://localhost:8000/image.png",
    "http://loopback.kiln.test/image.png",
    "file:///etc/passwd",
]


@pytest.fixture
def loopback_dns(monkeypatch):
    """Makes `loopback.kiln.test` resolve to 127.0.0.1, as an attacker's DNS record would."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "loopback.kiln.test":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("url", REFUSED)
def test_private_input_urls_are_refused(client, loopback_dns, url):
    response = client.post("/run/kiln-test/steps", json={"image_url": url})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "image_url"]
    assert error["type"] == "url_not_allowed"


def test_private_webhook_is_refused_at_submit(client):
    response = client.post("/queue/kiln-test/steps?fal_webhook=http://127.0.0.1:9/hook", json={})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_allow_private_urls_lets_loopback_through(make_client, loopback_dns):
    client = make_client(allow_private_urls=True)
    response = client.post("/run/kiln-test/steps", json={"image_url": "http://127.0.0.1:9/image.png"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "file_download_error"
