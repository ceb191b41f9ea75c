"""fal's queue protocol as the clients rely on it: codes, required keys, spellings, errors, ownership."""

from __future__ import annotations

import json
import time

import pytest

from server.errors import ClientDisconnected
from server.store import JobResult
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from tests.fixtures.apps import STEPS, occupy_worker, submit


# the tests of what the queue decides also run on a Redis queue (`queue_backend`, tests/conftest.py)
on_both_queues = pytest.mark.parametrize("queue_backend", ["sqlite", "redis"])


@on_both_queues
def test_submit_status_result_round_trip(client):
    queued = submit(client, {"steps": 2, "tag": "hello"})
    assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 0
    for key in ("request_id", "response_url", "status_url", "cancel_url"):
        assert queued[key]
    assert queued["status_url"] == queued["response_url"] + "/status"
    assert queued["response_url"].endswith(f"/queue/kiln-test/steps/requests/{queued['request_id']}")

    done = wait_completed(client, queued["status_url"])
    assert done["logs"] is None and done["metrics"]["inference_time"] > 0
    result = client.get(queued["response_url"])
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == queued["request_id"]
    assert result.json()["tag"] == "hello" and result.json()["steps_done"] == 2
    provenance = result.json()["provenance"]
    assert provenance["endpoint"] == "kiln-test/steps" and provenance["kiln_version"]
    assert set(provenance["timings"]) >= {"decode", "predict", "encode"}


@on_both_queues
def test_status_codes_keys_and_spellings(client):
    blocker = occupy_worker(client)
    waiting = submit(client)
    queued = client.get(waiting["status_url"])
    assert queued.status_code == 202
    assert queued.json()["queue_position"] == 0 and queued.json()["logs"] is None
    running = client.get(blocker["status_url"])
    assert running.status_code == 202 and "queue_position" not in running.json()
    assert running.json()["logs"] is None
    for flag in ("1", "true", "True"):
        logs = client.get(blocker["status_url"] + f"?logs={flag}").json()["logs"]
        assert logs and logs[0]["source"] == "USER" and logs[0]["level"] == "INFO"
        assert logs[0]["timestamp"].endswith("+00:00")
    for flag in ("0", "false"):
        assert client.get(blocker["status_url"] + f"?logs={flag}").json()["logs"] is None
    assert client.get(blocker["status_url"] + "/?logs=1").status_code == 202
    assert client.get(blocker["response_url"] + "/").status_code == 400
    assert client.put(blocker["cancel_url"] + "/").status_code == 202
    done = client.get(blocker["status_url"])
    while done.status_code != 200:
        done = client.get(blocker["status_url"])
    assert done.json()["status"] == "COMPLETED"


@on_both_queues
def test_progress_shows_in_logs(client):
    queued = submit(client, {"steps": 4})
    wait_completed(client, queued["status_url"])
    messages = [line["message"] for line in client.get(queued["status_url"] + "?logs=1").json()["logs"]]
    assert [m for m in messages if m.startswith("step ")] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]


def test_result_before_completion_is_400(client):
    blocker = occupy_worker(client)
    response = client.get(blocker["response_url"])
    assert response.status_code == 400
    assert response.json()["detail"] == "Request is still in progress"
    client.put(blocker["cancel_url"])


def test_full_endpoint_id_is_accepted_in_request_urls(client):
    queued = submit(client)
    wait_completed(client, queued["status_url"])
    rid = queued["request_id"]
    assert client.get(f"/queue/kiln-test/steps/requests/{rid}").status_code == 200
    assert client.get(f"/queue/kiln-test/other/requests/{rid}").status_code == 404


def test_unknown_ids_and_endpoints_are_404(client):
    assert client.get(f"{STEPS}/requests/nope/status").status_code == 404
    assert client.get(f"{STEPS}/requests/nope").status_code == 404
    cancel = client.put(f"{STEPS}/requests/nope/cancel")
    assert cancel.status_code == 404 and cancel.json() == {"status": "NOT_FOUND"}
    missing = client.post("/queue/fal-ai/no-such-model", json={})
    assert missing.status_code == 404 and "x-fal-request-id" in missing.headers
    assert client.post("/run/fal-ai/no-such-model", json={}).status_code == 404


def test_invalid_input_is_422_in_fastapi_shape(client):
    response = client.post(STEPS, json={"steps": "many"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "steps"]
    assert "x-fal-request-id" in response.headers
    assert client.post(STEPS, json={"fail_with": "nonsense"}).status_code == 422


def test_binary_body_is_422_not_500(client):
    """Regression: undecodable bytes in the body once turned the 422 handler into a 500 (fal SDK)."""
    response = client.post(STEPS, content=b"\xff\xfe\x00\x80binary", headers={"content-type": "application/json"})
    assert response.status_code == 422
    json.dumps(response.json())
    response = client.post(STEPS, content=b"\x89PNG\r\n", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 422


def test_oversized_body_is_413(make_client):
    client = make_client(max_body_bytes=1000)
    response = client.post(STEPS, json={"tag": "x" * 2000})
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"


@on_both_queues
def test_failed_request_is_completed_with_error(client):
    queued = submit(client, {"fail_with": "error"})
    done = wait_completed(client, queued["status_url"])
    assert done["error"] and done["error_type"] == "runner_server_error"
    result = client.get(queued["response_url"])
    assert result.status_code == 500 and "failed on purpose" in result.json()["detail"]
    assert result.headers["x-fal-error-type"] == "runner_server_error"


def test_out_of_memory_fails_the_request_and_the_worker_carries_on(client):
    oom = submit(client, {"fail_with": "oom"})
    after = submit(client, {"tag": "after"})
    assert wait_completed(client, oom["status_url"])["error_type"] == "out_of_memory"
    assert client.get(oom["response_url"]).status_code == 413
    wait_completed(client, after["status_url"])
    assert client.get(after["response_url"]).json()["tag"] == "after"


@on_both_queues
def test_cancel_queued_running_and_completed(client):
    blocker = occupy_worker(client)
    queued = submit(client)
    cancel = client.put(queued["cancel_url"])
    assert cancel.status_code == 200 and cancel.json() == {"status": "OK"}
    status = client.get(queued["status_url"])
    assert status.status_code == 200 and status.json()["error_type"] == "client_cancelled"
    assert client.get(queued["response_url"]).status_code == 499

    cancel = client.put(blocker["cancel_url"])
    assert cancel.status_code == 202 and cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    done = wait_completed(client, blocker["status_url"])
    assert done["error_type"] == "client_cancelled"
    steps = [l for l in client.get(blocker["status_url"] + "?logs=1").json()["logs"] if l["message"].startswith("step")]
    assert len(steps) < 500

    again = client.put(blocker["cancel_url"])
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}


@on_both_queues
def test_priority_low_runs_after_normal(make_client):
    client = make_client(max_batch_size=1)
    blocker = occupy_worker(client)
    low = submit(client, {"tag": "low"}, headers={"X-Fal-Queue-Priority": "low"})
    normal = submit(client, {"tag": "normal"}, headers={"X-Fal-Queue-Priority": "normal"})
    unknown = submit(client, {"tag": "unknown"}, headers={"X-Fal-Queue-Priority": "urgent"})
    positions = [client.get(q["status_url"]).json()["queue_position"] for q in (normal, unknown, low)]
    assert positions == [0, 1, 2]
    client.put(blocker["cancel_url"])
    started = {}
    for name, queued in (("normal", normal), ("unknown", unknown), ("low", low)):
        wait_completed(client, queued["status_url"])
        started[name] = client.get(queued["status_url"] + "?logs=1").json()["logs"][0]["timestamp"]
    assert started["normal"] < started["unknown"] < started["low"]


@on_both_queues
def test_max_queue_length_is_429(client):
    blocker = occupy_worker(client)
    submit(client)
    full = client.post(STEPS + "?fal_max_queue_length=1", json={})
    assert full.status_code == 429 and full.json()["error_type"] == "queue_full"
    assert client.post(STEPS + "?fal_max_queue_length=2", json={}).status_code == 200
    assert client.post(STEPS + "?fal_max_queue_length=-1", json={}).status_code == 422
    client.put(blocker["cancel_url"])


@on_both_queues
def test_start_timeout_expires_waiting_request(make_client):
    client = make_client(janitor_seconds=0.05)
    blocker = occupy_worker(client)
    late = submit(client, headers={"X-Fal-Request-Timeout": "1.5"})
    done = wait_completed(client, late["status_url"])
    assert done["error_type"] == "request_timeout"
    result = client.get(late["response_url"])
    assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
    assert client.post(STEPS, json={}, headers={"X-Fal-Request-Timeout": "soon"}).status_code == 422
    client.put(blocker["cancel_url"])


@on_both_queues
def test_compatible_waiting_requests_run_as_one_batch(client):
    blocker = occupy_worker(client)
    batch = [submit(client, {"steps": 2, "tag": f"b{i}"}) for i in range(3)]
    odd = submit(client, {"steps": 3, "tag": "odd"})
    client.put(blocker["cancel_url"])
    results = []
    for queued in [*batch, odd]:
        wait_completed(client, queued["status_url"])
        results.append(client.get(queued["response_url"]).json())
    assert [r["batch_size"] for r in results] == [3, 3, 3, 1]
    assert [r["tag"] for r in results] == ["b0", "b1", "b2", "odd"]


@on_both_queues
def test_sync_run_returns_output_and_errors_directly(client):
    response = client.post("/run/kiln-test/steps", json={"steps": 1, "tag": "sync"})
    assert response.status_code == 200 and response.json()["tag"] == "sync"
    assert response.headers["x-fal-request-id"]
    failed = client.post("/run/kiln-test/steps", json={"fail_with": "error"})
    assert failed.status_code == 500 and failed.headers["x-fal-error-type"] == "runner_server_error"
    assert client.post("/run/kiln-test/steps", json={"steps": 0}).status_code == 422


def test_endpoint_without_weights_answers_clearly(client):
    response = client.post("/queue/kiln-test/needs-weights", json={})
    assert response.status_code == 501
    assert "kiln weights pull" in response.json()["detail"]
    health = client.get("/health").json()
    assert "kiln weights pull" in health["endpoints"]["kiln-test/needs-weights"]
    assert health["endpoints"]["kiln-test/steps"] == "available"


def test_image_inputs_take_data_uris_and_bad_images_are_422(client):
    image = png_bytes(gradient_image(20, 10))
    ok = client.post("/run/kiln-test/steps", json={"image_url": data_uri(image)})
    assert ok.status_code == 200 and ok.json()["image_size"] == [20, 10]
    bad = client.post("/run/kiln-test/steps", json={"image_url": data_uri(b"not an image")})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "image_url"]
    assert bad.json()["detail"][0]["type"] == "image_load_error"


class TestKeys:
    @pytest.fixture
    def keyed(self, make_client):
        return make_client(api_keys=("alice:secret-a", "bob:secret-b"))

    def test_missing_or_wrong_key_is_401(self, keyed):
        assert keyed.post(STEPS, json={}).status_code == 401
        assert keyed.post(STEPS, json={}, headers={"Authorization": "Key alice:wrong"}).status_code == 401
        assert keyed.post(STEPS, json={}, headers={"Authorization": "Bearer alice:secret-a"}).status_code == 401

    @on_both_queues
    def test_one_key_cannot_see_another_keys_request(self, keyed):
        alice = {"Authorization": "Key alice:secret-a"}
        bob = {"Authorization": "Key bob:secret-b"}
        blocker = occupy_worker(keyed, **alice)
        queued = submit(keyed, {}, headers=alice)
        assert keyed.get(queued["status_url"], headers=bob).status_code == 404
        assert keyed.get(queued["response_url"], headers=bob).status_code == 404
        assert keyed.get(queued["status_url"] + "/stream", headers=bob).status_code == 404
        cancel = keyed.put(queued["cancel_url"], headers=bob)
        assert cancel.status_code == 404 and cancel.json() == {"status": "NOT_FOUND"}
        assert keyed.get(queued["status_url"], headers=alice).json()["status"] == "IN_QUEUE"
        keyed.put(blocker["cancel_url"], headers=alice)
        wait_completed(keyed, queued["status_url"], **alice)
        assert keyed.get(queued["response_url"], headers=alice).status_code == 200


@on_both_queues
def test_status_stream_sends_changes_until_completed(client):
    queued = submit(client, {"steps": 3, "step_seconds": 0.05})
    events = []
    with client.stream("GET", queued["status_url"] + "/stream?logs=1") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert events[-1]["status"] == "COMPLETED"
    messages = [log["message"] for event in events for log in (event["logs"] or [])]
    assert len(messages) == len(set(messages)), "each event carries only new logs"
    assert [m for m in messages if m.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]


def test_js_proxy_dispatches_on_target_url(client):
    target = {"x-fal-target-url": "https://queue.fal.run/kiln-test/steps"}
    queued = client.post("/api/fal/proxy", json={"tag": "proxied"}, headers=target)
    assert queued.status_code == 200
    rid = queued.json()["request_id"]
    status_target = {"x-fal-target-url": f"https://queue.fal.run/kiln-test/steps/requests/{rid}/status?logs=1"}
    while client.get("/api/fal/proxy", headers=status_target).json()["status"] != "COMPLETED":
        time.sleep(0.02)
    result = client.get("/api/fal/proxy", headers={"x-fal-target-url": f"https://queue.fal.run/kiln-test/steps/requests/{rid}"})
    assert result.json()["tag"] == "proxied"
    run = client.post("/api/fal/proxy", json={"tag": "run"}, headers={"x-fal-target-url": "https://fal.run/kiln-test/steps"})
    assert run.json()["tag"] == "run"
    assert client.post("/api/fal/proxy", json={}, headers={"x-fal-target-url": "https://evil.example/x"}).status_code == 400
    assert client.post("/api/fal/proxy", json={}).status_code == 400


def test_queue_host_serves_the_queue_api_at_the_root(make_client):
    client = make_client(allowed_hosts=("kiln.example",))
    queue_host = {"Host": "queue.kiln.example"}
    queued = client.post("/kiln-test/steps", json={"tag": "host"}, headers=queue_host)
    assert queued.status_code == 200 and queued.json()["status"] == "IN_QUEUE"
    assert queued.json()["status_url"].startswith("http://queue.kiln.example/kiln-test/steps/requests/")
    path = "/kiln-test/steps/requests/" + queued.json()["request_id"]
    while client.get(path + "/status", headers=queue_host).status_code != 200:
        time.sleep(0.02)
    assert client.get(path, headers=queue_host).json()["tag"] == "host"
    assert client.get("/health", headers=queue_host).status_code == 200
    run = client.post("/kiln-test/steps", json={"tag": "root-run"}, headers={"Host": "kiln.example"})
    assert run.status_code == 200 and run.json()["tag"] == "root-run"


def test_openapi_documents(client):
    whole = client.get("/openapi.json").json()
    assert "/queue/kiln-test/steps" in whole["paths"] and "/run/kiln-test/steps" in whole["paths"]
    one = client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": "kiln-test/steps"}).json()
    assert "/kiln-test/steps" in one["paths"]
    assert "/kiln-test/steps/requests/{request_id}/status" in one["paths"]
    assert not any("post-processing" in path for path in one["paths"])
    assert "StepsInput" in one["components"]["schemas"] and "StepsOutput" in one["components"]["schemas"]
    assert client.get("/api/openapi/queue/openapi.json", params={"endpoint_id": "nope/nope"}).status_code == 404


FORGED_HOST = {"Host": "queue.attacker.example"}


class TestHostHeader:
    """Regression (issue 10, item 21): the Host header of a request that reached the queue API as
    `queue.<name>` was put into `response_url`, `status_url` and `cancel_url` whatever it was, so a
    client (or anything in front of Kiln) could make the server hand out URLs of another host."""

    def test_an_unconfigured_host_is_not_reflected(self, client):
        queued = submit(client, {}, path="/kiln-test/steps", headers=FORGED_HOST)
        base = client.app.state.services.settings.base_url
        for key in ("response_url", "status_url", "cancel_url"):
            assert queued[key].startswith(f"{base}/queue/kiln-test/steps/requests/"), queued[key]
        assert client.get(queued["status_url"]).status_code in (200, 202)

    def test_public_url_wins_over_any_host(self, make_client):
        client = make_client(public_url="https://kiln.example.com/prefix/", allowed_hosts=("attacker.example",))
        for host in (FORGED_HOST, {"Host": "queue.kiln.example.com"}):
            queued = submit(client, {}, path="/kiln-test/steps", headers=host)
            assert queued["status_url"].startswith("https://kiln.example.com/prefix/queue/kiln-test/steps/requests/")

    def test_only_configured_names_are_kept(self, make_client):
        client = make_client(allowed_hosts=("kiln.example",))
        kept = submit(client, {}, path="/kiln-test/steps", headers={"Host": "queue.kiln.example:8443"})
        assert kept["status_url"].startswith("http://queue.kiln.example:8443/kiln-test/steps/requests/")
        for forged in ("queue.attacker.example", "queue.kiln.example.attacker.example", "queue.kiln.example@evil", "queue.kiln.example:80/x"):
            queued = submit(client, {}, path="/kiln-test/steps", headers={"Host": forged})
            assert queued["status_url"].startswith(client.app.state.services.settings.base_url + "/queue/"), forged

    def test_allowed_host_flag(self):
        from server.cli import build_parser, settings_from_args

        args = build_parser().parse_args(["serve", "--allowed-host", "Kiln.Example", "--allowed-host", "gpu.lan"])
        assert settings_from_args(args).allowed_hosts == ("kiln.example", "gpu.lan")


class TestFalProtocolDetails:
    """Issue 11, item 5: small differences from fal's gateway that clients trip over."""

    def test_trailing_slash_on_submit_is_the_same_endpoint(self, client):
        """Regression: `POST /queue/fal-ai/post-processing/` answered 404 "Endpoint ... is not served here"."""
        queued = submit(client, {"tag": "slash"}, path=STEPS + "/")
        assert queued["status_url"].startswith(client.app.state.services.settings.base_url + STEPS + "/requests/")
        run = client.post("/run/kiln-test/steps/", json={"tag": "slash"})
        assert run.status_code == 200 and run.json()["tag"] == "slash"

    @pytest.mark.parametrize("path", [STEPS, "/queue/fal-ai/no-such-model", "/queue/kiln-test/steps/requests", "/run/kiln-test/steps"])
    def test_unknown_get_under_queue_is_404_not_405(self, client, path):
        """Regression: a GET that only a POST route matched answered 405."""
        response = client.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["error_type"] == "not_found" and response.headers["x-fal-request-id"]

    def test_head_health(self, client):
        """Regression: `HEAD /health` answered 405; load balancers probe with HEAD."""
        response = client.head("/health")
        assert response.status_code == client.get("/health").status_code == 200
        assert response.content == b""


def test_a_path_nothing_serves_is_404_in_fals_shape(client):
    """fal-client's `POST /rest/tokens/` got Starlette's bare {"detail": "Not Found"}: no error_type."""
    for method, path in (("POST", "/rest/tokens/"), ("GET", "/nothing/here")):
        response = client.request(method, path)
        assert response.status_code == 404
        assert response.json()["error_type"] == "not_found" and response.headers["x-fal-error-type"] == "not_found"


@on_both_queues
def test_a_sync_run_whose_caller_went_away_says_so(client):
    """The running request of a disconnected `/run` caller was completed as a plain cancellation."""
    blocker = occupy_worker(client)
    services = client.app.state.services
    services.store.cancel(blocker["request_id"], JobResult.from_error(ClientDisconnected()))
    services.pool.cancel(blocker["request_id"], ClientDisconnected())
    status = wait_completed(client, blocker["status_url"])
    assert status["error_type"] == "client_disconnected" and status["error"] == "The client disconnected"
