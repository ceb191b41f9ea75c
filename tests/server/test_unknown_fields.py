"""Unknown fields are accepted, as fal accepts them, but never silently: a misspelt `enable_vinyette`
used to be dropped without a word, so the caller saw an image without the vignette and no reason."""

from __future__ import annotations

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from tests.fixtures.apps import submit


def test_a_misspelt_field_is_named_in_the_logs_and_in_provenance(client):
    image = data_uri(png_bytes(gradient_image(8, 6)))
    queued = submit(client, {"image_url": image, "enable_vinyette": True}, path="/queue/fal-ai/post-processing")
    status = wait_completed(client, queued["status_url"])
    assert status.get("error") is None
    logs = [line for line in client.get(queued["status_url"] + "?logs=1").json()["logs"] if line["level"] == "WARN"]
    assert [line["message"] for line in logs] == ["Ignored field(s) this endpoint does not have: enable_vinyette"]
    result = client.get(queued["response_url"]).json()
    assert result["provenance"]["ignored"] == {"enable_vinyette": True}
    assert result["provenance"]["effects"] == []


def test_known_fields_leave_no_ignored_entry(client):
    queued = submit(client, {"steps": 1})
    wait_completed(client, queued["status_url"])
    assert "ignored" not in client.get(queued["response_url"]).json()["provenance"]
