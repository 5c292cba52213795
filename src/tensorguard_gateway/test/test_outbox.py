"""The site gateway's outbox keeps order, bounds itself, waits while nothing is subscribed and resends what a
lost session may have taken; the server gateway's digest memory drops copies."""
from tensorguard_gateway.outbox import Outbox, RecentDigests


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


def test_after_a_link_loss_what_was_sent_in_the_window_goes_first_again():
    clock = Clock()
    outbox, put = Outbox(limit=10, window_s=60.0, clock=clock), []
    outbox.add('a', b'old')
    outbox.flush(lambda key, payload: not put.append(payload))
    clock.now = 100.0  # out of the window: not resent
    outbox.add('a', b'one')
    outbox.add('a', b'two')
    outbox.flush(lambda key, payload: not put.append(payload))
    outbox.add('a', b'three')  # queued while the link is down
    assert outbox.resend() == 2
    put.clear()
    outbox.flush(lambda key, payload: not put.append(payload))
    assert put == [b'one', b'two', b'three']
    assert outbox.resend() == 3 and outbox.resend() == 0


def test_copies_are_recognised_within_the_memory():
    digests = RecentDigests(limit=2)
    assert not digests.seen(b'a') and digests.seen(b'a')
    assert not digests.seen(b'b') and not digests.seen(b'c')
    assert not digests.seen(b'a')  # forgotten: the memory holds the last two
