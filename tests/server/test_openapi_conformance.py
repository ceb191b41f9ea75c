"""Every route's answers are what `/openapi.json` says they are: each status code is declared for its
operation and each JSON body validates against the declared schema, on the success paths and the
error paths alike. The test fails if an operation in the schema is never exercised, so a new route
needs a case here."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from tests.fixtures.apps import occupy_worker, submit

IMAGE = data_uri(png_bytes(gradient_image(8, 6)))
REQUEST = "/queue/{app_path}/requests/{request_id}"


class Conformance:
    """Checks responses against an OpenAPI document and remembers which operations it saw."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.seen: set[tuple[str, str]] = set()

    def check(self, response, template: str):
        method = response.request.method.lower()
        operation = self.document["paths"][template][method]
        declared = operation["responses"]
        status = str(response.status_code)
        assert status in declared, f"{method.upper()} {template} answered {status}, not in {sorted(declared)}"
        content = declared[status].get("content", {})
        media_type = response.headers.get("content-type", "").split(";")[0]
        if "application/json" in content and media_type == "application/json":
            self.validate(response.json(), content["application/json"].get("schema", {}), template, status)
        elif content:
            assert media_type in content or "*/*" in content, f"{template} {status}: {media_type} not declared"
        self.seen.add((method, template))
        return response

    def check_events(self, response, template: str) -> list[dict]:
        """A status stream: the response itself, and every `data:` event against the stream's schema."""
        self.check(response, template)
        schema = self.document["paths"][template]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        for event in events:
            self.validate(event, schema, template, "event")
        return events

    def validate(self, body, schema: dict, template: str, status: str) -> None:
        errors = list(Draft202012Validator({**schema, "components": self.document["components"]}).iter_errors(body))
        assert not errors, f"{template} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"


@pytest.fixture
def conformance(client) -> Conformance:
    return Conformance(client.get("/openapi.json").json())


def test_every_route_answers_as_its_schema_says(client, make_client, conformance):
    check = conformance.check
    steps, needs_weights = "/queue/kiln-test/steps", "/queue/kiln-test/needs-weights"
    processing = "/queue/fal-ai/post-processing"

    # submit: 200, 422, 429, 501
    done = check(client.post(steps, json={"steps": 1, "tag": "done"}), steps).json()
    check(client.post(steps, json={"steps": 0}), steps)
    check(client.post(needs_weights, json={}), needs_weights)
    blocker = occupy_worker(client)
    waiting = submit(client, {"steps": 1})
    check(client.post(steps + "?fal_max_queue_length=1", json={}), steps)
    check(client.post(processing, json={"image_url": IMAGE, "enable_vignette": True}), processing)

    # status: 202 queued and running, 200 completed, 404
    check(client.get(waiting["status_url"] + "?logs=1"), REQUEST + "/status")
    check(client.get(blocker["status_url"]), REQUEST + "/status")
    wait_completed(client, done["status_url"])
    check(client.get(done["status_url"] + "?logs=true"), REQUEST + "/status")
    check(client.get(done["status_url"].replace(done["request_id"], "0" * 8)), REQUEST + "/status")

    # result: 400 while running, 200, 404
    check(client.get(blocker["response_url"]), REQUEST)
    check(client.get(done["response_url"]), REQUEST)
    check(client.get(done["response_url"].replace(done["request_id"], "0" * 8)), REQUEST)

    # cancel: 200 queued, 202 running, 400 completed, 404
    check(client.put(waiting["cancel_url"]), REQUEST + "/cancel")
    check(client.put(blocker["cancel_url"]), REQUEST + "/cancel")
    check(client.put(done["cancel_url"]), REQUEST + "/cancel")
    check(client.put(done["cancel_url"].replace(done["request_id"], "0" * 8)), REQUEST + "/cancel")

    # the stored results of failed requests: 499 cancelled, 500 endpoint error, 422 unusable input
    wait_completed(client, blocker["status_url"])
    check(client.get(blocker["response_url"]), REQUEST)
    failed = submit(client, {"fail_with": "error"})
    unusable = submit(client, {"image_url": "data:image/png;base64,AAAA"})
    for queued in (failed, unusable):
        wait_completed(client, queued["status_url"])
        assert check(client.get(queued["response_url"]), REQUEST).status_code in (422, 500)

    # status stream: 200 with events, 404
    events = conformance.check_events(client.get(done["status_url"] + "/stream?logs=1"), REQUEST + "/status/stream")
    assert events[-1]["status"] == "COMPLETED"
    check(client.get(done["status_url"].replace(done["request_id"], "0" * 8) + "/stream"), REQUEST + "/status/stream")

    # sync run: 200, 422, 500, 501
    run = "/run/kiln-test/steps"
    assert check(client.post(run, json={"steps": 1}), run).status_code == 200
    check(client.post(run, json={"steps": "many"}), run)
    check(client.post(run, json={"fail_with": "error"}), run)
    check(client.post("/run/kiln-test/needs-weights", json={}), "/run/kiln-test/needs-weights")
    check(client.post("/run/fal-ai/post-processing", json={"image_url": IMAGE}), "/run/fal-ai/post-processing")
    check(client.post("/run/fal-ai/post-processing/sharpen", json={}), "/run/fal-ai/post-processing/sharpen")
    check(client.post("/queue/fal-ai/post-processing/sharpen", json={}), "/queue/fal-ai/post-processing/sharpen")

    # storage: token, both upload paths, download, and the refusals
    token = check(client.post("/rest/storage/auth/token", json={}), "/rest/storage/auth/token").json()
    headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
    uploaded = check(client.post("/cdn/files/upload", content=b"png", headers=headers), "/cdn/files/upload").json()
    check(client.post("/cdn/files/upload", content=b"png", headers={"Authorization": "Bearer x"}), "/cdn/files/upload")
    target = check(
        client.post("/rest/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"}),
        "/rest/storage/upload/initiate",
    ).json()
    check(client.put(target["upload_url"], content=b"png"), "/cdn/uploads/{file_id}")
    check(client.put(target["upload_url"] + "x", content=b"png"), "/cdn/uploads/{file_id}")
    check(client.put(target["upload_url"], content=b"again"), "/cdn/uploads/{file_id}")

    # multipart uploads, as the Python client (CDN token) and the JS client (signed URL) make them
    created = check(client.post("/cdn/files/upload/multipart", headers=headers), "/cdn/files/upload/multipart").json()
    python_part = "/files/{file_id}/{file_name}/multipart/{upload_id}/{part_number}"
    python_complete = "/files/{file_id}/{file_name}/multipart/{upload_id}/complete"
    parts_url = f"{created['access_url']}/multipart/{created['uploadId']}"
    part = check(client.put(parts_url + "/1", content=b"png", headers=headers), python_part).json()
    check(client.put(parts_url + "/1", content=b"png", headers={"Authorization": "Bearer x"}), python_part)
    wrong = {"parts": [{"partNumber": 2, "etag": "x"}]}
    check(client.post(parts_url + "/complete", json=wrong, headers=headers), python_complete)
    check(client.post(parts_url + "/complete", json={"parts": [part]}, headers=headers), python_complete)
    check(client.put(parts_url + "/2", content=b"png", headers=headers), python_part)
    signed = check(
        client.post("/rest/storage/upload/initiate-multipart", json={"file_name": "b.png"}),
        "/rest/storage/upload/initiate-multipart",
    ).json()
    signed_base, signed_query = signed["upload_url"].split("?")
    js_part, js_complete = "/cdn/multipart/{upload_id}/{part_number}", "/cdn/multipart/{upload_id}/complete"
    part = check(client.put(f"{signed_base}/1?{signed_query}", content=b"png"), js_part).json()
    check(client.put(f"{signed_base}/1?token=x", content=b"png"), js_part)
    check(client.post(f"{signed_base}/complete?token=x", json={"parts": [part]}), js_complete)
    check(client.post(f"{signed_base}/complete?{signed_query}", json={"parts": [part]}), js_complete)
    check(client.put(f"{signed_base}/2?{signed_query}", content=b"png"), js_part)

    # the upload limits: a file too large, a key over its file quota (413 both)
    limited = make_client(max_upload_bytes=4, upload_quota_files=1)
    limited_token = limited.post("/rest/storage/auth/token", json={}).json()["token"]
    limited_headers = {"Authorization": f"Bearer {limited_token}"}
    check(limited.post("/cdn/files/upload", content=b"12345", headers=limited_headers), "/cdn/files/upload")
    check(limited.post("/cdn/files/upload", content=b"1", headers=limited_headers), "/cdn/files/upload")
    check(limited.post("/cdn/files/upload", content=b"2", headers=limited_headers), "/cdn/files/upload")
    check(limited.post("/rest/storage/upload/initiate-multipart", json={}), "/rest/storage/upload/initiate-multipart")
    check(limited.post("/cdn/files/upload/multipart", headers=limited_headers), "/cdn/files/upload/multipart")
    path = uploaded["access_url"].split("://", 1)[1].split("/", 1)[1]
    check(client.get("/" + path), "/files/{file_id}/{file_name}")
    check(client.get("/files/none/a.png"), "/files/{file_id}/{file_name}")

    # meta
    check(client.get("/health"), "/health")
    check(client.get("/.well-known/jwks.json"), "/.well-known/jwks.json")
    endpoint_document = "/api/openapi/queue/openapi.json"
    check(client.get(endpoint_document, params={"endpoint_id": "fal-ai/post-processing"}), endpoint_document)
    check(client.get(endpoint_document, params={"endpoint_id": "fal-ai/none"}), endpoint_document)

    # with keys: 401 where a key is needed
    keyed = make_client(api_keys=("team-key",))
    check(keyed.post(steps, json={}), steps)
    check(keyed.post("/rest/storage/auth/token", json={}), "/rest/storage/auth/token")
    check(keyed.post("/rest/storage/upload/initiate", json={}), "/rest/storage/upload/initiate")
    check(keyed.post("/rest/storage/upload/initiate-multipart", json={}), "/rest/storage/upload/initiate-multipart")
    check(keyed.post("/cdn/files/upload/multipart"), "/cdn/files/upload/multipart")

    operations = {
        (method, path)
        for path, item in conformance.document["paths"].items()
        for method in item
        if "/fal-ai/" not in path or "post-processing" in path
    }
    assert operations - conformance.seen == set()


def test_the_check_refuses_an_undeclared_status_and_a_body_off_its_schema(client, conformance):
    status = client.get("/health")
    status.status_code = 418
    with pytest.raises(AssertionError, match="answered 418"):
        conformance.check(status, "/health")
    queue_status = {"$ref": "#/components/schemas/QueueStatus"}
    with pytest.raises(AssertionError, match="required property"):
        conformance.validate({"status": "IN_QUEUE", "request_id": "x"}, queue_status, REQUEST, "200")
    with pytest.raises(AssertionError, match="is not one of"):
        conformance.validate({**submit(client, {"steps": 1}), "status": "DONE"}, queue_status, REQUEST, "200")
