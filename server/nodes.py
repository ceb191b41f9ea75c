"""This process as one node of a Kiln deployment: its heartbeat in the shared queue, and the pool of
nodes as `/health` shows it.

Every node (`kiln serve`, `kiln serve --no-workers`, `kiln worker`) records itself in the queue
store every `interval` seconds: its role, the URL clients reach it by, its workers' states and the
endpoints each has warm. A node not heard of for `NODE_TIMEOUT_SECONDS` is gone from the pool; one
that stops cleanly removes itself at once. With the embedded SQLite queue the pool is this process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import server
from server.store import JobStore
from server.worker import WorkerPool

logger = logging.getLogger(__name__)

READY_STATES = ("ready", "busy")


class NodeHeartbeat(threading.Thread):
    def __init__(
        self, store: JobStore, pool: WorkerPool, *, node_id: str, role: str, url: str | None, interval: float
    ) -> None:
        super().__init__(name="kiln-node-heartbeat", daemon=True)
        self.node_id = node_id
        self._store = store
        self._pool = pool
        self._role = role
        self._url = url
        self._interval = interval
        self._started_at = time.time()
        self._stopping = threading.Event()

    def record(self) -> dict[str, Any]:
        """What the pool shows of this node, as of now."""
        return {
            "role": self._role,
            "url": self._url,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": server.__version__,
            "started_at": self._started_at,
            "workers": self._pool.states(),
            "pipelines": self._pool.pipeline_states(),
        }

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._store.heartbeat_node(self.node_id, self.record())
            except Exception as error:  # the queue restarting: the next beat tells again
                logger.warning("could not record this node's heartbeat: %s", error)
            self._stopping.wait(self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops beating and leaves the pool."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        try:
            self._store.forget_node(self.node_id)
        except Exception as error:
            logger.warning("could not remove this node from the pool: %s", error)

    def pool(self) -> dict[str, dict[str, Any]]:
        """Node id -> record (with `last_seen`) for every live node, this one as of now."""
        nodes = self._store.nodes()
        nodes[self.node_id] = {**self.record(), "last_seen": time.time()}
        return nodes


def has_ready_worker(nodes: dict[str, dict[str, Any]]) -> bool:
    """Whether any node of the pool has a worker that can take requests."""
    return any(state in READY_STATES for record in nodes.values() for state in record.get("workers", {}).values())
