"""Pinned, verified model weights: `weights.lock`, the weights store and sha256 verification.

`weights.lock` (JSON, at the repository root) names every model Kiln can load:

    {"version": 1, "models": {"<name>": {"repo": "owner/name", "revision": "<40-hex commit>",
      "license": "...", "gated": false,
      "files": [{"path": "vae/config.json", "size": 631, "sha256": "<64 hex>"}, ...]}}}

The store (`<data-dir>/weights` unless `--weights-dir`) holds one folder per model in its repository's
own layout, so diffusers and transformers load it with `from_pretrained`. A model is usable only when
its revision is a commit and every file has a size and a sha256 in the lock (`kiln weights lock NAME`
fills them in from the hub), every locked file is present with that content, and no other file is
in its folder: Kiln never loads bytes the lock does not vouch for.

Hashing tens of gigabytes on every start would be slow, so each digest is remembered in
`<store>/verified.json` together with the file's size, mtime and inode, and reused while those are
unchanged. A write changes the mtime, so a changed byte is hashed again (and refused) before the
model is next loaded. Like git's racily-clean index entries, a file modified within
`TIMESTAMP_SLACK_NS` of its hashing is never trusted from the record: a coarse filesystem clock could
otherwise hide a second write in the same tick. `kiln weights verify` rehashes everything, which is
also what catches corruption that leaves the mtime alone (bit rot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from server.errors import EndpointUnavailable

logger = logging.getLogger(__name__)

LOCK_VERSION = 1
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERIFIED_RECORDS = "verified.json"
# what huggingface_hub keeps inside a `local_dir` download (resume state), never loaded by Kiln
HUB_METADATA_DIR = ".cache"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
# FAT/exFAT keep 2 s mtimes; anything finer-grained is covered too
TIMESTAMP_SLACK_NS = 2_000_000_000


class WeightsLockError(ValueError):
    """weights.lock is malformed or does not describe the model asked for."""


class WeightsUnavailable(EndpointUnavailable):
    """A model an endpoint needs is missing, unpinned or does not match weights.lock."""

    error_type = "weights_unavailable"


# -- the lock --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int | None = None
    sha256: str | None = None

    @property
    def pinned(self) -> bool:
        return self.size is not None and self.sha256 is not None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class LockedModel:
    name: str
    repo: str
    revision: str
    license: str
    gated: bool
    files: tuple[LockedFile, ...]

    @property
    def unpinned_files(self) -> list[str]:
        return [file.path for file in self.files if not file.pinned]

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.revision)) and not self.unpinned_files

    @property
    def digest(self) -> str:
        """One sha256 naming exactly these weights: repo, revision and every file's path, size and hash."""
        canonical = json.dumps(
            {
                "repo": self.repo,
                "revision": self.revision,
                "files": sorted((f.path, f.size, f.sha256) for f in self.files),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def provenance(self) -> dict[str, str]:
        return {"repo": self.repo, "revision": self.revision, "digest": self.digest}

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "license": self.license,
            "gated": self.gated,
            "files": [file.to_json() for file in self.files],
        }

    @classmethod
    def from_json(cls, name: str, entry: Mapping[str, Any]) -> LockedModel:
        where = f"weights.lock model {name!r}"
        try:
            files = tuple(
                LockedFile(path=item["path"], size=item.get("size"), sha256=item.get("sha256"))
                for item in entry["files"]
            )
            model = cls(
                name=name,
                repo=entry["repo"],
                revision=entry["revision"],
                license=entry.get("license", "unknown"),
                gated=bool(entry.get("gated", False)),
                files=files,
            )
        except (KeyError, TypeError) as error:
            raise WeightsLockError(f"{where}: missing or malformed field {error}") from None
        for file in files:
            parts = PurePosixPath(file.path).parts
            if not parts or file.path.startswith("/") or ".." in parts or parts[0] == HUB_METADATA_DIR:
                raise WeightsLockError(f"{where}: file path {file.path!r} must be relative and stay in the folder")
            if file.sha256 is not None and not SHA256.match(file.sha256):
                raise WeightsLockError(f"{where}: sha256 of {file.path!r} must be 64 lowercase hex digits")
            if file.size is not None and (not isinstance(file.size, int) or file.size < 0):
                raise WeightsLockError(f"{where}: size of {file.path!r} must be a byte count")
        if len({file.path for file in files}) != len(files):
            raise WeightsLockError(f"{where}: a file is listed twice")
        return model


@dataclass(frozen=True)
class WeightsLock:
    path: Path
    models: Mapping[str, LockedModel] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> WeightsLock:
        """Reads a lock file; a missing file is an empty lock (every model then reports itself unlocked)."""
        if not path.exists():
            logger.warning("no weights lock at %s: endpoints that need model weights are unavailable", path)
            return cls(path)
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise WeightsLockError(f"cannot read {path}: {error}") from None
        if not isinstance(document, dict) or document.get("version") != LOCK_VERSION:
            raise WeightsLockError(f'{path}: expected a JSON object with "version": {LOCK_VERSION}')
        models = document.get("models", {})
        return cls(path, {name: LockedModel.from_json(name, entry) for name, entry in models.items()})

    def save(self) -> None:
        document = {"version": LOCK_VERSION, "models": {name: m.to_json() for name, m in self.models.items()}}
        _write_atomically(self.path, json.dumps(document, indent=2) + "\n")

    def get(self, name: str) -> LockedModel:
        try:
            return self.models[name]
        except KeyError:
            raise WeightsLockError(f"{self.path} has no model named {name!r}") from None


# -- verification records ----------------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    """What a write to a file changes; a remembered digest is reused only while this is unchanged."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStat | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino)


class VerificationRecords:
    """The digests of store files already hashed, in `<store>/verified.json`, keyed by `model/path`.

    Written atomically and merged on every save, so a `kiln weights verify` beside a running server
    loses nothing worse than a record, which only costs a rehash.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        # the parsed file and the stat it was read at: every save replaces the file (a new inode)
        self._parsed: tuple[FileStat | None, dict[str, dict[str, Any]]] = (None, {})

    def lookup(self, key: str, stat: FileStat) -> tuple[str, bool] | None:
        """The sha256 remembered for the file as it stands, and whether it is settled: false when the
        file was modified so close to its hashing that a later write could hide in the same tick."""
        record = self._read().get(key)
        if record is None or FileStat(record["size"], record["mtime_ns"], record["inode"]) != stat:
            return None
        return record["sha256"], stat.mtime_ns < record["hashed_at_ns"] - TIMESTAMP_SLACK_NS

    def remember(self, key: str, stat: FileStat, sha256: str, hashed_at_ns: int) -> None:
        with self._lock:
            records = self._read()
            records[key] = {
                "size": stat.size,
                "mtime_ns": stat.mtime_ns,
                "inode": stat.inode,
                "sha256": sha256,
                "hashed_at_ns": hashed_at_ns,
            }
            _write_atomically(self._path, json.dumps(records, indent=1, sort_keys=True))

    def _read(self) -> dict[str, dict[str, Any]]:
        """The records, parsed again only when the file was replaced (submit-time checks read it often)."""
        stat = FileStat.of(self._path)
        parsed_at, records = self._parsed
        if stat is None or stat != parsed_at:
            try:
                records = json.loads(self._path.read_text()) if stat else {}
            except (FileNotFoundError, json.JSONDecodeError):
                records = {}
            self._parsed = (stat, records)
        return dict(records)


def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks (model shards are larger than memory allows to read at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# -- the store -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    """One locked file's state in the store. `state` is one of the module's `OK`, `MISSING`,
    `WRONG_SIZE`, `MISMATCH`, `UNVERIFIED` (present, size right, not hashed since it last changed)."""

    path: str
    state: str
    found_sha256: str | None = None


OK, MISSING, WRONG_SIZE, MISMATCH, UNVERIFIED = "ok", "missing", "wrong size", "sha256 mismatch", "unverified"


class WeightsStore:
    def __init__(self, root: Path, lock: WeightsLock) -> None:
        self.root = root
        self.lock = lock
        self._records = VerificationRecords(root / VERIFIED_RECORDS)
        # one hashing pass per model at a time, however many workers ask for it
        self._verifying: dict[str, threading.Lock] = {name: threading.Lock() for name in lock.models}

    def folder(self, name: str) -> Path:
        return self.root / name

    # -- cheap checks (no hashing): used at submit time and by `/health` ----------------------------

    def problem(self, names: Iterable[str]) -> str | None:
        """Why these models cannot be loaded as the store stands, or None. Files changed since they
        were last hashed are not a problem yet: `verified_folder` hashes them before loading."""
        for name in names:
            if name not in self.lock.models:
                return f"{self.lock.path} has no model named {name!r}; Kiln cannot verify its weights"
            model = self.lock.models[name]
            reason = self._unpinned(model) or self._explain(model, self.check(name))
            if reason:
                return reason
        return None

    def check(self, name: str) -> list[FileCheck]:
        """Every locked file of `name` as far as it is known without hashing: missing, wrong size,
        matching or not by its trusted record, else unverified."""
        model = self.lock.get(name)
        return [self._file_check(model, file, hash_now=False) for file in model.files]

    # -- verification -----------------------------------------------------------------------------

    def verify(
        self, name: str, *, rehash: bool = False, on_file: Callable[[str], None] | None = None
    ) -> list[FileCheck]:
        """Hashes every present file of `name` that has no trusted record (every one with `rehash`)."""
        model = self.lock.get(name)
        with self._verifying.setdefault(name, threading.Lock()):
            checks = []
            for file in model.files:
                check = self._file_check(model, file, hash_now=False)
                if check.state == UNVERIFIED or (rehash and check.state in (OK, MISMATCH)):
                    if on_file:
                        on_file(file.path)
                    check = self._file_check(model, file, hash_now=True)
                checks.append(check)
            return checks

    def verified_folder(self, name: str) -> Path:
        """The folder to load `name` from, once every file in it matches the lock.

        Raises WeightsUnavailable, naming the command that fixes it, when the model is not pinned,
        not installed, corrupt, or its folder holds a file the lock does not list.
        """
        if name not in self.lock.models:
            raise WeightsUnavailable(f"{self.lock.path} has no model named {name!r}; Kiln cannot verify its weights")
        model = self.lock.models[name]
        reason = self._unpinned(model) or self._explain(model, self.verify(name))
        if reason is None:
            unlisted = self.unlisted_files(name)
            if unlisted:
                reason = (
                    f"the weights folder {self.folder(name)} holds files weights.lock does not list "
                    f"({', '.join(unlisted[:5])}); Kiln loads only locked files: remove them"
                )
        if reason:
            raise WeightsUnavailable(reason)
        return self.folder(name)

    def unlisted_files(self, name: str) -> list[str]:
        """Files in the model's folder that the lock does not list (huggingface_hub's resume state aside)."""
        folder = self.folder(name)
        if not folder.is_dir():
            return []
        locked = {file.path for file in self.lock.get(name).files}
        found = []
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if relative.parts[0] == HUB_METADATA_DIR or path.is_dir():
                continue
            if relative.as_posix() not in locked:
                found.append(relative.as_posix())
        return found

    def provenance(self, name: str) -> dict[str, str]:
        return self.lock.get(name).provenance()

    # -- putting weights into the store -----------------------------------------------------------

    def pull(self, name: str, *, on_file: Callable[[str], None] | None = None) -> list[FileCheck]:
        """Downloads the pinned revision's locked files from the Hugging Face hub (resuming a partial
        download), then verifies them; a downloaded file that does not match is deleted."""
        from huggingface_hub import snapshot_download

        model = self.lock.get(name)
        reason = self._unpinned(model)
        if reason:
            raise WeightsUnavailable(reason)
        # a file known to be bad would otherwise be taken for a finished download
        for check in self.check(name):
            if check.state in (WRONG_SIZE, MISMATCH):
                (self.folder(name) / check.path).unlink()
        snapshot_download(
            model.repo,
            revision=model.revision,
            local_dir=self.folder(name),
            allow_patterns=[file.path for file in model.files],
        )
        checks = self.verify(name, on_file=on_file)
        for check in checks:
            if check.state in (WRONG_SIZE, MISMATCH):
                (self.folder(name) / check.path).unlink()
        return checks

    def import_folder(
        self, name: str, source: Path, *, copy: bool = False, on_file: Callable[[str], None] | None = None
    ) -> list[FileCheck]:
        """Takes the files of `name` from a folder a user already has (a clone, a hub snapshot).

        Every locked file in `source` is hashed first; only if all match are they hard-linked into
        the store (symlinked across filesystems, copied with `copy`). Returns the source's checks.
        """
        model = self.lock.get(name)
        reason = self._unpinned(model)
        if reason:
            raise WeightsUnavailable(reason)
        hashed: list[tuple[LockedFile, Path, FileStat, str, int]] = []
        checks = []
        for file in model.files:
            path = (source / file.path).resolve()
            stat = FileStat.of(path)
            if stat is None:
                checks.append(FileCheck(file.path, MISSING))
                continue
            if stat.size != file.size:
                checks.append(FileCheck(file.path, WRONG_SIZE))
                continue
            if on_file:
                on_file(file.path)
            hashed_at = time.time_ns()
            found = sha256_file(path)
            checks.append(FileCheck(file.path, OK if found == file.sha256 else MISMATCH, found))
            hashed.append((file, path, stat, found, hashed_at))
        if any(check.state != OK for check in checks):
            return checks
        for file, path, stat, found, hashed_at in hashed:
            destination = self.folder(name) / file.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.unlink(missing_ok=True)
            if copy:
                shutil.copy2(path, destination)
            else:
                try:
                    os.link(path, destination)
                except OSError:
                    destination.symlink_to(path)
            # a link shares the source's inode and mtime, so the digest just computed still holds
            if FileStat.of(destination) == stat:
                self._records.remember(self._key(model, file), stat, found, hashed_at)
        self.verify(name, on_file=on_file)
        return checks

    # -- internals --------------------------------------------------------------------------------

    def _key(self, model: LockedModel, file: LockedFile) -> str:
        return f"{model.name}/{file.path}"

    def _file_check(self, model: LockedModel, file: LockedFile, *, hash_now: bool) -> FileCheck:
        path = self.folder(model.name) / file.path
        stat = FileStat.of(path)
        if stat is None:
            return FileCheck(file.path, MISSING)
        if file.size is not None and stat.size != file.size:
            return FileCheck(file.path, WRONG_SIZE)
        if not hash_now:
            remembered = self._records.lookup(self._key(model, file), stat)
            if remembered is None:
                return FileCheck(file.path, UNVERIFIED)
            found, settled = remembered
            # an unsettled record may not vouch for a file, but may still refuse it
            if found != file.sha256:
                return FileCheck(file.path, MISMATCH, found)
            return FileCheck(file.path, OK if settled else UNVERIFIED, found)
        hashed_at = time.time_ns()
        found = sha256_file(path)
        self._records.remember(self._key(model, file), stat, found, hashed_at)
        if FileStat.of(path) != stat:  # written to while being hashed: the digest proves nothing
            return FileCheck(file.path, UNVERIFIED)
        return FileCheck(file.path, OK if found == file.sha256 else MISMATCH, found)

    def unpinned_reason(self, name: str) -> str | None:
        """Why the lock cannot vouch for `name` yet (revision not a commit, files without hashes), or None."""
        return self._unpinned(self.lock.get(name))

    def _unpinned(self, model: LockedModel) -> str | None:
        if model.pinned:
            return None
        gaps = []
        if not COMMIT.match(model.revision):
            gaps.append(f"revision {model.revision!r} is not a commit")
        if model.unpinned_files:
            gaps.append(f"{len(model.unpinned_files)} file(s) have no size or sha256")
        return (
            f"weights.lock does not pin {model.name!r} ({model.repo}) yet: {'; '.join(gaps)}. "
            f"Run `kiln weights lock {model.name}` on a machine with Hugging Face hub access"
            + (" and a token that accepted the model's licence" if model.gated else "")
            + f", then `kiln weights pull {model.name}`"
        )

    def _explain(self, model: LockedModel, checks: list[FileCheck]) -> str | None:
        """The user-facing reason a model cannot load, naming the command that fixes it."""
        missing = [check.path for check in checks if check.state == MISSING]
        bad = [check for check in checks if check.state in (WRONG_SIZE, MISMATCH)]
        if len(missing) == len(checks):
            return (
                f"the weights {model.name!r} ({model.repo}) are not installed in {self.root}: "
                f"run `kiln weights pull {model.name}` (or `kiln weights import {model.name} PATH`)"
            )
        if bad:
            details = ", ".join(f"{check.path} ({check.state})" for check in bad[:5])
            return (
                f"the weights {model.name!r} in {self.folder(model.name)} do not match weights.lock: {details}. "
                f"Kiln will not load them; run `kiln weights pull {model.name}` to download them again"
            )
        if missing:
            return (
                f"the weights {model.name!r} in {self.folder(model.name)} are incomplete "
                f"({len(missing)} of {len(checks)} files missing, e.g. {missing[0]}): "
                f"run `kiln weights pull {model.name}`"
            )
        return None


def lock_from_hub(model: LockedModel) -> LockedModel:
    """`model` with its revision resolved to a commit and every file's size and sha256 from the hub.

    Large files' hashes come from their LFS pointers; small files kept in git are downloaded at the
    pinned commit and hashed. A value already in the lock that the hub contradicts is an error, not
    an overwrite: one of the two is wrong and a person has to look.
    """
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(model.repo, revision=model.revision, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}
    files = []
    for file in model.files:
        sibling = siblings.get(file.path)
        if sibling is None:
            raise WeightsLockError(f"{model.repo}@{info.sha} has no file {file.path!r}")
        if sibling.lfs is not None:
            size, sha256 = sibling.lfs.size, sibling.lfs.sha256
        else:
            size = sibling.size
            sha256 = sha256_file(Path(hf_hub_download(model.repo, file.path, revision=info.sha)))
        for what, locked, hub in (("size", file.size, size), ("sha256", file.sha256, sha256)):
            if locked is not None and locked != hub:
                raise WeightsLockError(
                    f"{model.name}: weights.lock has {what} {locked} for {file.path}, the hub has {hub} at {info.sha}"
                )
        files.append(LockedFile(file.path, size, sha256))
    return LockedModel(
        name=model.name,
        repo=model.repo,
        revision=info.sha,
        license=model.license,
        gated=model.gated,
        files=tuple(files),
    )


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
