"""Background upkeep: requeue requests whose worker vanished, expire start deadlines, and delete
results and files older than the retention period.

It runs every `interval_seconds`, and also wakes at the next request's start deadline (a submit
with a deadline wakes it to look), so an `X-Fal-Request-Timeout` fires on time, not up to an
interval late.
"""

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

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._store.changes.schedule_changed.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stopping.is_set():
            self._sleep()
            if self._stopping.is_set():
                return
            try:
                self.run_once()
            except Exception:
                logger.exception("maintenance pass failed; retrying")

    def _sleep(self) -> None:
        """Until the next pass is due or the next start deadline passes, whichever is first."""
        changed = self._store.changes.schedule_changed
        changed.clear()
        timeout = self._interval
        deadline = self._store.next_start_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.time()))
        changed.wait(timeout)

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
            partial = self._files.purge_partial(now)
            if partial:
                logger.info("removed %d unfinished upload(s) or write(s) left by writers that died", partial)
