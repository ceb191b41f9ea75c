"""Background upkeep: requeue requests whose worker vanished, expire start deadlines, and delete
results and files older than the retention period."""

from __future__ import annotations

import logging
import threading
import time

from server.files import FileStore
from server.store import JobStore

logger = logging.getLogger(__name__)


class Maintenance(threading.Thread):
    def __init__(
        self, store: JobStore, files: FileStore, *, interval_seconds: float, retention_seconds: float
    ) -> None:
        super().__init__(name="kiln-maintenance", daemon=True)
        self._store = store
        self._files = files
        self._interval = interval_seconds
        self._retention = retention_seconds
        # scanning the file tree is the costly part; doing it a few times per retention period is enough
        self._purge_every = max(interval_seconds, min(3600.0, retention_seconds / 4))
        self._last_purge = 0.0
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.run_once()
            except Exception:
                logger.exception("maintenance pass failed; retrying")

    def run_once(self) -> None:
        failed = self._store.recover()
        if failed:
            logger.warning("gave up on %d request(s): %s", len(failed), ", ".join(failed))
        now = time.time()
        if now - self._last_purge >= self._purge_every:
            self._last_purge = now
            jobs = self._store.purge(now - self._retention)
            files = self._files.purge(now - self._retention)
            if jobs or files:
                logger.info("retention: removed %d request(s) and %d file(s)", jobs, files)
