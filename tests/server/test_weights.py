"""weights.lock, the weights store and `kiln weights`: Kiln loads only bytes the lock vouches for.

The models here are a few small files; what matters is the bookkeeping (sizes, sha256s, records of
past hashing), which does not depend on what the bytes mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

import server.weights as weights_module
from server.cli import main
from server.config import Settings
from server.registry import Registry
from server.weights import (
    MISMATCH,
    MISSING,
    OK,
    UNVERIFIED,
    WRONG_SIZE,
    LockedModel,
    WeightsLock,
    WeightsLockError,
    WeightsStore,
    WeightsUnavailable,
)
from testkit.servers import REPO

MODEL = "tiny-model"
COMMIT = "a" * 40
FILES = {"model_index.json": b'{"_class_name": "Tiny"}', "unet/weights.safetensors": bytes(range(256)) * 64}
HOUR_NS = 3600 * 10**9


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_document(files: dict[str, bytes] = FILES, **overrides) -> dict:
    entry = {
        "repo": "kiln-test/tiny-model",
        "revision": COMMIT,
        "license": "apache-2.0",
        "gated": False,
        "files": [{"path": path, "size": len(data), "sha256": sha256(data)} for path, data in files.items()],
        **overrides,
    }
    return {"version": 1, "models": {MODEL: entry}}


def write_folder(folder: Path, files: dict[str, bytes] = FILES, *, age_ns: int = HOUR_NS) -> None:
    """Writes the files with an mtime `age_ns` in the past, as weights installed a while ago are."""
    then = time.time_ns() - age_ns
    for path, data in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, ns=(then, then))


@pytest.fixture
def lock_path(tmp_path) -> Path:
    path = tmp_path / "weights.lock"
    path.write_text(json.dumps(lock_document()))
    return path


@pytest.fixture
def store(tmp_path, lock_path) -> WeightsStore:
    return WeightsStore(tmp_path / "weights", WeightsLock.load(lock_path))


@pytest.fixture
def hash_count(monkeypatch) -> list[str]:
    """Every file the store hashes, in order."""
    hashed: list[str] = []
    real = weights_module.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(weights_module, "sha256_file", counting)
    return hashed


def flip_a_byte(path: Path, *, keep_mtime: bool = False) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# -- the lock ------------------------------------------------------------------------------------


class TestLock:
    def test_round_trip_keeps_every_field(self, lock_path):
        lock = WeightsLock.load(lock_path)
        lock.save()
        assert json.loads(lock_path.read_text()) == lock_document()
        assert lock.get(MODEL).pinned

    @pytest.mark.parametrize(
        "bad_file",
        [
            {"path": "../outside.bin", "size": 1, "sha256": "0" * 64},
            {"path": "/etc/passwd", "size": 1, "sha256": "0" * 64},
            {"path": "a.bin", "size": 1, "sha256": "XYZ"},
            {"path": "a.bin", "size": -1, "sha256": "0" * 64},
        ],
    )
    def test_malformed_entries_are_rejected(self, tmp_path, bad_file):
        path = tmp_path / "weights.lock"
        document = lock_document()
        document["models"][MODEL]["files"] = [bad_file]
        path.write_text(json.dumps(document))
        with pytest.raises(WeightsLockError, match="weights.lock model 'tiny-model'"):
            WeightsLock.load(path)

    def test_a_missing_lock_is_empty_and_says_so_per_model(self, tmp_path):
        store = WeightsStore(tmp_path / "weights", WeightsLock.load(tmp_path / "nowhere.lock"))
        assert "has no model named 'tiny-model'" in store.problem([MODEL])

    def test_digest_names_the_exact_files(self, lock_path):
        model = WeightsLock.load(lock_path).get(MODEL)
        changed = lock_document()["models"][MODEL]
        changed["files"][1]["sha256"] = "0" * 64
        assert LockedModel.from_json(MODEL, changed).digest != model.digest
        assert LockedModel.from_json(MODEL, lock_document()["models"][MODEL]).digest == model.digest

    def test_the_shipped_lock_loads_and_every_hash_it_records_is_well_formed(self):
        lock = WeightsLock.load(Path(__file__).resolve().parents[2] / "weights.lock")
        assert {"pixart-sigma-xl-2-1024-ms", "flux-1-dev", "flux-1-kontext-dev", "nsfw-image-detection"} <= set(
            lock.models
        )
        pixart = lock.get("pixart-sigma-xl-2-1024-ms")
        hashes = {file.path: file.sha256 for file in pixart.files}
        assert hashes["transformer/diffusion_pytorch_model.safetensors"].startswith("2fa4dee9")
        assert pixart.revision == "e102b3591cc82e97071b8b4cb90d834d0c487207"


# -- checks and verification -----------------------------------------------------------------------


class TestVerification:
    def test_a_model_not_installed_names_the_pull_command(self, store):
        problem = store.problem([MODEL])
        assert "not installed" in problem and f"`kiln weights pull {MODEL}`" in problem
        with pytest.raises(WeightsUnavailable, match=f"kiln weights pull {MODEL}"):
            store.verified_folder(MODEL)

    def test_an_unpinned_model_names_the_commands_that_pin_it(self, tmp_path):
        path = tmp_path / "weights.lock"
        document = lock_document(revision="main")
        document["models"][MODEL]["files"][0]["sha256"] = None
        path.write_text(json.dumps(document))
        store = WeightsStore(tmp_path / "weights", WeightsLock.load(path))
        write_folder(store.folder(MODEL))
        problem = store.problem([MODEL])
        assert "revision 'main' is not a commit" in problem and "1 file(s) have no size or sha256" in problem
        assert f"`kiln weights pull {MODEL}`, which pins what the hub serves on first use" in problem
        assert f"`kiln weights import {MODEL} PATH`" in problem and f"`kiln weights lock {MODEL}`" in problem
        with pytest.raises(WeightsUnavailable, match="kiln weights pull"):
            store.verified_folder(MODEL)

    def test_installed_files_are_hashed_once_then_trusted_until_they_change(self, store, hash_count):
        write_folder(store.folder(MODEL))
        assert [check.state for check in store.check(MODEL)] == [UNVERIFIED, UNVERIFIED]
        assert store.problem([MODEL]) is None  # unverified is not a problem yet: loading hashes first
        assert store.verified_folder(MODEL) == store.folder(MODEL)
        assert sorted(hash_count) == ["model_index.json", "weights.safetensors"]
        assert store.verified_folder(MODEL) == store.folder(MODEL)
        assert len(hash_count) == 2, "a second load must reuse the recorded digests"
        assert [check.state for check in store.check(MODEL)] == [OK, OK]

    def test_a_changed_byte_makes_loading_refuse_with_the_pull_command(self, store):
        write_folder(store.folder(MODEL))
        store.verified_folder(MODEL)
        flip_a_byte(store.folder(MODEL) / "unet/weights.safetensors")
        with pytest.raises(WeightsUnavailable) as refused:
            store.verified_folder(MODEL)
        assert "unet/weights.safetensors (sha256 mismatch)" in refused.value.detail
        assert f"`kiln weights pull {MODEL}`" in refused.value.detail
        # once known, the bad file is refused without hashing, at submit time
        assert "do not match weights.lock" in store.problem([MODEL])

    def test_a_change_within_the_clock_tick_of_hashing_is_still_caught(self, store):
        """A write in the same filesystem timestamp tick as the hashing leaves size and mtime as they
        were; the record of a file that recent is never trusted."""
        write_folder(store.folder(MODEL), age_ns=0)
        store.verified_folder(MODEL)
        flip_a_byte(store.folder(MODEL) / "unet/weights.safetensors", keep_mtime=True)
        with pytest.raises(WeightsUnavailable, match="sha256 mismatch"):
            store.verified_folder(MODEL)

    def test_verify_rehashes_everything_and_catches_bit_rot(self, store):
        """Corruption that keeps size and mtime (a failing disk) is found by `verify` with `rehash`."""
        write_folder(store.folder(MODEL))
        store.verified_folder(MODEL)
        flip_a_byte(store.folder(MODEL) / "unet/weights.safetensors", keep_mtime=True)
        assert [check.state for check in store.verify(MODEL, rehash=True)] == [OK, MISMATCH]

    def test_wrong_size_and_missing_files_are_named(self, store):
        files = dict(FILES)
        files["unet/weights.safetensors"] += b"extra"
        del files["model_index.json"]
        write_folder(store.folder(MODEL), files)
        assert [check.state for check in store.check(MODEL)] == [MISSING, WRONG_SIZE]
        assert "unet/weights.safetensors (wrong size)" in store.problem([MODEL])

    def test_a_file_the_lock_does_not_list_is_refused(self, store):
        write_folder(store.folder(MODEL), {**FILES, "unet/extra.bin": b"pickle"})
        with pytest.raises(WeightsUnavailable, match=r"files weights.lock does not list \(unet/extra.bin\)"):
            store.verified_folder(MODEL)


# -- import and pull --------------------------------------------------------------------------------


class TestImportAndPull:
    def test_import_links_a_verified_folder_without_hashing_it_twice(self, store, tmp_path, hash_count):
        source = tmp_path / "my-copy"
        write_folder(source)
        checks = store.import_folder(MODEL, source)
        assert [check.state for check in checks] == [OK, OK]
        installed = store.folder(MODEL) / "unet/weights.safetensors"
        assert installed.read_bytes() == FILES["unet/weights.safetensors"]
        assert installed.stat().st_ino == (source / "unet/weights.safetensors").stat().st_ino
        assert len(hash_count) == 2
        assert store.verified_folder(MODEL) == store.folder(MODEL)
        assert len(hash_count) == 2

    def test_import_copies_when_asked(self, store, tmp_path):
        source = tmp_path / "my-copy"
        write_folder(source)
        store.import_folder(MODEL, source, copy=True)
        installed = store.folder(MODEL) / "unet/weights.safetensors"
        assert installed.stat().st_ino != (source / "unet/weights.safetensors").stat().st_ino
        assert [check.state for check in store.check(MODEL)] == [OK, OK]

    def test_import_of_a_corrupt_folder_changes_nothing(self, store, tmp_path):
        source = tmp_path / "my-copy"
        write_folder(source)
        flip_a_byte(source / "unet/weights.safetensors")
        checks = store.import_folder(MODEL, source)
        assert [check.state for check in checks] == [OK, MISMATCH]
        assert not store.folder(MODEL).exists()

    # pull and `lock` against a hub: tests/server/test_weights_hub.py (a local hub server)


# -- the command line --------------------------------------------------------------------------------


def kiln_weights(tmp_path: Path, lock_path: Path, *args: str) -> int:
    try:
        main(
            [
                "weights",
                *args,
                "--data-dir",
                str(tmp_path / "data"),
                "--weights-dir",
                str(tmp_path / "weights"),
                "--weights-lock",
                str(lock_path),
            ]
        )
    except SystemExit as exit:
        return exit.code
    return 0


class TestCommandLine:
    def test_list_verify_and_import(self, tmp_path, lock_path, capsys):
        assert kiln_weights(tmp_path, lock_path, "list") == 0
        assert f"`kiln weights pull {MODEL}`" in capsys.readouterr().out

        source = tmp_path / "my-copy"
        write_folder(source)
        assert kiln_weights(tmp_path, lock_path, "import", MODEL, str(source)) == 0
        assert "all 2 files match weights.lock" in capsys.readouterr().out
        assert kiln_weights(tmp_path, lock_path, "list") == 0
        assert "installed, verified" in capsys.readouterr().out

        flip_a_byte(source / "unet/weights.safetensors", keep_mtime=True)  # a hard link: the store's copy too
        assert kiln_weights(tmp_path, lock_path, "verify") == 1
        output = capsys.readouterr().out
        assert "unet/weights.safetensors: sha256 mismatch" in output
        assert "1 of 2 files do not match weights.lock" in output

    def test_pull_of_an_unpinned_model_without_a_hub_explains_what_to_run(self, tmp_path, monkeypatch):
        """Pulling an unpinned model pins it on first use; with no hub in reach the message says how
        to install from a copy instead of printing a traceback."""
        from testkit.servers import free_port

        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        path = tmp_path / "weights.lock"
        path.write_text(json.dumps(lock_document(revision="main")))
        message = kiln_weights(tmp_path, path, "pull", MODEL)
        assert isinstance(message, str) and "cannot reach the Hugging Face hub" in message
        assert f"kiln weights import {MODEL}" in message


def test_the_lock_holds_exactly_the_models_the_endpoints_load():
    """An endpoint's models are named once, on its class; the lock must hold each of them and no other."""
    locked = set(WeightsLock.load(REPO / "weights.lock").models)
    used = Registry.discover(Settings.pipeline_modules).models()
    assert locked == set(used), f"unused in the lock: {locked - set(used)}; missing: {set(used) - locked}"
