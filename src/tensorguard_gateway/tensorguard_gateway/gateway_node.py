"""``gateway``: bridges the TensorGuard topics between one DDS domain and the fleet's Zenoh network.

    ros2 run tensorguard_gateway gateway --ros-args --params-file config/gateway_site.yaml

Mode ``site`` (one per site): the site's robots' encrypted updates, outcome reports and status go to
the router under ``tensorguard/<fleet>/<site>/<robot>/...``, after `screen.screen` checked that the
robot that signed them is one of this site's ``robots``; round configs, models and the fleet status
come back and are published into the site's domain, the latched ones latched (reliable,
transient_local). The site gateway asks the server gateway's queryable for the current config and
model each time its link to the router comes up, so robots that join late or a site that was cut
off still get them. Messages for the server wait in a bounded outbox while no server gateway is
subscribed (a cut link), then leave in order.

Mode ``server`` (one, next to the aggregator): the reverse, with a queryable answering the latest
round config and model. Both modes carry the rclpy-serialized bytes exactly as DDS delivered them
(raw subscriptions, raw publications: nothing is re-encoded), use reliable delivery and blocking
congestion control for configs, models, updates and reports (best effort for status telemetry),
never bridge back out what a gateway published into the domain (`loop_guard.LoopGuard`), and count
messages in and out, loops and refusals on ``/diagnostics``.

With ``site_aggregation`` (off by default; docs/site-aggregation.md) a site gateway sums the encrypted
updates of its robots in every round whose signed config names this site (`site_round.SiteRound`, with
the keys of `tensorguard fleet site-aggregator-key`) and sends one signed ``SitePartialSum`` under
``tensorguard/<fleet>/<site>/site_sum`` instead of those updates, through the outbox like them; the
server gateway, with the switch on, publishes the sites' sums on ``/tensorguard/site_partial_sums``.
Without the switch neither gateway declares anything for site sums.
"""
from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from dataclasses import dataclass

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message, serialize_message

from tensorguard_crypto.fleet import passphrase_from_environment
from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_crypto.site_keys import load_site_aggregator
from tensorguard_msgs.msg import (
    EncryptedUpdate,
    FleetStatus,
    ModelUpdate,
    OutcomeReport,
    RobotStatus,
    RoundConfig,
    SitePartialSum,
)
from tensorguard_ros import qos, topics
from tensorguard_ros.config_fields import described
from tensorguard_ros.diagnostics import DiagnosticsPublisher, Health
from tensorguard_ros.node_main import spin_node
from tensorguard_ros.params import declare_dataclass_parameters

from .keyexpr import (
    CHANNELS,
    ENCRYPTED_UPDATES,
    FLEET_STATUS,
    MODEL_UPDATES,
    OUTCOME_REPORTS,
    ROBOT_STATUS,
    ROUND_CONFIG,
    SITE_SUMS,
    Channel,
    Direction,
    KeySchemeError,
    KeySpace,
    check_name,
    check_site,
)
from .loop_guard import LoopGuard
from .network import TlsFiles, client_config
from .outbox import Outbox, RecentDigests, digest
from .screen import GatewayRefusal, screen, screen_site_sum
from .site_aggregation import partial_sum_message
from .site_round import SiteRound, SiteSumRefusal

MODES = ('site', 'server')
RETRY_S = 2.0
RESEND_WINDOW_S = 60.0  # how long a site gateway keeps sending a record the server gateway does not acknowledge
ACK_TIMEOUT_S = 10.0  # a record not acknowledged this long after it was put is put again
DELIVERED_DIGESTS = 4096


@dataclass
class GatewaySettings:
    """The gateway's parameters (``robots`` is declared apart: a string array without a default)."""

    mode: str = described("site: bridge this site's robots to the fleet router; server: bridge the fleet server.",
                          'site', read_only=True)
    fleet: str = described('Fleet name, the second level of every key (docs/gateway.md).', 'fleet', read_only=True)
    site_id: str = described("This site's id (site mode); its certificate's common name is site:<id>.", '',
                             read_only=True)
    connect: list[str] = described('Zenoh endpoints of the fleet router (tls/HOST:PORT).',
                                   default_factory=lambda: ['tls/127.0.0.1:7447'], read_only=True)
    root_ca_certificate: str = described("The fleet's gateway CA certificate (PEM).", '', read_only=True)
    certificate: str = described("This gateway's certificate from `tensorguard fleet gateway-cert` (PEM).", '',
                                 read_only=True)
    private_key: str = described("This gateway's private key (PEM, mode 0600).", '', read_only=True)
    verify_router_name: bool = described("Check that the router's certificate names the host connected to.", True,
                                         read_only=True)
    max_message_bytes: int = described('Largest serialized message carried; larger ones are refused (oversized).',
                                       80 * 1024 * 1024, minimum=1024, read_only=True)
    outbox_messages: int = described('Messages for the server held while no server gateway is reachable; the '
                                     'oldest is dropped (and counted) beyond this.', 64, minimum=1, read_only=True)
    site_aggregation: bool = described(
        "Site aggregation (docs/site-aggregation.md), off by default. Site mode: sum the robots' updates of rounds "
        "whose config names this site and send one SitePartialSum instead; server mode: publish the sites' sums "
        'for the aggregator.', False, read_only=True)
    site_aggregator_key: str = described(
        'Site mode with site_aggregation: <site>_aggregator.key from `tensorguard fleet site-aggregator-key` '
        '(passphrase from TENSORGUARD_KEY_PASSPHRASE).', '', read_only=True)
    site_seal_key: str = described('Site mode with site_aggregation: <site>_seal.key (same command).', '',
                                   read_only=True)
    site_trust_file: str = described('Site mode with site_aggregation: <site>_trust.json (same command).', '',
                                     read_only=True)
    site_sum_margin_s: float = described(
        'Site mode with site_aggregation: send the sum this long before the round deadline when some robot of '
        'the site has not sent.', 5.0, minimum=0.0, read_only=True)


@dataclass(frozen=True)
class Topic:
    """The ROS side of a channel: message type, topic (relative for per-robot channels) and QoS."""

    message_type: type
    name: str
    profile: QoSProfile


TOPICS = {
    ROUND_CONFIG: Topic(RoundConfig, topics.ROUND_CONFIG, qos.LATCHED),
    MODEL_UPDATES: Topic(ModelUpdate, topics.MODEL_UPDATES, qos.LATCHED),
    FLEET_STATUS: Topic(FleetStatus, topics.FLEET_STATUS, qos.STATUS),
    ENCRYPTED_UPDATES: Topic(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES),
    OUTCOME_REPORTS: Topic(OutcomeReport, topics.OUTCOME_REPORTS, qos.UPDATES),
    ROBOT_STATUS: Topic(RobotStatus, 'status', qos.STATUS),
    SITE_SUMS: Topic(SitePartialSum, topics.SITE_PARTIAL_SUMS, qos.UPDATES),
}
SIGNED = (ENCRYPTED_UPDATES, OUTCOME_REPORTS)
ACKNOWLEDGED = (*SIGNED, SITE_SUMS)  # records the server gateway delivers once and acknowledges


def ros_topic(channel: Channel, robot: str = '') -> str:
    """The channel's ROS topic (a per-robot one in the robot's namespace)."""
    return f'/{robot}/{TOPICS[channel].name}' if channel.per_robot else TOPICS[channel].name


class GatewayNode(Node):
    """The gateway of one DDS domain (module docstring)."""

    def __init__(self) -> None:
        super().__init__('gateway')
        self.settings = declare_dataclass_parameters(self, GatewaySettings)
        robots = self.declare_parameter('robots', Parameter.Type.STRING_ARRAY, ParameterDescriptor(
            description="Site mode: the site's robot ids; updates signed by any other robot are dropped.",
            read_only=True)).value
        self.robots = [check_name(robot, 'robots entry') for robot in robots or []]
        settings = self.settings
        if settings.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, not {settings.mode!r}')
        self.site = check_site(settings.site_id) if settings.mode == 'site' else ''
        if self.site and not self.robots:
            raise ValueError('robots: a site gateway needs the list of its robot ids')
        self.keys = KeySpace(settings.fleet)
        self.tls = TlsFiles(settings.root_ca_certificate, settings.certificate, settings.private_key)
        self.tls.check()
        self.site_round: SiteRound | None = None  # site mode with site_aggregation
        if self.site and settings.site_aggregation:
            self.site_round = SiteRound(self.site, load_site_aggregator(
                self.site, settings.site_aggregator_key, settings.site_seal_key, settings.site_trust_file,
                passphrase_from_environment()), settings.site_sum_margin_s)
        self.health = Health(self.get_logger())
        self.guard = LoopGuard(self.get_name())
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._latest: dict[Channel, bytes] = {}  # server: the latest message of each latched channel
        self._seen: dict[Channel, bytes] = {}  # site: the digest of the latest one published into the domain
        self._ros_publishers: dict[str, Publisher] = {}
        self._zenoh_publishers: dict[str, object] = {}
        self._zenoh_entities: list[object] = []  # subscribers and queryables, alive as long as the session
        self._outbox = Outbox(settings.outbox_messages, RESEND_WINDOW_S)  # site: messages for the server
        self._outbox_lock = threading.Lock()  # the executor fills it, the sender thread empties it
        self._wake_sender = threading.Event()
        self._delivered = RecentDigests(DELIVERED_DIGESTS)  # server: signed records already delivered
        self._acks: deque[bytes] = deque()  # site: acknowledgements from the server gateway, for the next tick
        self._linked = False
        self._links_opened = 0  # Zenoh transports opened so far (a cut and reconnect opens a new one)
        self._links_handled = 0
        self._stop = threading.Event()
        self.session = None
        self.diagnostics = DiagnosticsPublisher(self, self.health, f'{settings.fleet}/{self.site or "server"}',
                                                self._diagnostic_values)
        outgoing = Direction.TO_SERVER if self.site else Direction.TO_SITES
        for channel in CHANNELS:
            if channel.direction is outgoing:
                for robot in (self.robots if channel.per_robot else ['']):
                    self._subscribe_dds(channel, robot)
            elif not channel.per_robot:
                self._ros_publisher(ros_topic(channel), TOPICS[channel])
        if settings.site_aggregation and not self.site:
            self._ros_publisher(ros_topic(SITE_SUMS), TOPICS[SITE_SUMS])
        self.create_timer(0.5, self._tick)
        threading.Thread(target=self._connect, name='zenoh-connect', daemon=True).start()
        if self.site:
            threading.Thread(target=self._send_outbox, name='outbox-sender', daemon=True).start()

    # Zenoh session ---------------------------------------------------------------------------------
    def _connect(self) -> None:
        """Open the Zenoh session (retrying until the router answers), then declare this mode's entities."""
        import zenoh

        zenoh.try_init_log_from_env()  # Zenoh's own log on stderr when RUST_LOG is set
        while not self._stop.is_set():
            try:
                session = zenoh.open(client_config(self.settings.connect, self.tls, self.settings.verify_router_name))
                break
            except zenoh.ZError as error:
                self.health.fault('router', f'cannot reach the fleet router at {", ".join(self.settings.connect)}: '
                                            f'{str(error).splitlines()[0][:200]}')
                self._stop.wait(RETRY_S)
        else:
            return
        for channel in CHANNELS:
            incoming = channel.direction is (Direction.TO_SITES if self.site else Direction.TO_SERVER)
            if incoming:
                key = self.keys.fleet_key(channel) if self.site else self.keys.all_sites_key(channel)
                self._zenoh_entities.append(session.declare_subscriber(key, self._from_zenoh))
            elif self.site:
                for robot in self.robots:
                    self._declare_publisher(session, self.keys.robot_key(self.site, robot, channel), channel)
            else:
                key = self._declare_publisher(session, self.keys.fleet_key(channel), channel)
                if channel.latched:
                    self._zenoh_entities.append(session.declare_queryable(key, self._answer_query))
        if self.site:
            self._zenoh_entities.append(session.declare_subscriber(
                self.keys.delivered_key(self.site), lambda sample: self._acks.append(sample.payload.to_bytes())))
        if self.settings.site_aggregation:
            if self.site:
                self._declare_publisher(session, self.keys.site_sum_key(self.site), SITE_SUMS)
            else:
                self._zenoh_entities.append(session.declare_subscriber(self.keys.all_site_sums_key(),
                                                                       self._from_zenoh))
        self._zenoh_entities.append(session.info.declare_transport_events_listener(self._on_transport))
        with self._lock:
            self.session = session
            latest = list(self._latest.items())
        for channel, payload in latest:  # what the aggregator latched before the session was up
            self._zenoh_publishers[self.keys.fleet_key(channel)].put(payload)
        self.get_logger().info(f'{self.settings.mode} gateway of fleet {self.settings.fleet} connected to '
                               f'{", ".join(self.settings.connect)}')

    def _declare_publisher(self, session, key: str, channel: Channel) -> str:
        import zenoh

        reliable = channel is not ROBOT_STATUS and channel is not FLEET_STATUS
        self._zenoh_publishers[key] = session.declare_publisher(
            key, congestion_control=zenoh.CongestionControl.BLOCK if reliable else zenoh.CongestionControl.DROP,
            reliability=zenoh.Reliability.RELIABLE if reliable else zenoh.Reliability.BEST_EFFORT)
        return key

    def _answer_query(self, query) -> None:
        """Server: answer a site's query for a latched channel with the latest message, if there is one."""
        try:
            channel = self.keys.parse(str(query.key_expr)).channel
        except KeySchemeError:
            return
        with self._lock:
            latest = self._latest.get(channel)
        if latest is not None:
            query.reply(query.key_expr, latest)

    def _on_transport(self, event) -> None:
        """Zenoh opened or closed a transport; an opening after a cut may come and go between two ticks."""
        import zenoh

        if event.kind == zenoh.SampleKind.PUT:
            with self._lock:
                self._links_opened += 1

    def _tick(self) -> None:
        """Track the router link; when it came (back) up, catch up on latched channels and resend what a lost
        session may have taken (site); flush the outbox."""
        with self._lock:
            session, opened = self.session, self._links_opened
        if session is None:
            return
        linked = bool(list(session.info.routers_zid()))
        if linked:
            self.health.clear('router')
            if self.site and (not self._linked or opened != self._links_handled):
                self._links_handled = opened
                for channel in (ROUND_CONFIG, MODEL_UPDATES):
                    session.get(self.keys.fleet_key(channel), self._on_reply, timeout=10.0)
                with self._outbox_lock:
                    resent = self._outbox.resend()
                self._count('resent', resent)
                self.get_logger().info(f'link to the fleet router up: asked for the latched config and model, '
                                       f'{resent} message(s) sent again, {len(self._outbox)} waiting')
        else:
            self.health.fault('router', 'no link to the fleet router; messages for the server wait in the outbox')
        self._linked = linked
        with self._outbox_lock:
            while self._acks:
                self._outbox.acknowledge(self._acks.popleft())
            self._count('resent', self._outbox.resend(ACK_TIMEOUT_S))
            self._outbox.mark_expired()
        self._send_site_sum()
        self._wake_sender.set()

    def _on_reply(self, reply) -> None:
        if reply.ok is not None:
            self._from_zenoh(reply.ok)

    # DDS -> Zenoh ---------------------------------------------------------------------------------
    def _subscribe_dds(self, channel: Channel, robot: str) -> None:
        topic = ros_topic(channel, robot)
        self.create_subscription(TOPICS[channel].message_type, topic,
                                 lambda raw, info: self._from_dds(channel, robot, topic, raw, info),
                                 TOPICS[channel].profile, raw=True)

    def _publishers_of(self, topic: str) -> dict[bytes, str]:
        return {bytes(info.endpoint_gid): info.node_name for info in self.get_publishers_info_by_topic(topic)}

    def _from_dds(self, channel: Channel, robot: str, topic: str, raw: bytes, info: dict) -> None:
        """A message published in this domain: screened, then sent to the router under its key."""
        gid = info.get('publisher_gid') or {}
        if self.guard.from_gateway(bytes(gid.get('data', b'')), lambda: self._publishers_of(topic)):
            return
        try:
            robot = self._check(channel, raw, robot, self.robots if self.site else None)
        except GatewayRefusal as refusal:
            self._refuse(refusal, f'from DDS {topic}')
            return
        if self.site_round is not None and channel is ENCRYPTED_UPDATES and self.site_round.takes(robot):
            self._add_to_site_sum(robot, raw)
            return
        if self.site:
            self._send(self.keys.robot_key(self.site, robot, channel), raw, queue=channel is not ROBOT_STATUS)
        else:
            if channel.latched:
                with self._lock:
                    self._latest[channel] = raw
            self._send(self.keys.fleet_key(channel), raw, queue=False)
        self._count(f'out {channel.name}')

    def _add_to_site_sum(self, robot: str, raw: bytes) -> None:
        """Site aggregation: add a robot's screened update to the round's sum (not forwarded), and send the sum
        if that completed it."""
        try:
            self.site_round.add(bytes(deserialize_message(raw, EncryptedUpdate).package))
        except SiteSumRefusal as refusal:
            self._refuse(refusal, f'site sum: the update of {robot}')
            return
        self._count(f'summed {ENCRYPTED_UPDATES.name}')
        self._send_site_sum()

    def _send_site_sum(self) -> None:
        """Site aggregation: put the round's signed partial sum through the outbox once it is due."""
        blob = self.site_round.due() if self.site_round is not None else None
        if blob is None:
            return
        self._send(self.keys.site_sum_key(self.site),
                   serialize_message(partial_sum_message(blob, self.get_clock().now().to_msg())), queue=True)
        self._count(f'out {SITE_SUMS.name}')
        self.get_logger().info(f'site sum of round {self.site_round.round_id} sent')

    def _start_site_round(self, raw: bytes) -> None:
        """Site aggregation: a new round config; sum this round's updates if it names this site."""
        try:
            package = bytes(deserialize_message(raw, RoundConfig).package)
        except Exception as error:  # rclpy raises several types for bytes that are not this message's CDR
            self._refuse(GatewayRefusal(f'round config: not a serialized RoundConfig ({type(error).__name__})',
                                        reason=Reason.MALFORMED), 'site sum: round config')
            return
        try:
            summing = self.site_round.on_config(package)
        except SiteSumRefusal as refusal:
            self._refuse(refusal, 'site sum: round config')
            return
        self.get_logger().info(f'round {self.site_round.round_id}: ' + (
            "summing this site's updates" if summing else 'the config names no sum of this site; forwarding updates'))

    def _send(self, key: str, payload: bytes, queue: bool) -> None:
        """Put now if a subscriber matches and nothing waits before it; else queue (or drop telemetry)."""
        if queue:
            with self._outbox_lock:
                dropped = self._outbox.add(key, payload)
            self._count('dropped (outbox full)', dropped)
            self._wake_sender.set()
            return
        publisher = self._zenoh_publishers.get(key)
        if publisher is not None:
            publisher.put(payload)

    def _send_outbox(self) -> None:
        """Sender thread (site): put the outbox's messages in order while a server gateway is subscribed.
        A blocking put into a cut link waits here, not on the executor, which keeps receiving, counting and
        resending."""
        while not self._stop.is_set():
            self._wake_sender.wait(0.5)
            self._wake_sender.clear()
            while not self._stop.is_set():
                with self._outbox_lock:
                    message = self._outbox.peek()
                if message is None or not self._put_if_matched(*message):
                    break
                with self._outbox_lock:
                    self._outbox.mark_sent(message)

    def _put_if_matched(self, key: str, payload: bytes) -> bool:
        """Put `payload` if a server gateway is subscribed to `key` (else it waits in the outbox)."""
        publisher = self._zenoh_publishers.get(key)
        if publisher is None or not publisher.matching_status.matching:
            return False
        publisher.put(payload)
        return True

    # Zenoh -> DDS ---------------------------------------------------------------------------------
    def _from_zenoh(self, sample) -> None:
        """A message from the router: checked against its key, then published raw into this domain."""
        try:
            route = self.keys.parse(str(sample.key_expr))
        except KeySchemeError as error:
            self._refuse(GatewayRefusal(str(error), reason=Reason.MALFORMED), 'from Zenoh')
            return
        payload = sample.payload.to_bytes()
        allowed = [route.robot] if route.robot else [route.site] if route.channel is SITE_SUMS else None
        try:
            self._check(route.channel, payload, route.robot, allowed)
        except GatewayRefusal as refusal:
            self._refuse(refusal, f'from Zenoh {sample.key_expr}')
            return
        if route.channel in ACKNOWLEDGED and self._delivered.seen(payload):
            self._count(f'duplicate {route.channel.name}')
            self._acknowledge(route.site, payload)
            return
        if route.channel.latched:
            digest = hashlib.sha256(payload).digest()
            with self._lock:
                if self._seen.get(route.channel) == digest:
                    return
                self._seen[route.channel] = digest
        if route.channel is ROUND_CONFIG and self.site_round is not None:
            self._start_site_round(payload)
        topic = ros_topic(route.channel, route.robot)
        self._ros_publisher(topic, TOPICS[route.channel]).publish(payload)
        self._count(f'in {route.channel.name}')
        if route.channel in ACKNOWLEDGED:
            self._acknowledge(route.site, payload)

    def _acknowledge(self, site: str, payload: bytes) -> None:
        """Server: tell `site` this record was delivered into the server's domain (its SHA-256)."""
        with self._lock:
            session = self.session
        if session is not None:
            session.put(self.keys.delivered_key(site), digest(payload))

    def _ros_publisher(self, topic: str, spec: Topic) -> Publisher:
        with self._lock:
            if topic not in self._ros_publishers:
                self._ros_publishers[topic] = self.create_publisher(spec.message_type, topic, spec.profile)
            return self._ros_publishers[topic]

    # Checks and counters --------------------------------------------------------------------------
    def _check(self, channel: Channel, raw: bytes, robot: str, allowed: list[str] | None) -> str:
        """The robot a message is for: for signed records the signed robot id (which must be in `allowed`),
        for robot status the robot its topic or key names (which the message must repeat)."""
        if len(raw) > self.settings.max_message_bytes:
            raise GatewayRefusal(f'{channel.name}: {len(raw)} bytes, over max_message_bytes '
                                 f'{self.settings.max_message_bytes}', reason=Reason.OVERSIZED)
        if allowed is None:
            return robot
        try:
            msg = deserialize_message(raw, TOPICS[channel].message_type)
        except Exception as error:  # rclpy raises several types for bytes that are not this message's CDR
            raise GatewayRefusal(f'{channel.name}: not a serialized {TOPICS[channel].message_type.__name__} '
                                 f'({type(error).__name__})', reason=Reason.MALFORMED) from None
        if channel in SIGNED:
            return screen(channel, msg.robot_id, bytes(msg.package), allowed)
        if channel is SITE_SUMS:
            return screen_site_sum(msg.site_id, bytes(msg.package), allowed[0])
        if msg.robot_id != robot:
            raise GatewayRefusal(f'{channel.name}: the status of {robot!r} claims robot {msg.robot_id[:64]!r}',
                                 reason=Reason.HEADER_MISMATCH)
        return robot

    def _refuse(self, refusal: Refusal, where: str) -> None:
        self.health.refuse(refusal.reason.value)
        self.get_logger().warning(f'refused ({refusal.reason.value}) {where}: {refusal}')

    def _count(self, what: str, times: int = 1) -> None:
        if times:
            with self._lock:
                self.counts[what] += times

    def _diagnostic_values(self) -> dict[str, str]:
        with self._lock:
            counts = dict(self.counts)
        values = {'mode': self.settings.mode, 'site': self.site or '-', 'router': 'linked' if self._linked else 'down',
                  'outbox': str(len(self._outbox)), 'unacknowledged': str(self._outbox.unacknowledged),
                  'given up (never acknowledged)': str(self._outbox.expired), 'looped': str(self.guard.dropped)}
        values.update({what: str(count) for what, count in sorted(counts.items())})
        return values

    def destroy_node(self) -> None:
        """Close the Zenoh session first (an open session keeps the process from exiting)."""
        self._stop.set()
        with self._lock:
            session, self.session = self.session, None
        if session is not None:
            session.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console entry point: spin the gateway until Ctrl-C."""
    return spin_node(GatewayNode, args)


if __name__ == '__main__':
    raise SystemExit(main())

