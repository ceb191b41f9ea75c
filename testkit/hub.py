"""A local stand-in for the Hugging Face hub: the parts of its HTTP API that huggingface_hub's
`model_info`, `snapshot_download` and `hf_hub_download` use, on loopback, for tests.

Point huggingface_hub at it with `HF_ENDPOINT=hub.endpoint` (Kiln reads the variable on every call).
It serves repositories the test builds in memory, with the headers and JSON the real hub sends
(huggingface_hub 2.x, read from its source):

- `GET /api/models/{repo}[/revision/{rev}]`: `id`, `sha` (the commit the revision resolves to),
  `gated`, and `siblings` (`rfilename`; with `?blobs=True` also `size`, `blobId` and, for LFS files,
  `lfs: {size, sha256, pointerSize}`). Public for gated repositories, as on the hub.
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...`: `[{type: file|directory, path, oid,
  size, lfs: {oid, size, pointerSize}}]`, one page (no `Link` header).
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: a file kept in git answers 200 with `X-Repo-Commit`
  and `ETag: "<git blob id>"`; an LFS file answers 302 to a CDN on another origin (another port)
  with `X-Repo-Commit`, `X-Linked-Etag: "<sha256>"` and `X-Linked-Size`, as the hub does, so the
  client drops its token before following. A gated repository answers 401 without a token and 403
  with a token it was not granted, both with `X-Error-Code: GatedRepo`; unknown repositories,
  revisions and files answer 404 with `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`.

`tamper(repo, path)` makes the hub (an LFS file: its CDN) serve a file with one byte changed while its
metadata still names the original: what a corrupted mirror or a man in the middle would deliver. Every request is
recorded in `requests` (method, path, whether it carried a token).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".pt", ".ckpt", ".gguf")
POINTER_SIZE = 134


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()


@dataclass
class HubRepo:
    repo_id: str
    gated: bool = False
    # the tokens granted access to a gated repository
    tokens: set[str] = field(default_factory=set)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    # (commit, path) -> bytes the CDN serves instead of the real ones
    tampered: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class LocalHub:
    """The hub on two loopback ports (API and CDN); use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- the repositories ----------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, tokens: set[str] = frozenset()
    ) -> str:
        """Creates `repo_id` with one commit of `files` on `main`; returns the commit."""
        self.repos[repo_id] = HubRepo(repo_id, gated=gated, tokens=set(tokens))
        return self.commit(repo_id, files)

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Adds a commit holding exactly `files` and moves `branch` to it; returns the commit."""
        repo = self.repos[repo_id]
        parent = repo.refs.get(branch, "")
        tree = "".join(f"{path}\0{git_blob_id(data)}\n" for path, data in sorted(files.items()))
        commit = hashlib.sha1(f"{repo_id}\n{parent}\n{tree}".encode()).hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[branch] = commit
        return commit

    def tamper(self, repo_id: str, path: str, revision: str = "main") -> None:
        """From now on the file's bytes arrive with one byte flipped; the metadata is unchanged."""
        repo = self.repos[repo_id]
        commit = repo.resolve(revision)
        data = bytearray(repo.commits[commit][path])
        data[len(data) // 2] ^= 0x01
        repo.tampered[(commit, path)] = bytes(data)

    # -- the servers ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def __enter__(self) -> Self:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        for role in ("api", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            server.role = role
            threading.Thread(target=server.serve_forever, name=f"local-hub-{role}", daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc_info) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def record(self, method: str, path: str, authorized: bool) -> None:
        with self._lock:
            self.requests.append((method, path, authorized))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    # -- routing ---------------------------------------------------------------------------------

    def _handle(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        self.hub.record(self.command, url.path, token is not None)
        if self.server.role == "cdn":
            return self._cdn(url.path, head=head)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = self._repo("/".join(parts[2:4]))
            if repo is None:
                return
            rest = parts[4:]
            if not rest:
                return self._model_info(repo, "main", query)
            if rest[0] == "revision" and len(rest) >= 2:
                return self._model_info(repo, "/".join(rest[1:]), query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo("/".join(parts[:2]))
            if repo is None:
                return
            return self._resolve(repo, parts[3], "/".join(parts[4:]), token, head=head)
        self._error(404, "RepoNotFound", "Not found")

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: HubRepo, revision: str) -> str | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- the API ---------------------------------------------------------------------------------

    def _model_info(self, repo: HubRepo, revision: str, query: dict) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, data in sorted(repo.commits[commit].items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                if is_lfs(path):
                    pointer = lfs_pointer(data)
                    sibling.update(
                        size=len(data),
                        blobId=git_blob_id(pointer),
                        lfs={
                            "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "pointerSize": len(pointer),
                        },
                    )
                else:
                    sibling.update(size=len(data), blobId=git_blob_id(data))
            siblings.append(sibling)
        self._json(
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo: HubRepo, revision: str, prefix: str) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        entries, folders = [], set()
        for path, data in sorted(repo.commits[commit].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            parents = path.split("/")[:-1]
            for depth in range(1, len(parents) + 1):
                folder = "/".join(parents[:depth])
                if folder not in folders and (not prefix or folder.startswith(prefix)):
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0, "path": folder}
                    )
            entry = {"type": "file", "path": path, "size": len(data)}
            if is_lfs(path):
                pointer = lfs_pointer(data)
                entry.update(
                    oid=git_blob_id(pointer),
                    lfs={"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)},
                )
            else:
                entry["oid"] = git_blob_id(data)
            entries.append(entry)
        self._json(entries)

    def _resolve(self, repo: HubRepo, revision: str, path: str, token: str | None, *, head: bool) -> None:
        if repo.gated and token not in repo.tokens:
            if token is None:
                message = (
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in."
                )
                return self._error(401, "GatedRepo", message)
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.hub.endpoint}/{repo.repo_id} to ask for access."
            )
            return self._error(403, "GatedRepo", message)
        commit = self._commit(repo, revision)
        if commit is None:
            return
        files = repo.commits[commit]
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=commit)
        data = files[path]
        if is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            headers = {
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_id(lfs_pointer(data))}"',
                "Location": f"{self.hub.cdn}/lfs/{quote(repo.repo_id)}/{commit}/{quote(path)}",
            }
            return self._send(302, b"", headers, head=True)
        served = repo.tampered.get((commit, path), data)
        self._send(200, served, {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}, head=head)

    # -- the CDN ---------------------------------------------------------------------------------

    def _cdn(self, path: str, *, head: bool) -> None:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if len(parts) < 5 or parts[0] != "lfs":
            return self._send(404, b"no such object", {}, head=head)
        repo = self.hub.repos.get("/".join(parts[1:3]))
        commit, file = parts[3], "/".join(parts[4:])
        if repo is None or commit not in repo.commits or file not in repo.commits[commit]:
            return self._send(404, b"no such object", {}, head=head)
        data = repo.tampered.get((commit, file), repo.commits[commit][file])
        self._send(200, data, {"ETag": f'"{hashlib.sha256(repo.commits[commit][file]).hexdigest()}"'}, head=head)

    # -- responses -------------------------------------------------------------------------------

    def _json(self, document) -> None:
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"}, head=False)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, head=self.command == "HEAD")

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
