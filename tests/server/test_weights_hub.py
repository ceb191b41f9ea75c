"""Installing weights from the Hugging Face hub, gated repositories, tampering, air-gapped hosts and
container data dirs, against a local hub (testkit/hub.py) that speaks the hub's download API.

huggingface_hub itself runs unpatched: `HF_ENDPOINT` points it at the local hub, which Kiln reads on
every call. The models are a few small files; what matters is what gets pinned where, and what is
refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from server.cli import main
from server.weights import (
    LOCAL_PINS,
    MISMATCH,
    OK,
    HubError,
    WeightsLock,
    WeightsLockError,
    WeightsStore,
    WeightsUnavailable,
)
from testkit.hub import LocalHub
from testkit.servers import REPO, free_port

MODEL, GATED = "tiny-model", "tiny-gated"
OPEN_REPO, GATED_REPO = "kiln-test/tiny-model", "kiln-test/tiny-gated"
TOKEN = "hf_granted_token"
FILES = {
    "model_index.json": b'{"_class_name": "Tiny"}',
    "tokenizer/spiece.model": bytes(range(200)) * 3,
    "unet/weights.safetensors": bytes(range(256)) * 64,
}
NEW_FILES = {**FILES, "unet/weights.safetensors": bytes(reversed(range(256))) * 64}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_entry(repo: str, *, revision: str = "main", pinned: dict | None = None, gated: bool = False) -> dict:
    """A lock entry for FILES; `pinned` maps a path to the bytes whose size and sha256 the lock states."""
    pinned = pinned or {}
    return {
        "repo": repo,
        "revision": revision,
        "license": "tiny-non-commercial" if gated else "apache-2.0",
        "gated": gated,
        "files": [
            {
                "path": path,
                "size": len(pinned[path]) if path in pinned else None,
                "sha256": sha256(pinned[path]) if path in pinned else None,
            }
            for path in FILES
        ],
    }


def write_lock(path: Path, **entries: dict) -> Path:
    path.write_text(json.dumps({"version": 1, "models": {name.replace("_", "-"): e for name, e in entries.items()}}))
    return path


@pytest.fixture
def hub(monkeypatch) -> LocalHub:
    with LocalHub() as hub:
        hub.add_repo(OPEN_REPO, FILES)
        hub.add_repo(GATED_REPO, FILES, gated=True, tokens={TOKEN})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield hub


@pytest.fixture
def offline(monkeypatch):
    """No hub: HF_ENDPOINT names a closed port."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def shipped(tmp_path) -> Path:
    """The lock Kiln ships: both models unpinned (a branch, no sizes or hashes), read-only as in an image."""
    path = write_lock(
        tmp_path / "shipped.lock",
        tiny_model=lock_entry(OPEN_REPO),
        tiny_gated=lock_entry(GATED_REPO, gated=True),
    )
    path.chmod(0o444)
    return path


def store_at(root: Path, lock: Path) -> WeightsStore:
    return WeightsStore(root / "weights", WeightsLock.load(lock))


def states(checks) -> list[str]:
    return [check.state for check in checks]


def kiln_weights(data_dir: Path, lock: Path, *args: str) -> int | str:
    try:
        main(["weights", *args, "--data-dir", str(data_dir), "--weights-lock", str(lock)])
    except SystemExit as exit:
        return exit.code
    return 0


# -- online: pull -----------------------------------------------------------------------------------


class TestPull:
    def test_an_unpinned_model_is_pinned_on_first_use_beside_the_weights(self, hub, shipped, tmp_path):
        before = shipped.read_bytes()
        store = store_at(tmp_path, shipped)
        assert store.unpinned_reason(MODEL) is not None
        assert states(store.pull(MODEL)) == [OK, OK, OK]
        pin = WeightsLock.load(store.pins_path).get(MODEL)
        assert pin.revision == hub.repos[OPEN_REPO].refs["main"]
        assert {file.path: file.sha256 for file in pin.files} == {path: sha256(data) for path, data in FILES.items()}
        assert "trust on first use" in pin.note and hub.endpoint in pin.note
        assert shipped.read_bytes() == before, "the shipped lock is never written"
        assert store.verified_folder(MODEL) == store.folder(MODEL)
        # a restart (a new container on the same volume) reads the pins again
        again = store_at(tmp_path, shipped)
        assert again.problem([MODEL]) is None
        assert again.lock.pinned_where(MODEL) == f"pinned on this machine ({LOCAL_PINS})"

    def test_a_second_pull_downloads_nothing_and_revision_repins(self, hub, shipped, tmp_path):
        store = store_at(tmp_path, shipped)
        store.pull(MODEL)
        first = store.lock.get(MODEL).revision
        downloads = len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1] or r[1].startswith("/lfs/")])
        assert states(store.pull(MODEL)) == [OK, OK, OK]
        assert (
            len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1] or r[1].startswith("/lfs/")])
            == downloads
        )
        moved = hub.commit(OPEN_REPO, NEW_FILES)
        assert store.lock.get(MODEL).revision == first, "a pin stays where it is until asked to move"
        assert states(store.pull(MODEL, revision="main")) == [OK, OK, OK]
        assert store.lock.get(MODEL).revision == moved
        assert (store.folder(MODEL) / "unet/weights.safetensors").read_bytes() == NEW_FILES["unet/weights.safetensors"]

    def test_a_pinned_model_is_pulled_at_its_commit_after_the_branch_moved(self, hub, tmp_path):
        commit = hub.repos[OPEN_REPO].refs["main"]
        lock = write_lock(tmp_path / "pinned.lock", tiny_model=lock_entry(OPEN_REPO, revision=commit, pinned=FILES))
        hub.commit(OPEN_REPO, NEW_FILES)
        store = store_at(tmp_path, lock)
        assert states(store.pull(MODEL)) == [OK, OK, OK]
        assert (store.folder(MODEL) / "unet/weights.safetensors").read_bytes() == FILES["unet/weights.safetensors"]
        assert not store.pins_path.exists(), "nothing to pin: the lock already does"

    def test_a_value_in_the_lock_that_the_hub_contradicts_stops_the_pull(self, hub, tmp_path):
        wrong = {**FILES, "unet/weights.safetensors": b"other bytes"}
        lock = write_lock(
            tmp_path / "l.lock",
            tiny_model=lock_entry(OPEN_REPO, pinned={"unet/weights.safetensors": wrong["unet/weights.safetensors"]}),
        )
        store = store_at(tmp_path, lock)
        with pytest.raises(WeightsLockError, match="the hub has"):
            store.pull(MODEL)
        assert not store.pins_path.exists()

    def test_revision_may_not_contradict_a_pinned_commit(self, hub, tmp_path):
        commit = hub.repos[OPEN_REPO].refs["main"]
        lock = write_lock(tmp_path / "l.lock", tiny_model=lock_entry(OPEN_REPO, revision=commit))
        with pytest.raises(WeightsLockError, match="contradicts"):
            store_at(tmp_path, lock).pull(MODEL, revision="main")

    def test_an_unreachable_hub_says_how_to_install_without_one(self, offline, shipped, tmp_path):
        with pytest.raises(HubError, match="cannot reach the Hugging Face hub") as refused:
            store_at(tmp_path, shipped).pull(MODEL)
        assert f"kiln weights export {MODEL}" in str(refused.value)


# -- tampering ---------------------------------------------------------------------------------------


class TestTampering:
    @pytest.mark.parametrize("path", ["unet/weights.safetensors", "model_index.json"])  # LFS (CDN) and git
    def test_a_changed_byte_on_the_way_is_refused_on_first_use(self, hub, shipped, tmp_path, path):
        hub.tamper(OPEN_REPO, path)
        store = store_at(tmp_path, shipped)
        checks = {check.path: check.state for check in store.pull(MODEL)}
        assert checks[path] == MISMATCH and list(checks.values()).count(OK) == 2
        assert not (store.folder(MODEL) / path).exists()
        assert not store.pins_path.exists(), "nothing that failed its check is pinned"
        with pytest.raises(WeightsUnavailable, match="does not pin"):
            store.verified_folder(MODEL)

    def test_a_changed_byte_is_refused_against_a_pinned_lock(self, hub, tmp_path):
        commit = hub.repos[OPEN_REPO].refs["main"]
        lock = write_lock(tmp_path / "l.lock", tiny_model=lock_entry(OPEN_REPO, revision=commit, pinned=FILES))
        hub.tamper(OPEN_REPO, "unet/weights.safetensors")
        store = store_at(tmp_path, lock)
        assert states(store.pull(MODEL)) == [OK, OK, MISMATCH]
        with pytest.raises(WeightsUnavailable, match="incomplete"):
            store.verified_folder(MODEL)

    def test_a_changed_byte_in_the_store_after_pinning_is_refused(self, hub, shipped, tmp_path):
        store = store_at(tmp_path, shipped)
        store.pull(MODEL)
        target = store.folder(MODEL) / "unet/weights.safetensors"
        data = bytearray(target.read_bytes())
        data[7] ^= 1
        target.write_bytes(bytes(data))
        with pytest.raises(WeightsUnavailable, match="sha256 mismatch"):
            store.verified_folder(MODEL)


# -- gated repositories -------------------------------------------------------------------------------


class TestGated:
    def test_without_a_token_the_message_names_the_licence_page_and_hf_token(self, hub, shipped, tmp_path, capsys):
        message = kiln_weights(tmp_path / "data", shipped, "pull", GATED)
        assert isinstance(message, str) and message.startswith("kiln weights: "), message
        assert f"{hub.endpoint}/{GATED_REPO}" in message and "HF_TOKEN" in message
        assert "tiny-non-commercial" in message and "Traceback" not in message
        assert not (tmp_path / "data/weights" / LOCAL_PINS).exists()

    def test_a_token_without_access_is_told_to_accept_the_licence(self, hub, shipped, tmp_path, monkeypatch):
        monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
        with pytest.raises(HubError, match="refused your token") as refused:
            store_at(tmp_path, shipped).pull(GATED)
        assert f"accept the licence (tiny-non-commercial) at {hub.endpoint}/{GATED_REPO}" in str(refused.value)

    def test_a_granted_token_pulls_and_never_leaves_the_hub(self, hub, shipped, tmp_path, monkeypatch):
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        store = store_at(tmp_path, shipped)
        assert states(store.pull(GATED)) == [OK, OK, OK]
        cdn = [authorized for method, path, authorized in hub.requests if path.startswith("/lfs/")]
        resolve = [authorized for method, path, authorized in hub.requests if "/resolve/" in path]
        assert cdn and not any(cdn), "the token is not sent to the CDN"
        assert resolve and all(resolve)


# -- import: folders users already have ----------------------------------------------------------


class TestImport:
    def test_an_hf_download_local_dir_folder_is_pinned_at_its_commit(self, hub, shipped, tmp_path, monkeypatch):
        from huggingface_hub import snapshot_download

        source = tmp_path / "FLUX-like"  # what `hf download REPO --local-dir DIR` leaves
        snapshot_download(OPEN_REPO, local_dir=source, endpoint=hub.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # import needs no hub
        store = store_at(tmp_path, shipped)
        assert states(store.import_folder(MODEL, source)) == [OK, OK, OK]
        pin = store.lock.get(MODEL)
        assert pin.revision == hub.repos[OPEN_REPO].refs["main"] and "download metadata" in pin.note
        assert store.verified_folder(MODEL) == store.folder(MODEL)

    def test_a_hub_cache_snapshot_is_pinned_and_checked_against_the_blob_names(self, hub, shipped, tmp_path):
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(OPEN_REPO, cache_dir=tmp_path / "hf-cache", endpoint=hub.endpoint))
        store = store_at(tmp_path, shipped)
        # a blob in the cache changed after download: its name (the hub's sha256) no longer matches
        blob = (snapshot / "unet/weights.safetensors").resolve()
        data = bytearray(blob.read_bytes())
        data[3] ^= 1
        blob.write_bytes(bytes(data))
        assert states(store.import_folder(MODEL, snapshot)) == [OK, OK, MISMATCH]
        assert not store.pins_path.exists() and not store.folder(MODEL).exists()
        data[3] ^= 1
        blob.write_bytes(bytes(data))
        assert states(store.import_folder(MODEL, snapshot)) == [OK, OK, OK]
        assert store.lock.get(MODEL).revision == snapshot.name

    def test_a_plain_folder_needs_the_commit(self, shipped, tmp_path):
        source = tmp_path / "plain"
        for path, data in FILES.items():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            (source / path).write_bytes(data)
        store = store_at(tmp_path, shipped)
        with pytest.raises(WeightsLockError, match="pass `--revision COMMIT`"):
            store.import_folder(MODEL, source)
        assert states(store.import_folder(MODEL, source, revision="b" * 40)) == [OK, OK, OK]
        assert store.lock.get(MODEL).revision == "b" * 40


# -- air-gapped hosts ----------------------------------------------------------------------------------


class TestAirGapped:
    def online_store(self, hub, shipped, tmp_path) -> WeightsStore:
        store = store_at(tmp_path / "online", shipped)
        assert states(store.pull(MODEL)) == [OK, OK, OK]
        return store

    def test_export_then_import_moves_verified_weights_and_their_pin(self, hub, shipped, tmp_path, monkeypatch):
        online = self.online_store(hub, shipped, tmp_path)
        carried = online.export(MODEL, tmp_path / "usb")
        assert carried == tmp_path / "usb" / MODEL and (carried / "kiln-weights.json").exists()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        requests = len(hub.requests)
        offline = store_at(tmp_path / "offline", shipped)
        assert states(offline.import_folder(MODEL, carried)) == [OK, OK, OK]
        assert len(hub.requests) == requests
        pin = offline.lock.get(MODEL)
        assert pin.revision == online.lock.get(MODEL).revision and pin.digest == online.lock.get(MODEL).digest
        assert "exported from" in pin.note and "trust on first use" in pin.note
        assert offline.verified_folder(MODEL) == offline.folder(MODEL)

    def test_a_byte_changed_in_transit_is_refused(self, hub, shipped, tmp_path):
        carried = self.online_store(hub, shipped, tmp_path).export(MODEL, tmp_path / "usb")
        target = carried / "tokenizer/spiece.model"
        data = bytearray(target.read_bytes())
        data[0] ^= 1
        target.write_bytes(bytes(data))
        offline = store_at(tmp_path / "offline", shipped)
        assert states(offline.import_folder(MODEL, carried)) == [OK, MISMATCH, OK]
        assert not offline.folder(MODEL).exists() and not offline.pins_path.exists()

    def test_an_export_for_another_model_is_refused(self, hub, shipped, tmp_path):
        carried = self.online_store(hub, shipped, tmp_path).export(MODEL, tmp_path / "usb")
        with pytest.raises(WeightsLockError, match="is an export of 'tiny-model'"):
            store_at(tmp_path / "offline", shipped).import_folder(GATED, carried)

    def test_copying_the_whole_store_works_and_is_rehashed(self, hub, shipped, tmp_path, monkeypatch):
        online = self.online_store(hub, shipped, tmp_path)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        shutil.copytree(online.root, tmp_path / "offline/weights")  # `rsync -a` to the other host
        copied = store_at(tmp_path / "offline", shipped)
        assert copied.problem([MODEL]) is None
        assert states(copied.verify(MODEL, rehash=True)) == [OK, OK, OK]
        target = copied.folder(MODEL) / "unet/weights.safetensors"
        data = bytearray(target.read_bytes())
        data[1] ^= 1
        target.write_bytes(bytes(data))
        with pytest.raises(WeightsUnavailable, match="sha256 mismatch"):
            copied.verified_folder(MODEL)


# -- containers: pins in the data dir, `docker run kiln weights ...` -------------------------------------


class TestContainer:
    def test_pins_survive_recreating_the_container(self, hub, tmp_path, monkeypatch, capsys):
        """`docker run -v kiln-data:/data kiln weights pull NAME`: the image's lock is read-only and is
        replaced with the image; only the /data volume outlives the container."""
        image = tmp_path / "image-1"
        image.mkdir()
        lock = write_lock(image / "weights.lock", tiny_model=lock_entry(OPEN_REPO))
        lock.chmod(0o444)
        image.chmod(0o555)
        volume = tmp_path / "volume"
        monkeypatch.setenv("KILN_DATA_DIR", str(volume))  # the image's ENV
        try:
            assert kiln_weights_default_data_dir(lock, "pull", MODEL) == 0
        finally:
            image.chmod(0o755)
        out = capsys.readouterr()
        assert "trust on first use" in out.err and f"pinned {hub.repos[OPEN_REPO].refs['main']}" in out.out
        assert (volume / "weights" / LOCAL_PINS).exists()

        recreated = tmp_path / "image-2"  # a new container from the same (or a newer) image
        recreated.mkdir()
        shutil.copy(lock, recreated / "weights.lock")
        assert kiln_weights_default_data_dir(recreated / "weights.lock", "list") == 0
        listing = capsys.readouterr().out
        assert f"pinned on this machine ({LOCAL_PINS}); installed" in listing

    def test_a_newer_lock_that_pins_other_weights_overrides_the_local_pin(self, hub, shipped, tmp_path):
        store = store_at(tmp_path, shipped)
        store.pull(MODEL)
        newer = write_lock(
            tmp_path / "newer.lock",
            tiny_model=lock_entry(OPEN_REPO, revision="c" * 40, pinned=NEW_FILES),
        )
        upgraded = store_at(tmp_path, newer)
        assert upgraded.lock.get(MODEL).revision == "c" * 40
        assert MODEL in upgraded.lock.ignored_pins
        assert "do not match weights.lock" in upgraded.problem([MODEL])

    def test_the_image_runs_kiln_with_serve_as_the_default_command(self):
        dockerfile = (REPO / "Dockerfile.cuda").read_text()
        assert 'ENTRYPOINT ["kiln"]' in dockerfile
        assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile
        assert "KILN_DATA_DIR=/data" in dockerfile


def kiln_weights_default_data_dir(lock: Path, *args: str) -> int | str:
    """`kiln weights ...` with the data dir from the environment, as in the container."""
    try:
        main(["weights", *args, "--weights-lock", str(lock)])
    except SystemExit as exit:
        return exit.code
    return 0


# -- `kiln weights lock` ------------------------------------------------------------------------------


class TestLockCommand:
    def test_lock_pins_from_hub_metadata_into_the_store_or_the_lock_file(self, hub, tmp_path):
        lock = write_lock(tmp_path / "maintained.lock", tiny_model=lock_entry(OPEN_REPO))
        assert kiln_weights(tmp_path / "data", lock, "lock", MODEL) == 0
        pins = WeightsLock.load(tmp_path / "data/weights" / LOCAL_PINS).get(MODEL)
        assert pins.pinned and pins.revision == hub.repos[OPEN_REPO].refs["main"]
        assert {f.path: f.sha256 for f in pins.files} == {path: sha256(data) for path, data in FILES.items()}
        # LFS files were not downloaded: their hashes come from the hub's metadata
        assert not [path for method, path, _ in hub.requests if path.startswith("/lfs/")]
        assert not WeightsLock.load(lock).get(MODEL).pinned
        assert kiln_weights(tmp_path / "data", lock, "lock", MODEL, "--write-lock") == 0
        assert WeightsLock.load(lock).get(MODEL).files == pins.files

    def test_lock_refuses_a_hub_that_contradicts_the_lock(self, hub, tmp_path):
        lock = write_lock(
            tmp_path / "l.lock", tiny_model=lock_entry(OPEN_REPO, pinned={"model_index.json": b"something else"})
        )
        message = kiln_weights(tmp_path / "data", lock, "lock", MODEL)
        assert isinstance(message, str) and "the hub has" in message
