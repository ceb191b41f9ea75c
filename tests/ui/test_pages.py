"""The pages and their JSON calls without a browser: what each page is generated from, that nothing
is loaded from outside Kiln, that a key sees only its own history, requests and comparisons, and the
store's history and queue-depth reads the pages use."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from server.compare import DEFAULT_SEED, MAX_CELLS, ComparisonSpec, plan
from server.store import JobResult, JobStatus, NewJob
from server.store.sqlite import SqliteJobStore
from server.ui.forms import InputError, input_fields, parse_value
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from tests.fixtures.apps import start_app, submit

PP = "fal-ai/post-processing"
PAGES = ("/", f"/playground/{PP}", "/playground/kiln-test/steps", "/compare", "/history")
STATIC = Path(__file__).resolve().parents[2] / "server" / "ui"
IMAGE = data_uri(png_bytes(gradient_image(8, 6)))


class Assets(HTMLParser):
    """The URLs a page loads by itself: scripts, styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "img") and attributes.get("src"):
            self.loaded.append(attributes["src"])
        if tag == "link" and attributes.get("href"):
            self.loaded.append(attributes["href"])


@pytest.fixture(scope="module")
def app(tmp_path_factory, registry):
    """One server without keys for the tests that only read pages and check comparisons."""
    started = start_app(tmp_path_factory.mktemp("pages"), registry)
    yield started
    started.__exit__(None, None, None)


def page_config(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_and_asset_is_served_by_kiln(app, path):
    page = app.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    parser = Assets()
    parser.feed(page.text)
    assert parser.loaded, "the page loads its script and style"
    for url in parser.loaded:
        assert url.startswith("/ui/static/"), f"{path} loads {url} from elsewhere"
        asset = app.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["x-content-type-options"] == "nosniff"


def test_no_template_or_asset_names_another_host():
    """A CDN link in any template, script or style would break the pages on an air-gapped host."""
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".svg"):
            text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{path} names another host"


def test_ui_routes_stay_out_of_the_protocol_schema(app):
    paths = app.get("/openapi.json").json()["paths"]
    assert not [
        path for path in paths if path in ("/", "/compare", "/history") or path.startswith(("/ui", "/playground"))
    ]


def test_static_files_are_only_the_ui_folder(app):
    assert app.get("/ui/static/kiln.js").headers["content-type"].startswith("text/javascript")
    for name in ("..%2Fcompare.py", "missing.js", "kiln.py", "%2Fetc%2Fpasswd"):
        assert app.get(f"/ui/static/{name}").status_code == 404


def test_home_shows_each_endpoint_state_and_the_command_that_fixes_it(app):
    html = app.get("/").text
    health = app.get("/health").json()
    for endpoint_id in health["endpoints"]:
        assert f'data-endpoint="{endpoint_id}"' in html
    row = html[html.index('data-endpoint="kiln-test/needs-weights"') :]
    row = row[: row.index("</tr>")]
    assert "unavailable" in row and "<code>kiln weights pull needs-weights</code>" in row
    assert f'href="/playground/{PP}"' in html and f"openapi.json?endpoint_id={PP}" in html
    assert "<code>cpu</code>" in html


def test_an_unknown_playground_is_a_404_page(app):
    page = app.get("/playground/fal-ai/nothing-here")
    assert page.status_code == 404 and "No endpoint fal-ai/nothing-here" in page.text


def test_the_playground_form_is_the_endpoints_openapi_schema(app):
    """No form is written per endpoint: the page's fields are read from the published document."""
    config = page_config(app.get(f"/playground/{PP}").text)
    document = app.get("/api/openapi/queue/openapi.json", params={"endpoint_id": PP}).json()
    assert config["fields"] == [field.to_json() for field in input_fields(document, PP)]
    fields = {field["name"]: field for field in config["fields"]}
    assert config["fields"][0]["name"] == "image_url" and fields["image_url"]["kind"] == "image"
    assert fields["image_url"]["required"]
    assert fields["grain_style"]["kind"] == "enum" and "kodak" in fields["grain_style"]["options"]
    vignette = fields["vignette_strength"]
    assert (vignette["kind"], vignette["minimum"], vignette["maximum"], vignette["default"]) == ("number", 0, 10, 0.5)
    assert fields["enable_vignette"]["kind"] == "boolean" and fields["enable_vignette"]["default"] is False
    assert fields["seed"]["kind"] == "integer" and fields["seed"]["nullable"]


def test_field_kinds_cover_every_served_schema(app):
    document = app.get("/openapi.json").json()
    kinds = {}
    for endpoint_id in app.get("/health").json()["endpoints"]:
        for field in input_fields(document, endpoint_id):
            kinds.setdefault(field.kind, f"{endpoint_id}:{field.name}")
    assert {"image", "images", "enum", "boolean", "integer", "number", "text", "string", "json"} <= set(kinds)
    fields = {field.name: field for field in input_fields(document, "fal-ai/flux-pro/kontext/max/multi")}
    assert (fields["image_urls"].kind, fields["image_urls"].min_items, fields["image_urls"].max_items) == (
        "images",
        1,
        4,
    )
    assert fields["aspect_ratio"].kind == "enum" and fields["aspect_ratio"].nullable
    image_size = {field.name: field for field in input_fields(document, "fal-ai/pixart-sigma")}["image_size"]
    assert image_size.kind == "json" and "square_hd" in image_size.options and image_size.default == "square_hd"


def test_parse_value_reads_text_as_the_fields_type(app):
    document = app.get("/openapi.json").json()
    fields = {field.name: field for field in input_fields(document, PP)}
    assert parse_value(fields["vignette_strength"], "3") == 3
    assert parse_value(fields["vignette_strength"], "0.25") == 0.25
    assert parse_value(fields["enable_vignette"], "Yes") is True
    assert parse_value(fields["seed"], "null") is None
    assert parse_value(fields["grain_style"], "kodak") == "kodak"
    with pytest.raises(InputError, match="`blur_radius` takes an integer"):
        parse_value(fields["blur_radius"], "2.5")
    with pytest.raises(InputError, match="true or false"):
        parse_value(fields["enable_blur"], "maybe")


def test_history_lists_only_the_callers_requests_newest_first(make_client):
    keyed = make_client(api_keys=("alpha", "beta"))
    alpha, beta = {"Authorization": "Key alpha"}, {"Authorization": "Key beta"}
    first = submit(keyed, {"steps": 1, "tag": "a1"}, headers=alpha)
    second = submit(keyed, {"steps": 1, "tag": "a2"}, headers=alpha)
    other = submit(keyed, {"steps": 1}, headers=beta)
    processed = submit(keyed, {"image_url": IMAGE}, path=f"/queue/{PP}", headers=alpha)
    for queued, headers in ((first, alpha), (second, alpha), (other, beta), (processed, alpha)):
        wait_completed(keyed, queued["status_url"], **headers)

    assert keyed.get("/ui/api/history").status_code == 401
    items = keyed.get("/ui/api/history", headers=alpha).json()["items"]
    assert [item["request_id"] for item in items] == [
        processed["request_id"],
        second["request_id"],
        first["request_id"],
    ]
    assert items[0]["playground_url"] == f"/playground/{PP}?request={processed['request_id']}"
    only_steps = keyed.get("/ui/api/history", params={"endpoint": "kiln-test/steps"}, headers=alpha).json()
    assert [item["request_id"] for item in only_steps["items"]] == [second["request_id"], first["request_id"]]
    assert keyed.get("/ui/api/history", params={"status": "IN_QUEUE"}, headers=alpha).json()["items"] == []
    assert keyed.get("/ui/api/history", params={"status": "DONE"}, headers=alpha).status_code == 422

    page = keyed.get("/ui/api/history", params={"limit": 2}, headers=alpha).json()
    assert len(page["items"]) == 2 and page["next_before"] == page["items"][-1]["created_at"]
    rest = keyed.get("/ui/api/history", params={"limit": 2, "before": page["next_before"]}, headers=alpha).json()
    assert [item["request_id"] for item in rest["items"]] == [first["request_id"]] and rest["next_before"] is None


def test_a_request_reopens_with_its_inputs_for_its_owner_only(make_client):
    keyed = make_client(api_keys=("alpha", "beta"))
    alpha = {"Authorization": "Key alpha"}
    queued = submit(
        keyed, {"image_url": IMAGE, "enable_tint": True, "tint_mode": "cool"}, path=f"/queue/{PP}", headers=alpha
    )
    found = keyed.get(f"/ui/api/requests/{queued['request_id']}", headers=alpha).json()
    assert found["endpoint"] == PP and found["payload"]["tint_mode"] == "cool" and found["payload"]["enable_tint"]
    assert (found["status_url"], found["response_url"]) == (queued["status_url"], queued["response_url"])
    assert (
        keyed.get(f"/ui/api/requests/{queued['request_id']}", headers={"Authorization": "Key beta"}).status_code == 404
    )
    assert keyed.get("/ui/api/requests/no-such-request", headers=alpha).status_code == 404


def test_comparisons_are_checked_saved_and_kept_per_key(make_client):
    keyed = make_client(api_keys=("alpha", "beta"))
    alpha, beta = {"Authorization": "Key alpha"}, {"Authorization": "Key beta"}
    spec = {
        "endpoints": [PP],
        "inputs": {"image_url": IMAGE, "enable_vignette": True},
        "vary": [
            {"name": "vignette_strength", "values": ["0.5", "3"]},
            {"name": "enable_solarize", "values": ["false", "true"]},
        ],
    }
    created = keyed.post("/ui/api/comparisons", json=spec, headers=alpha).json()
    assert created["permalink"] == f"/compare/{created['id']}"
    assert created["rows"]["labels"] == ["vignette_strength=0.5", "vignette_strength=3"]
    assert created["columns"]["values"] == [False, True]
    assert [(cell["row"], cell["column"]) for cell in created["cells"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert created["cells"][3]["inputs"] == {
        **spec["inputs"],
        "seed": DEFAULT_SEED,
        "vignette_strength": 3,
        "enable_solarize": True,
    }
    assert "owner" not in created

    queued = [
        submit(keyed, cell["inputs"], path=f"/queue/{cell['endpoint']}", headers=alpha) for cell in created["cells"][:3]
    ]
    cells = [{"request_id": item["request_id"]} for item in queued] + [
        {"error": "refused", "error_type": "x", "http_status": 422}
    ]
    saved = keyed.put(f"/ui/api/comparisons/{created['id']}/requests", json={"cells": cells}, headers=alpha).json()
    assert saved["cells"][0]["status_url"] == queued[0]["status_url"] and saved["cells"][3]["error"] == "refused"
    assert keyed.get(created["permalink"]).status_code == 200
    assert keyed.get(f"/ui/api/comparisons/{created['id']}", headers=alpha).json() == saved

    # another key: the comparison does not exist, and its requests cannot be claimed for one's own
    assert keyed.get(f"/ui/api/comparisons/{created['id']}", headers=beta).status_code == 404
    theirs = keyed.post("/ui/api/comparisons", json=spec, headers=beta).json()
    stolen = [{"request_id": item["request_id"]} for item in queued] + [{}]
    refused = keyed.put(f"/ui/api/comparisons/{theirs['id']}/requests", json={"cells": stolen}, headers=beta)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "cells", 0, "request_id"]
    assert (
        keyed.put(f"/ui/api/comparisons/{created['id']}/requests", json={"cells": []}, headers=alpha).status_code == 422
    )


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"endpoints": ["fal-ai/none"]}, ["body", "endpoints", 0], "not served"),
        ({"vary": [{"name": "colour", "values": ["1"]}]}, ["body", "vary", 0, "name"], "takes an input `colour`"),
        (
            {"vary": [{"name": "blur_radius", "values": ["2", "x"]}]},
            ["body", "vary", 0, "values", 1],
            "takes an integer",
        ),
        ({"inputs": {"colour": 1}}, ["body", "inputs", "colour"], "takes an input `colour`"),
        (
            {
                "endpoints": [PP, "fal-ai/post-processing/sharpen"],
                "vary": [
                    {"name": "blur_radius", "values": ["1", "2"]},
                    {"name": "sharpen_alpha", "values": ["1", "2"]},
                ],
            },
            ["body", "vary"],
            "at most 2 dimensions",
        ),
        (
            {
                "vary": [
                    {"name": "blur_radius", "values": [str(n) for n in range(16)]},
                    {"name": "glow_radius", "values": [str(n) for n in range(1, 6)]},
                ]
            },
            ["body", "vary"],
            f"at most {MAX_CELLS}",
        ),
    ],
)
def test_a_comparison_that_cannot_run_is_a_422_naming_the_part(app, change, loc, message):
    spec = {"endpoints": [PP], "inputs": {"image_url": IMAGE}, **change}
    refused = app.post("/ui/api/comparisons", json=spec)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == loc and message in refused.json()["detail"][0]["msg"]


def test_several_endpoints_are_the_row_dimension(app):
    document = app.get("/openapi.json").json()
    endpoints = [PP, "fal-ai/post-processing/sharpen"]
    fields = {endpoint: input_fields(document, endpoint) for endpoint in endpoints}
    planned = plan(
        ComparisonSpec(endpoints=endpoints, vary=[{"name": "sharpen_alpha", "values": ["1", "2", "3"]}]), fields
    )
    assert planned.shape == (2, 3) and planned.rows.labels == tuple(endpoints)
    assert [cell.endpoint for cell in planned.cells] == [PP] * 3 + ["fal-ai/post-processing/sharpen"] * 3
    single = plan(ComparisonSpec(endpoints=[PP], vary=[{"name": "sharpen_alpha", "values": ["1", "2"]}]), fields)
    assert single.shape == (1, 2) and single.rows is None


def test_store_history_and_queue_depths(tmp_path):
    clock = iter(range(100, 200))
    store = SqliteJobStore(tmp_path / "queue.db", lease_seconds=30, max_attempts=3, clock=lambda: float(next(clock)))
    try:
        for request_id, owner, endpoint in (
            ("a1", "alpha", "e/one"),
            ("b1", "beta", "e/one"),
            ("a2", "alpha", "e/two"),
            ("a3", "alpha", "e/one"),
        ):
            store.submit(NewJob(request_id=request_id, endpoint=endpoint, owner=owner, payload={"big": "x" * 1000}))
        store.complete(
            "a1", JobResult(status_code=422, body={"detail": []}, error="bad", error_type="image_load_error")
        )
        (claimed,) = store.claim("worker", {"e/one": 1, "e/two": 1})
        assert [job.request_id for job in store.owner_history("alpha")] == ["a3", "a2", "a1"]
        assert [job.request_id for job in store.owner_history("alpha", endpoint="e/one")] == ["a3", "a1"]
        completed = store.owner_history("alpha", status=JobStatus.COMPLETED)
        assert [(job.request_id, job.status_code, job.error_type) for job in completed] == [
            ("a1", 422, "image_load_error")
        ]
        assert [
            job.request_id for job in store.owner_history("alpha", limit=1, before=store.info("a3").created_at)
        ] == ["a2"]
        assert store.owner_history("nobody") == []
        depths = store.queue_depths()
        assert depths[claimed.endpoint]["IN_PROGRESS"] == 1
        assert sum(counts.get("IN_QUEUE", 0) for counts in depths.values()) == 2
        assert sum(counts.get("IN_PROGRESS", 0) for counts in depths.values()) == 1
    finally:
        store.close()


def test_home_counts_each_endpoints_queue(make_client):
    app = make_client()
    blocker = submit(app, {"steps": 300, "step_seconds": 0.02})
    deadline = time.monotonic() + 20
    while app.get(blocker["status_url"]).json()["status"] != "IN_PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.02)
    # submitted once the worker is busy: submitted together, one claim can take both
    waiting = submit(app, {"steps": 1})
    html = app.get("/").text
    row = html[html.index('data-endpoint="kiln-test/steps"') :]
    assert re.findall(r'<td class="num">(\d+)</td>', row[: row.index("</tr>")]) == ["1", "1"]
    app.put(blocker["cancel_url"])
    app.put(waiting["cancel_url"])
