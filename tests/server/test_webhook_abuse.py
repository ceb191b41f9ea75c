"""Hostile webhook receivers, real HTTP servers on loopback: none of them may hold up another key's
webhooks, which must arrive within 2 s of their request's completion."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.apps import STEPS, submit
from tests.fixtures.webhook_receivers import (
    HangingReceiver,
    Receiver,
    RedirectingReceiver,
)

pytestmark = pytest.mark.adversarial

KEYS = ("hostile-key", "good-key")
HOSTILE = {"Authorization": "Key hostile-key"}
GOOD = {"Authorization": "Key good-key"}


@pytest.fixture
def receivers():
    """Factory: `receivers(Kind, **kwargs)`; all are closed after the test (before its server)."""
    made = []

    def make(kind=Receiver, **kwargs):
        made.append(kind(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def hooked(receiver) -> str:
    return f"{STEPS}?fal_webhook={receiver.url}"


def completed_at(client, queued: dict, headers: dict, timeout: float = 20.0) -> float:
    """When the request was seen COMPLETED (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(queued["status_url"], headers=headers).json()["status"] == "COMPLETED":
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f"{queued['request_id']} did not complete")


def test_a_receiver_redirecting_to_an_invalid_url_stops_no_other_webhook(make_client, receivers):
    """Bug (#13): a receiver answering `302 Location: x:y` made httpx raise InvalidURL, which is no
    FetchError, out of the dispatcher's loop; that delivery stayed first in line forever (3.7 POSTs
    a second to the receiver) and no later webhook of any key was delivered."""
    client = make_client(api_keys=KEYS, allow_private_urls=True, webhook_first_retry_seconds=0.3)
    hostile, good = receivers(RedirectingReceiver), receivers()
    first = submit(client, {"tag": "hostile"}, path=hooked(hostile), headers=HOSTILE)
    completed_at(client, first, HOSTILE)
    hostile.wait_for(1)
    for index in range(3):
        queued = submit(client, {"tag": f"good-{index}"}, path=hooked(good), headers=GOOD)
        done = completed_at(client, queued, GOOD)
        good.wait_for(index + 1, timeout=5)
        assert good.deliveries[index][2] - done < 2.0
    # the failing delivery is retried with backoff (0.3 s, 0.9 s, ...), not hammered
    assert len(hostile.deliveries) <= 4


def test_a_hanging_receiver_delays_only_its_own_webhooks(make_client, receivers):
    """Bug (#14): one dispatcher thread sent webhooks one at a time with a 15 s timeout, so four
    webhooks to a receiver that never answers delayed another key's webhook by a minute. Deliveries
    now run concurrently, at most two at a time to one receiver."""
    client = make_client(api_keys=KEYS, allow_private_urls=True, webhook_timeout_seconds=10)
    hanging, redirecting, good = receivers(HangingReceiver), receivers(RedirectingReceiver), receivers()
    hostile = [submit(client, {"tag": f"hang-{i}"}, path=hooked(hanging), headers=HOSTILE) for i in range(4)]
    hostile.append(submit(client, {"tag": "redirect"}, path=hooked(redirecting), headers=HOSTILE))
    for queued in hostile:
        completed_at(client, queued, HOSTILE)
    hanging.wait_for(1)

    queued = submit(client, {"tag": "good"}, path=hooked(good), headers=GOOD)
    done = completed_at(client, queued, GOOD)
    good.wait_for(1, timeout=5)
    assert good.deliveries[0][2] - done < 2.0
    assert hanging.most_in_flight <= 2, "more deliveries in flight to one receiver than its bound"
