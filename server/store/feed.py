"""Wake-ups for things that wait on a job: status streams and sync runs (asyncio), workers (threads).

Writers call `publish` from any thread. A waiter `subscribe`s before it reads the job, so a change
that lands between the read and the wait is never missed. A store shared by several processes feeds
the changes other nodes make into each node's feed as well (server/store/redis.py), including
cancellations of running requests, which `on_cancel` listeners (the worker pool) act on.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Subscription:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def _fire(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """True if the job changed since the last wait, False on timeout."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True


class ChangeFeed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._work = threading.Condition()
        self._work_pending = True  # work may be waiting from before this process started
        # set when a start deadline is added, so the thread that enforces them re-plans its sleep
        self.schedule_changed = threading.Event()
        self._cancel_listeners: list[Callable[[str, str], None]] = []

    @contextmanager
    def subscribe(self, request_id: str) -> Iterator[Subscription]:
        subscription = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subscribers[request_id].add(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                subscribers = self._subscribers[request_id]
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[request_id]

    def publish(self, request_id: str) -> None:
        with self._lock:
            subscribers = tuple(self._subscribers.get(request_id, ()))
        for subscription in subscribers:
            subscription._fire()

    def publish_everything(self) -> None:
        """Wakes every waiter: changes may have been missed (a connection to a shared store was lost)."""
        with self._lock:
            subscribers = [subscription for group in self._subscribers.values() for subscription in group]
        for subscription in subscribers:
            subscription._fire()
        self.publish_work()
        self.schedule_changed.set()

    def on_cancel(self, listener: Callable[[str, str], None]) -> None:
        """Calls `listener(request_id, error_type)` when a running request's cancellation is requested."""
        self._cancel_listeners.append(listener)

    def publish_cancel(self, request_id: str, error_type: str) -> None:
        for listener in tuple(self._cancel_listeners):
            listener(request_id, error_type)

    def publish_work(self) -> None:
        with self._work:
            self._work_pending = True
            self._work.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        with self._work:
            if not self._work_pending:
                self._work.wait(timeout)
            self._work_pending = False
