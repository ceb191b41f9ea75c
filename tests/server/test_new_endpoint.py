"""Adding an endpoint is adding one module, and this module is the whole of one: its input and output
models and its pipeline. It is served as a user serves their own, `kiln serve --pipeline MODULE`, and
called over HTTP through the queue and the sync API; no other file names it."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest
from pydantic import BaseModel, Field

from pipelines.contract import Pipeline, RequestContext
from testkit.servers import KilnProcess, wait_completed

pytestmark = pytest.mark.slow  # starts a server process

ENDPOINT = "kiln-test/reverse"


class ReverseInput(BaseModel):
    text: str = Field(description="Text to reverse", max_length=100)


class ReverseOutput(BaseModel):
    reversed: str
    batch_size: int


class ReversePipeline(Pipeline[ReverseInput, str, str]):
    endpoint_id = ENDPOINT
    Input = ReverseInput
    Output = ReverseOutput
    max_batch_size = 4

    def decode(self, inputs: ReverseInput, request: RequestContext) -> str:
        return inputs.text

    def batch_key(self, item: str) -> str:
        return "text"

    def predict(self, items: Sequence[str], requests: Sequence[RequestContext]) -> list[tuple[str, int]]:
        return [(item[::-1], len(items)) for item in items]

    def encode(self, prediction: tuple[str, int], inputs: ReverseInput, request: RequestContext) -> ReverseOutput:
        text, batch_size = prediction
        return ReverseOutput(reversed=text, batch_size=batch_size)


def test_a_module_with_a_pipeline_class_is_served_over_http(tmp_path):
    server = KilnProcess(tmp_path / "data", pipelines=(__name__,)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            run = client.post(f"/run/{ENDPOINT}", json={"text": "kiln"})
            assert run.status_code == 200, run.text
            assert run.json()["reversed"] == "nlik" and run.json()["provenance"]["endpoint"] == ENDPOINT

            queued = client.post(f"/queue/{ENDPOINT}", json={"text": "fal"}).json()
            assert wait_completed(client, queued["status_url"])["status"] == "COMPLETED"
            assert client.get(queued["response_url"]).json()["reversed"] == "laf"

            assert client.post(f"/run/{ENDPOINT}", json={"text": "x" * 101}).status_code == 422
            assert client.get("/health").json()["endpoints"][ENDPOINT] == "available"
            document = client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": ENDPOINT}).json()
            assert f"/{ENDPOINT}" in document["paths"] and "ReverseInput" in document["components"]["schemas"]
    finally:
        server.stop()
