"""Each endpoint's OpenAPI document has the shape fal publishes for the same id: the queue base as its
server, paths under the full endpoint id, submit answering `QueueStatus` and the result route the
endpoint's own output schema. Tools that read fal's documents (generators, agents) read Kiln's."""

from __future__ import annotations

import pytest

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed

DOCUMENT = "/api/openapi/queue/openapi.json"
SCHEMA = "#/components/schemas/"


def refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(value) for value in node))
    return set()


@pytest.mark.parametrize(
    ("endpoint", "input_name", "output_name"),
    [
        ("fal-ai/post-processing", "PostProcessingInput", "PostProcessingOutput"),
        ("fal-ai/image2pixel", "Image2PixelInput", "Image2PixelOutput"),
        ("fal-ai/flux/dev/image-to-image", "FluxImageToImageInput", "FluxImageToImageOutput"),
    ],
)
def test_the_document_has_fals_shape(client, endpoint, input_name, output_name):
    document = client.get(DOCUMENT, params={"endpoint_id": endpoint}).json()
    assert document["info"]["x-fal-metadata"] == {"endpointId": endpoint}
    assert document["servers"] == [{"url": "http://127.0.0.1:8000/queue"}]
    request = f"/{endpoint}/requests/{{request_id}}"
    assert document["paths"].keys() == {
        f"/{endpoint}",
        request,
        request + "/status",
        request + "/status/stream",
        request + "/cancel",
    }
    submit = document["paths"][f"/{endpoint}"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": SCHEMA + input_name}
    assert submit["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": SCHEMA + "QueueStatus"}
    result = document["paths"][request]["get"]
    assert result["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": SCHEMA + output_name}
    status = document["paths"][request + "/status"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": SCHEMA + "QueueStatus"}
    assert {parameter["name"] for parameter in status["parameters"]} == {"request_id", "logs"}
    assert "put" in document["paths"][request + "/cancel"]
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    schemas = document["components"]["schemas"]
    assert {ref.removeprefix(SCHEMA) for ref in refs(document)} <= schemas.keys()
    assert {input_name, output_name, "QueueStatus"} <= schemas.keys()


def test_the_documented_paths_work_as_written(client):
    """Every path of the document, filled in and called at its server URL, does what it says."""
    endpoint = "fal-ai/post-processing"
    document = client.get(DOCUMENT, params={"endpoint_id": endpoint}).json()
    base = document["servers"][0]["url"].removeprefix("http://127.0.0.1:8000")
    body = {"image_url": data_uri(png_bytes(gradient_image(8, 6))), "enable_vignette": True}
    queued = client.post(base + f"/{endpoint}", json=body).json()
    paths = {path: path.replace("{request_id}", queued["request_id"]) for path in document["paths"]}
    request = f"/{endpoint}/requests/{{request_id}}"
    wait_completed(client, base + paths[request + "/status"])
    assert client.get(base + paths[request + "/status"]).json()["status"] == "COMPLETED"
    assert client.get(base + paths[request]).json()["images"][0]["width"] == 8
    assert client.put(base + paths[request + "/cancel"]).json() == {"status": "ALREADY_COMPLETED"}
    assert "COMPLETED" in client.get(base + paths[request + "/status/stream"]).text


def test_an_endpoint_not_served_is_404(client):
    assert client.get(DOCUMENT, params={"endpoint_id": "fal-ai/flux/schnell"}).status_code == 404
