"""API keys: who owns a request, and the keys `kiln serve` refuses to start with."""

from __future__ import annotations

import pytest

from server.auth import KeyRing, owner_of_key
from server.cli import build_parser, settings_from_args
from tests.fixtures.apps import submit

ALPHA, BETA = {"Authorization": "Key team:alpha"}, {"Authorization": "Key team:beta"}


def test_keys_that_share_a_prefix_are_different_owners(make_client):
    """Issue 10 item 16: keys that shared the part before `:` shared one owner, so `team:beta` read
    and cancelled `team:alpha`'s request. The owner is the whole key."""
    client = make_client(api_keys=("team:alpha", "team:beta"))
    queued = submit(client, {"steps": 1}, headers=ALPHA)
    assert client.get(queued["status_url"], headers=BETA).status_code == 404
    assert client.get(queued["response_url"], headers=BETA).status_code == 404
    assert client.put(queued["cancel_url"], headers=BETA).status_code == 404
    assert client.get(queued["status_url"], headers=ALPHA).status_code in (200, 202)

    # an upload URL is charged to, and a multipart upload belongs to, the whole key too
    token_beta = client.post("/rest/storage/auth/token", json={}, headers=BETA).json()["token"]
    token_alpha = client.post("/rest/storage/auth/token", json={}, headers=ALPHA).json()["token"]
    created = client.post("/cdn/files/upload/multipart", headers={"Authorization": f"Bearer {token_alpha}"}).json()
    part = created["access_url"].split("://", 1)[1].split("/", 1)[1] + f"/multipart/{created['uploadId']}/1"
    assert client.put("/" + part, content=b"x", headers={"Authorization": f"Bearer {token_beta}"}).status_code == 404


def test_an_owner_id_is_stable_and_shows_nothing_of_its_key():
    keys = ("team:alpha", "team:beta", "team", "alpha")
    ids = [owner_of_key(key) for key in keys]
    assert len(set(ids)) == len(keys)
    assert ids == [owner_of_key(key) for key in keys]
    assert not any(part in owner for owner in ids for part in ("team", "alpha", "beta"))


@pytest.mark.parametrize(
    "arguments, environment",
    [
        (["--api-key", ""], None),
        (["--api-key", "   "], None),
        (["--api-key", "good-key", "--api-key", ""], None),
        ([], ""),
        ([], " , "),
    ],
)
def test_an_empty_api_key_is_refused(arguments, environment, monkeypatch):
    """Issue 10 item 17: `--api-key ""` (what `--api-key "$KILN_KEY"` gives with the variable unset)
    turned authentication off and kept `--host 0.0.0.0`. An empty or blank key stops `kiln serve`
    with a message and a non-zero exit."""
    if environment is None:
        monkeypatch.delenv("KILN_API_KEYS", raising=False)
    else:
        monkeypatch.setenv("KILN_API_KEYS", environment)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", *arguments])
    with pytest.raises(SystemExit) as exited:
        settings_from_args(args)
    message = exited.value.code
    assert isinstance(message, str) and message.startswith("kiln: ")  # printed; the exit status is 1
    assert ("--api-key" in message and "empty" in message) or "KILN_API_KEYS" in message


def test_keys_are_trimmed_and_a_blank_key_never_reaches_the_key_ring(monkeypatch):
    monkeypatch.setenv("KILN_API_KEYS", " env-key ,, ")
    settings = settings_from_args(build_parser().parse_args(["serve", "--api-key", " flag-key "]))
    assert settings.api_keys == ("flag-key", "env-key") and settings.host == "127.0.0.1"
    with pytest.raises(ValueError, match="empty"):
        KeyRing(("good", " "))
