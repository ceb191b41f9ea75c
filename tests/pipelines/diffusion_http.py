"""Driving a diffusion endpoint through Kiln's HTTP API in tests: a server on a given weights store,
submit, wait, fetch the result and its images."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import Settings
from server.registry import Registry
from tests.fixtures.tiny_diffusion import TinyWeights
from tests.server.conftest import wait_completed


def start(data_dir: Path, weights: TinyWeights, registry: Registry, **overrides) -> TestClient:
    """A started in-process server on the tiny weights; `overrides` are Settings fields."""
    settings = Settings(data_dir=data_dir, weights_dir=weights.store, weights_lock=weights.lock, **overrides)
    client = TestClient(create_app(settings, registry))
    client.__enter__()
    return client


def submit(client: TestClient, endpoint: str, payload: dict) -> dict:
    response = client.post(f"/queue/{endpoint}", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def result_of(client: TestClient, queued: dict) -> dict:
    status = wait_completed(client, queued["status_url"], timeout=120)
    assert status.get("error") is None, status
    response = client.get(queued["response_url"])
    assert response.status_code == 200, response.text
    return response.json()


def run(client: TestClient, endpoint: str, payload: dict) -> dict:
    return result_of(client, submit(client, endpoint, payload))


def image_bytes(client: TestClient, image: dict) -> bytes:
    return client.get(urlsplit(image["url"]).path).content


def pixels(client: TestClient, image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_bytes(client, image))))
