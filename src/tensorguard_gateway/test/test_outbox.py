"""The site gateway's outbox keeps order, bounds itself, waits while nothing is subscribed and resends what a
lost session or the router may have lost until the server gateway acknowledges it; the server gateway's
digest memory drops copies."""
from tensorguard_gateway.outbox import Outbox, RecentDigests, digest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_messages_wait_while_nothing_is_subscribed_and_leave_in_order():
    outbox, put, matched = Outbox(limit=4, window_s=60.0), [], {'a': False}
    for i in range(3):
        outbox.add('a', bytes([i]))
    assert outbox.flush(lambda key, payload: matched[key] and not put.append(payload)) == 0
    assert len(outbox) == 3 and put == []
    matched['a'] = True
    assert outbox.flush(lambda key, payload: matched[key] and not put.append(payload)) == 3
    assert put == [b'\x00', b'\x01', b'\x02'] and len(outbox) == 0


def test_the_oldest_is_dropped_beyond_the_limit():
    outbox = Outbox(limit=2, window_s=60.0)
    assert [outbox.add('a', bytes([i])) for i in range(4)] == [0, 0, 1, 1]
    put = []
    outbox.flush(lambda key, payload: not put.append(payload))
    assert put == [b'\x02', b'\x03']


def test_what_is_not_acknowledged_goes_out_again_first_and_acknowledged_messages_do_not():
    clock = Clock()
    outbox, put = Outbox(limit=10, window_s=60.0, clock=clock), []
    for payload in (b'one', b'two', b'three'):
        outbox.add('a', payload)
    outbox.flush(lambda key, payload: not put.append(payload))
    assert outbox.acknowledge(digest(b'two')) and not outbox.acknowledge(digest(b'two'))
    outbox.add('a', b'four')  # queued while the link is down
    clock.now = 5.0
    assert outbox.resend(older_than_s=10.0) == 0  # not overdue yet
    assert outbox.resend() == 2  # the link came back: everything unacknowledged
    put.clear()
    outbox.flush(lambda key, payload: not put.append(payload))
    assert put == [b'one', b'three', b'four'] and outbox.unacknowledged == 3
    clock.now = 20.0
    assert outbox.resend(older_than_s=10.0) == 3


def test_a_message_never_acknowledged_is_given_up_after_the_window():
    clock = Clock()
    outbox = Outbox(limit=10, window_s=60.0, clock=clock)
    outbox.add('a', b'one')
    outbox.flush(lambda key, payload: True)
    clock.now = 61.0
    outbox.flush(lambda key, payload: True)
    assert outbox.unacknowledged == 0 and outbox.expired == 1


def test_copies_are_recognised_within_the_memory():
    digests = RecentDigests(limit=2)
    assert not digests.seen(b'a') and digests.seen(b'a')
    assert not digests.seen(b'b') and not digests.seen(b'c')
    assert not digests.seen(b'a')  # forgotten: the memory holds the last two


def test_messages_put_again_at_different_times_still_leave_in_the_order_they_were_added():
    """A long cut: each message is put, not acknowledged, put again at its own time; when the link is back they
    must leave in their first order (the aggregator refuses an outcome report older than one it accepted)."""
    clock = Clock()
    outbox, put = Outbox(limit=10, window_s=600.0, clock=clock), []
    for number in range(1, 4):
        outbox.add('a', bytes([number]))
        outbox.flush(lambda key, payload: not put.append(payload))
        clock.now += 4.0
    outbox.add('a', b'\x04')  # not sent yet: the link went down
    for _ in range(6):  # every tick puts again what waited 10 s for an acknowledgement, one at a time
        clock.now += 3.0
        if outbox.resend(older_than_s=10.0):
            outbox.flush(lambda key, payload: not put.append(payload))
    put.clear()
    assert outbox.resend() == 4 and len(outbox) == 4  # the link came back
    outbox.flush(lambda key, payload: not put.append(payload))
    assert put == [b'\x01', b'\x02', b'\x03', b'\x04']
