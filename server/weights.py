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

Pins made on this machine. The shipped lock pins what public sources confirm; an entry it leaves
open (a branch instead of a commit, files without sizes or hashes) is pinned here, in the store's own
`local.lock` (same format), by the first `kiln weights pull` (trust on first use: the hub's commit,
its LFS sha256s, and for small files their git blob ids, checked against the bytes downloaded), by
`kiln weights import` of a folder whose commit is known, or by `kiln weights lock`. The pins live
beside the weights they describe, so a container that keeps its data volume keeps them, and a
source tree stays untouched. A local pin only fills gaps: once it contradicts the shipped lock (a
newer Kiln pinned another commit) it is ignored and the model reports what to run.

Moving weights to a machine without hub access: `kiln weights export NAME DIR` writes the verified
files with their pin (`kiln-weights.json`); `kiln weights import NAME DIR/NAME` on the other machine
checks every file against that pin before linking it in. Copying the whole store (`rsync -a`) works
as well: the copies have new inodes, so they are hashed again before first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from server.errors import EndpointUnavailable

logger = logging.getLogger(__name__)

LOCK_VERSION = 1
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
VERIFIED_RECORDS = "verified.json"
# the pins made on this machine (trust on first use, imports), beside the weights they pin
LOCAL_PINS = "local.lock"
# an exported model's pin, read by `import` on the machine the folder is carried to
EXPORT_PIN = "kiln-weights.json"
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


class HubError(RuntimeError):
    """The Hugging Face hub refused a request or could not be reached; the message says what to do."""


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
    # where the pins come from (public pages, trust on first use on this machine...); not in the digest
    note: str | None = None

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
        document = {
            "repo": self.repo,
            "revision": self.revision,
            "license": self.license,
            "gated": self.gated,
            "files": [file.to_json() for file in self.files],
        }
        if self.note is not None:
            document["note"] = self.note
        return document

    def conflicts(self, pin: LockedModel) -> list[str]:
        """What `pin` (made on this machine) contradicts in this entry; empty when it only fills gaps."""
        found = []
        if pin.repo != self.repo:
            found.append(f"repo {pin.repo!r}, not {self.repo!r}")
        if COMMIT.match(self.revision) and pin.revision != self.revision:
            found.append(f"revision {pin.revision}, not {self.revision}")
        pinned = {file.path: file for file in pin.files}
        if set(pinned) != {file.path for file in self.files}:
            found.append("another list of files")
            return found
        for file in self.files:
            for what in ("size", "sha256"):
                locked, local = getattr(file, what), getattr(pinned[file.path], what)
                if locked is not None and local != locked:
                    found.append(f"{what} {local} for {file.path}, not {locked}")
        return found

    def filled_by(self, pin: LockedModel) -> LockedModel:
        """This entry with the revision and files of a compatible `pin` (licence and gating stay)."""
        return dataclasses.replace(self, revision=pin.revision, files=pin.files, note=pin.note)

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
                note=entry.get("note"),
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
    # models whose pins come from the store's local.lock, and local pins ignored (with why)
    pinned_here: frozenset[str] = frozenset()
    ignored_pins: Mapping[str, str] = field(default_factory=dict)

    def with_local_pins(self, pins: WeightsLock) -> WeightsLock:
        """This lock with the gaps its entries leave filled by compatible pins made on this machine."""
        models, here, ignored = dict(self.models), set(), {}
        for name, pin in pins.models.items():
            shipped = self.models.get(name)
            if shipped is None:
                continue  # the shipped lock no longer names it: nothing loads it
            conflicts = shipped.conflicts(pin)
            if conflicts:
                ignored[name] = (
                    f"the pin of {name!r} made on this machine ({pins.path}) contradicts {self.path}: "
                    f"{'; '.join(conflicts)}"
                )
                logger.warning("%s; it is ignored", ignored[name])
                continue
            if not shipped.pinned:
                models[name] = shipped.filled_by(pin)
                here.add(name)
        return dataclasses.replace(self, models=models, pinned_here=frozenset(here), ignored_pins=ignored)

    def pinned_where(self, name: str) -> str:
        """`weights.lock`, `this machine (local.lock)` or `not pinned`, for `kiln weights list`."""
        model = self.get(name)
        if name in self.pinned_here:
            return f"pinned on this machine ({LOCAL_PINS})"
        if model.pinned:
            return f"pinned in {self.path.name}"
        return "not pinned" + (f" ({self.ignored_pins[name]})" if name in self.ignored_pins else "")

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
        self.shipped_lock = lock
        self.pins_path = root / LOCAL_PINS
        self._records = VerificationRecords(root / VERIFIED_RECORDS)
        # one hashing pass per model at a time, however many workers ask for it
        self._verifying: dict[str, threading.Lock] = {name: threading.Lock() for name in lock.models}
        # the lock with this machine's pins, and the stat of local.lock it was read at
        self._merged: tuple[FileStat | None, WeightsLock] = (None, lock)

    @property
    def lock(self) -> WeightsLock:
        """The shipped lock with the gaps filled by this machine's pins; read again whenever local.lock
        changes, so a `kiln weights pull` beside a running server takes effect without a restart."""
        stat = FileStat.of(self.pins_path)
        seen, merged = self._merged
        if stat != seen:
            merged = self.shipped_lock
            if stat is not None:
                try:
                    merged = self.shipped_lock.with_local_pins(WeightsLock.load(self.pins_path))
                except WeightsLockError as error:
                    logger.error("ignoring the pins made on this machine: %s", error)
            self._merged = (stat, merged)
        return merged

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

    def pull(
        self, name: str, *, revision: str | None = None, on_file: Callable[[str], None] | None = None
    ) -> list[FileCheck]:
        """Downloads `name` from the Hugging Face hub into the store (files already there are kept, so
        an interrupted pull resumes file by file), then verifies it; a file that does not match is
        deleted.

        A model the lock pins is downloaded at its pinned commit and checked against the lock. A
        model it leaves open (or `revision` given where it does) is pinned on first use: `revision`
        (default: the lock's) is resolved to a commit, its files are downloaded and checked against
        the hub's own LFS sha256s and git blob ids, and their sizes and sha256s are written to
        local.lock. Raises HubError (gated repo, no access, hub unreachable) with what to do.
        """
        shipped, model = self.shipped_lock.get(name), self.lock.get(name)
        if revision is not None and COMMIT.match(shipped.revision) and revision != shipped.revision:
            raise WeightsLockError(
                f"{self.shipped_lock.path} pins {name!r} at {shipped.revision}; `--revision {revision}` contradicts it"
            )
        if model.pinned and revision in (None, model.revision):
            return self._pull_pinned(model, on_file)
        return self._pull_on_first_use(shipped, revision or shipped.revision, on_file)

    def import_folder(
        self,
        name: str,
        source: Path,
        *,
        revision: str | None = None,
        copy: bool = False,
        on_file: Callable[[str], None] | None = None,
    ) -> list[FileCheck]:
        """Takes the files of `name` from a folder a user already has: a `kiln weights export` folder
        (checked against the pin it carries), an `hf download --local-dir` folder or a hub cache
        snapshot (`.../snapshots/<commit>`), or any folder in the repository's layout.

        Every locked file in `source` is hashed first; only if all match are they hard-linked into
        the store (symlinked across filesystems, copied with `copy`). Against a pinned lock they must
        match it; otherwise the folder's commit (from the export, hub metadata, the snapshot path or
        `revision`) and the files' hashes are pinned in local.lock, trust on first use, after the
        hashes are checked against any hub etags the download left behind. Returns the checks.
        """
        shipped, model = self.shipped_lock.get(name), self.lock.get(name)
        exported = read_export_pin(source, name)
        if exported is not None:
            conflicts = shipped.conflicts(exported)
            if conflicts:
                raise WeightsLockError(
                    f"{source / EXPORT_PIN} pins other weights than {self.shipped_lock.path}: {'; '.join(conflicts)}"
                )
            return self._link_in(shipped, exported, source, copy=copy, on_file=on_file, pin=exported)
        if model.pinned and revision in (None, model.revision):
            return self._link_in(shipped, model, source, copy=copy, on_file=on_file, pin=None)
        commit, how = folder_commit(source, shipped, revision)
        if COMMIT.match(shipped.revision) and commit != shipped.revision:
            raise WeightsLockError(
                f"{source} holds {shipped.repo}@{commit} ({how}), but {self.shipped_lock.path} pins {shipped.revision}"
            )
        expected = dataclasses.replace(shipped, revision=commit)
        pin_note = (
            f"trust on first use: imported from {source} ({how}) on {_today()}; sizes and sha256s are those "
            "files' own, checked against the hub etags the download recorded where there were any"
        )
        return self._link_in(shipped, expected, source, copy=copy, on_file=on_file, pin_note=pin_note)

    def export(self, name: str, destination: Path, *, link: bool = False) -> Path:
        """Writes `name`'s verified files to `destination/name` with its pin (`kiln-weights.json`), for
        `kiln weights import` on a machine that cannot reach the hub. Copies unless `link`."""
        folder = self.verified_folder(name)
        model = self.lock.get(name)
        target = destination / name
        if target.exists() and any(target.iterdir()):
            raise WeightsLockError(f"{target} already exists and is not empty; export into an empty folder")
        for file in model.files:
            destination_file = target / file.path
            destination_file.parent.mkdir(parents=True, exist_ok=True)
            if link:
                os.link(folder / file.path, destination_file)
            else:
                shutil.copy2(folder / file.path, destination_file)
        origin = model.note or f"pinned in {self.lock.path.name}"
        exported = dataclasses.replace(
            model, note=f"exported from {platform.node() or 'another machine'} on {_today()}, where it was: {origin}"
        )
        _write_atomically(
            target / EXPORT_PIN,
            json.dumps({"version": LOCK_VERSION, "name": name, "model": exported.to_json()}, indent=2) + "\n",
        )
        return target

    # -- downloading and linking in ---------------------------------------------------------------

    def _pull_pinned(self, model: LockedModel, on_file: Callable[[str], None] | None) -> list[FileCheck]:
        # a file known to be bad would otherwise be taken for a finished download
        for check in self.check(model.name):
            if check.state in (WRONG_SIZE, MISMATCH):
                (self.folder(model.name) / check.path).unlink()
        with hub_errors(model):
            _snapshot(model, model.revision, self.folder(model.name))
        checks = self.verify(model.name, on_file=on_file)
        for check in checks:
            if check.state in (WRONG_SIZE, MISMATCH):
                (self.folder(model.name) / check.path).unlink()
        return checks

    def _pull_on_first_use(
        self, shipped: LockedModel, revision: str, on_file: Callable[[str], None] | None
    ) -> list[FileCheck]:
        listing = hub_listing(shipped, revision)
        folder = self.folder(shipped.name)
        with hub_errors(shipped):
            _snapshot(shipped, listing.commit, folder)
        checks, pinned = [], []
        for file in shipped.files:
            hub = listing.files[file.path]
            path = folder / file.path
            stat = FileStat.of(path)
            if stat is None:
                checks.append(FileCheck(file.path, MISSING))
                continue
            if on_file:
                on_file(file.path)
            hashed_at = time.time_ns()
            found = sha256_file(path)
            self._records.remember(f"{shipped.name}/{file.path}", stat, found, hashed_at)
            matches_hub = found == hub.sha256 if hub.sha256 else git_blob_id(path) == hub.blob_id
            if stat.size != hub.size or not matches_hub or file.sha256 not in (None, found):
                path.unlink()
                checks.append(FileCheck(file.path, MISMATCH, found))
                continue
            checks.append(FileCheck(file.path, OK, found))
            pinned.append(LockedFile(file.path, stat.size, found))
        if all(check.state == OK for check in checks):
            self.save_pin(
                dataclasses.replace(
                    shipped,
                    revision=listing.commit,
                    files=tuple(pinned),
                    note=(
                        f"trust on first use: pinned by `kiln weights pull` on {_today()} from what "
                        f"{listing.endpoint} served for {shipped.repo}@{revision}; each file was checked "
                        "against the hub's LFS sha256 or git blob id"
                    ),
                )
            )
        return checks

    def _link_in(
        self,
        shipped: LockedModel,
        expected: LockedModel,
        source: Path,
        *,
        copy: bool,
        on_file: Callable[[str], None] | None,
        pin: LockedModel | None = None,
        pin_note: str | None = None,
    ) -> list[FileCheck]:
        """Hashes every file of `expected` in `source`, then links (or copies) them into the store if
        all match what `expected` pins; with `pin` or `pin_note` (first use) also saves the pin."""
        hashed: list[tuple[LockedFile, Path, FileStat, str, int]] = []
        checks = []
        for file in expected.files:
            path = (source / file.path).resolve()
            stat = FileStat.of(path)
            if stat is None:
                checks.append(FileCheck(file.path, MISSING))
                continue
            if file.size is not None and stat.size != file.size:
                checks.append(FileCheck(file.path, WRONG_SIZE))
                continue
            if on_file:
                on_file(file.path)
            hashed_at = time.time_ns()
            found = sha256_file(path)
            etag = recorded_etag(source, file.path)
            matches = found == file.sha256 if file.sha256 is not None else etag_matches(etag, found, path)
            checks.append(FileCheck(file.path, OK if matches else MISMATCH, found))
            hashed.append((file, path, stat, found, hashed_at))
        if any(check.state != OK for check in checks):
            return checks
        if pin is None and pin_note is not None:
            files = tuple(LockedFile(file.path, stat.size, found) for file, _, stat, found, _ in hashed)
            pin = dataclasses.replace(expected, files=files, note=pin_note)
        for file, path, stat, found, hashed_at in hashed:
            destination = self.folder(shipped.name) / file.path
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
                self._records.remember(f"{shipped.name}/{file.path}", stat, found, hashed_at)
        if pin is not None:
            self.save_pin(pin)
        self.verify(shipped.name, on_file=on_file)
        return checks

    def save_pin(self, model: LockedModel) -> None:
        """Records `model`'s pin in this store's local.lock."""
        pins = WeightsLock.load(self.pins_path) if self.pins_path.exists() else WeightsLock(self.pins_path)
        WeightsLock(self.pins_path, {**pins.models, model.name: model}).save()
        logger.info("pinned %s at %s in %s", model.name, model.revision, self.pins_path)

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
            f"Run `kiln weights pull {model.name}`, which pins what the hub serves on first use"
            + (" (a gated model: with HF_TOKEN set to a token that accepted its licence)" if model.gated else "")
            + f", or `kiln weights import {model.name} PATH` with a copy you have "
            f"(`kiln weights lock {model.name}` pins without downloading)"
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


def lock_from_hub(model: LockedModel, revision: str | None = None) -> LockedModel:
    """`model` with its revision (or `revision`) resolved to a commit and every file's size and
    sha256 from the hub.

    Large files' hashes come from their LFS pointers; small files kept in git are downloaded at the
    pinned commit, checked against their git blob id and hashed. A value already in the lock that the
    hub contradicts is an error, not an overwrite: one of the two is wrong and a person has to look.
    """
    from huggingface_hub import hf_hub_download

    listing = hub_listing(model, revision or model.revision)
    files = []
    with tempfile.TemporaryDirectory() as scratch, hub_errors(model):
        for file in model.files:
            hub = listing.files[file.path]
            sha256 = hub.sha256
            if sha256 is None:
                path = Path(
                    hf_hub_download(
                        model.repo, file.path, revision=listing.commit, local_dir=scratch, endpoint=listing.endpoint
                    )
                )
                if git_blob_id(path) != hub.blob_id or path.stat().st_size != hub.size:
                    raise HubError(
                        f"{model.repo}@{listing.commit}: {file.path} as downloaded is not the file the hub lists"
                    )
                sha256 = sha256_file(path)
            for what, locked, found in (("size", file.size, hub.size), ("sha256", file.sha256, sha256)):
                if locked is not None and locked != found:
                    raise WeightsLockError(
                        f"{model.name}: weights.lock has {what} {locked} for {file.path}, "
                        f"the hub has {found} at {listing.commit}"
                    )
            files.append(LockedFile(file.path, hub.size, sha256))
    return dataclasses.replace(
        model,
        revision=listing.commit,
        files=tuple(files),
        note=(
            f"pinned by `kiln weights lock` on {_today()} from what {listing.endpoint} listed for "
            f"{model.repo}@{revision or model.revision}: LFS sha256s from the hub, small files hashed"
        ),
    )


# -- the hub ------------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The hub Kiln talks to: `HF_ENDPOINT` when set (read on every call, so a mirror or a test's local
    hub takes effect without re-importing huggingface_hub), else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubFile:
    size: int
    sha256: str | None  # the LFS object's, for files the hub keeps in LFS
    blob_id: str | None  # the git blob id (for an LFS file, its pointer's)


@dataclass(frozen=True)
class HubListing:
    endpoint: str
    commit: str
    files: Mapping[str, HubFile]


def hub_listing(model: LockedModel, revision: str) -> HubListing:
    """What the hub lists for `model`'s files at `revision`, resolved to a commit; every locked file
    must be there, with any size or sha256 the lock states."""
    from huggingface_hub import HfApi

    endpoint = hub_endpoint()
    with hub_errors(model):
        info = HfApi(endpoint=endpoint).model_info(model.repo, revision=revision, files_metadata=True)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}
    files = {}
    for file in model.files:
        sibling = siblings.get(file.path)
        if sibling is None:
            raise WeightsLockError(f"{model.repo}@{info.sha} has no file {file.path!r}, which weights.lock lists")
        if sibling.lfs is not None:
            hub = HubFile(sibling.lfs.size, sibling.lfs.sha256, sibling.blob_id)
        else:
            hub = HubFile(sibling.size, None, sibling.blob_id)
        for what, locked, found in (("size", file.size, hub.size), ("sha256", file.sha256, hub.sha256)):
            if locked is not None and found is not None and locked != found:
                raise WeightsLockError(
                    f"{model.name}: weights.lock has {what} {locked} for {file.path}, the hub has {found} at {info.sha}"
                )
        files[file.path] = hub
    return HubListing(endpoint, info.sha, files)


def _snapshot(model: LockedModel, commit: str, folder: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        model.repo,
        revision=commit,
        local_dir=folder,
        allow_patterns=[file.path for file in model.files],
        endpoint=hub_endpoint(),
    )


@contextlib.contextmanager
def hub_errors(model: LockedModel) -> Iterator[None]:
    """Turns huggingface_hub's errors into a HubError that says what to do (accept a licence, set a
    token, copy the weights over), instead of a traceback."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    page = f"{endpoint}/{model.repo}"
    unreachable = (
        "On a machine without hub access, install from a copy instead: `kiln weights export "
        f"{model.name} DIR` where the weights are, then `kiln weights import {model.name} DIR/{model.name}` here"
    )
    try:
        yield
    except GatedRepoError as error:
        if get_token():
            message = (
                f"{model.repo} is gated and the hub refused your token ({_first_line(error)}): accept the licence "
                f"({model.license}) at {page} while logged in as the token's account, then run this again"
            )
        else:
            message = (
                f"{model.repo} is gated: accept its licence ({model.license}) at {page}, create a read token at "
                f"{endpoint}/settings/tokens, then run this again with HF_TOKEN=<your token> set "
                "(or after `hf auth login`)"
            )
        raise HubError(message) from None
    except RevisionNotFoundError:
        raise HubError(f"{model.repo} has no such revision on {endpoint} (see {page}/commits/main)") from None
    except RemoteEntryNotFoundError as error:
        raise HubError(f"{model.repo} lacks a file weights.lock lists: {_first_line(error)}") from None
    except RepositoryNotFoundError:
        hint = (
            f"it is gated: accept its licence ({model.license}) at {page} and set HF_TOKEN"
            if model.gated
            else "check the name, or set HF_TOKEN if it is private"
        )
        raise HubError(f"{endpoint} does not give access to {model.repo}: {hint}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise HubError(
            f"cannot reach the Hugging Face hub at {endpoint}: {_first_line(error)}. {unreachable}"
        ) from None
    except HfHubHTTPError as error:
        raise HubError(f"the hub at {endpoint} refused: {_first_line(error)}") from None
    except Exception as error:
        import httpx2

        if isinstance(error, httpx2.TransportError):
            raise HubError(f"cannot reach the Hugging Face hub at {endpoint} ({error}). {unreachable}") from None
        raise


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def git_blob_id(path: Path) -> str:
    """The git object id of a file's content (how the hub names small files it keeps in git)."""
    from huggingface_hub.utils.sha import git_hash

    return git_hash(path.read_bytes())


# -- folders users bring ---------------------------------------------------------------------------


def read_export_pin(folder: Path, name: str) -> LockedModel | None:
    """The pin a `kiln weights export` left in `folder`, or None when it is not an export."""
    path = folder / EXPORT_PIN
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        exported_name, entry = document["name"], document["model"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsLockError(f"{path} is not a Kiln export: {error}") from None
    if exported_name != name:
        raise WeightsLockError(f"{folder} is an export of {exported_name!r}, not {name!r}")
    return LockedModel.from_json(name, entry)


def folder_commit(folder: Path, model: LockedModel, revision: str | None) -> tuple[str, str]:
    """The commit of `model.repo` a folder holds and how that is known: `revision` if given, the
    `snapshots/<commit>` of a hub cache path, or the download metadata `hf download --local-dir` keeps
    (all files must agree). Raises WeightsLockError when none of these tells."""
    if revision is not None:
        if not COMMIT.match(revision):
            raise WeightsLockError(f"`--revision` must be a 40-digit commit to import a folder, not {revision!r}")
        return revision, "commit given with --revision"
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and COMMIT.match(resolved.name):
        return resolved.name, "a hub cache snapshot"
    commits = {metadata[0] for file in model.files if (metadata := _download_metadata(folder, file.path))}
    if len(commits) == 1:
        return commits.pop(), "the hub's download metadata in the folder"
    why = (
        "its files come from different commits" if commits else "it has neither hub download metadata nor an export pin"
    )
    raise WeightsLockError(
        f"cannot tell which commit of {model.repo} {folder} holds ({why}): pass `--revision COMMIT` "
        "(the commit you downloaded; a hub cache keeps it as the folder name under snapshots/)"
    )


def _download_metadata(folder: Path, path: str) -> tuple[str, str] | None:
    """(commit, etag) that `hf download --local-dir` recorded for a file, unless the file changed since."""
    metadata = folder / HUB_METADATA_DIR / "huggingface" / "download" / f"{path}.metadata"
    try:
        commit, etag, timestamp = metadata.read_text().splitlines()[:3]
        if (folder / path).stat().st_mtime - 1 > float(timestamp):
            return None
    except (OSError, ValueError):
        return None
    return commit.strip(), etag.strip()


def recorded_etag(folder: Path, path: str) -> str | None:
    """The hub's etag for a file as its download recorded it: a hub cache names each blob by it, a
    `--local-dir` download keeps it in its metadata. For an LFS file it is the sha256."""
    link = folder / path
    if link.is_symlink() and link.resolve().parent.name == "blobs":
        return link.resolve().name
    metadata = _download_metadata(folder, path)
    return metadata[1] if metadata else None


def etag_matches(etag: str | None, sha256: str, path: Path) -> bool:
    """Whether a file's content is what the hub's etag names (an LFS sha256 or a git blob id); true
    when there is no etag to check against."""
    if etag is None:
        return True
    if SHA256.match(etag):
        return etag == sha256
    if COMMIT.match(etag):
        return etag == git_blob_id(path)
    return True


def _today() -> str:
    return time.strftime("%Y-%m-%d")


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
