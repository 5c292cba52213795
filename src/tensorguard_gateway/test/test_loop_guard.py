"""The loop guard drops what a gateway node published, whatever its namespace or process, and asks the
graph only about publishers it has not seen."""
from tensorguard_gateway.loop_guard import LoopGuard


def test_messages_of_gateway_publishers_are_dropped_and_counted_others_pass():
    graph = {b'g1': 'gateway', b'r1': 'edge_node'}
    lookups = []

    def publishers():
        lookups.append(1)
        return dict(graph)

    guard = LoopGuard('gateway')
    assert guard.from_gateway(b'g1', publishers)
    assert not guard.from_gateway(b'r1', publishers)
    assert guard.from_gateway(b'g1', publishers)
    assert len(lookups) == 1 and guard.dropped == 2
    graph[b'g2'] = 'gateway'  # another gateway (e.g. /site_b/gateway) appears later
    assert guard.from_gateway(b'g2', publishers)
    assert len(lookups) == 2


def test_a_publisher_the_graph_does_not_know_is_bridged():
    guard = LoopGuard('gateway')
    assert not guard.from_gateway(b'unknown', lambda: {})
    assert guard.dropped == 0
