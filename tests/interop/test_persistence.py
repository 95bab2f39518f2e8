"""Crash tests: the real broker, SIGKILLed in the middle of load at random moments, restarted on
the same data directory, driven by paho-mqtt clients that tern did not write.

Checks, after every round has been killed and restarted:
- every QoS 1 message whose PUBACK the publisher got reaches each persistent subscriber at
  least once [MQTT-4.3.2-1], whether it was connected or offline at the crash;
- every QoS 2 message whose PUBREC/PUBCOMP the publisher got reaches the QoS 2 subscriber
  exactly once [MQTT-4.3.3-1];
- retained messages and subscriptions survive; the store opens cleanly every time.

`TERN_CRASH_ROUNDS` sets the number of kills (default 5, to keep CI short).
"""

import collections
import os
import random
import threading
import time

import paho.mqtt.client as mqtt

from conftest import Broker, wait_for

ROUNDS = int(os.environ.get("TERN_CRASH_ROUNDS", "5"))


class Publisher(mqtt.Client):
    """paho's client with one fix, for the publisher.

    paho 2.1 resets its outgoing messages on every reconnect *attempt*: a QoS 2 message whose
    PUBREL was sent goes to "resend PUBREL" on the first attempt, and if that attempt fails
    (the broker is still starting), the next attempt turns it into "publish" with DUP 0: the
    message is published again as a new one, which breaks [MQTT-4.3.3-1] "MUST NOT re-send
    the PUBLISH once it has sent the corresponding PUBREL", and a correct broker must deliver
    it a second time. Putting those messages back to "wait for PUBCOMP" before each reset
    makes every attempt resend PUBREL, as the specification asks.
    """

    def _messages_reconnect_reset_out(self):
        with self._out_message_mutex:
            for m in self._out_messages.values():
                if m.state == mqtt.mqtt_ms_resend_pubrel:
                    m.state = mqtt.mqtt_ms_wait_for_pubcomp
        super()._messages_reconnect_reset_out()


def client(port, client_id, on_message=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.3)
    c.max_queued_messages_set(0)
    if on_message:
        c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


class Received:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        # Payload -> (packet id, DUP, broker run) of each delivery, to explain a duplicate.
        self.how = collections.defaultdict(list)
        self.run = 0

    def __call__(self, _client, _userdata, msg):
        with self.lock:
            payload = msg.payload.decode()
            self.counts[payload] += 1
            self.how[payload].append((msg.mid, msg.dup, self.run))

    def snapshot(self):
        with self.lock:
            return collections.Counter(self.counts)


def test_sigkill_during_load_loses_nothing_acknowledged(tmp_path):
    broker = Broker(tmp_path).start()
    try:
        run_crash_rounds(broker)
    finally:
        # A failed check must not leave the broker running.
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def run_crash_rounds(broker):
    rng = random.Random(int(os.environ.get("TERN_CRASH_SEED", time.time_ns())))
    live1, live2, offline = Received(), Received(), Received()
    subs = []
    for cid, qos, got in [("crash-live-q1", 1, live1), ("crash-live-q2", 2, live2), ("crash-offline", 1, offline)]:
        c = client(broker.port, cid, got)
        wait_for(c.is_connected, what=f"{cid} connected")
        result, mid = c.subscribe("crash/#", qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        subs.append(c)
    time.sleep(0.3)  # SUBACKs in
    # The offline subscriber leaves; its session keeps collecting.
    offline_client = subs.pop()
    offline_client.disconnect()
    offline_client.loop_stop()

    # Packet ids acknowledged, and what each carried. The callback runs on paho's thread and
    # must not wait for the publishing thread (which may be inside paho): a plain set add.
    acked_mids = set()
    by_mid = {}

    def on_publish(_c, _u, mid, _rc, _props):
        acked_mids.add(mid)

    pub = Publisher(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-pub", clean_session=False)
    pub.reconnect_delay_set(min_delay=0.05, max_delay=0.3)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", broker.port, keepalive=30)
    pub.loop_start()
    wait_for(pub.is_connected, what="publisher connected")

    published = []
    n = 0
    kills = 0
    for _round in range(ROUNDS):
        wait_for(lambda: pub.is_connected() and all(s.is_connected() for s in subs), timeout=20, what="clients reconnected")
        until = time.monotonic() + rng.uniform(0.2, 1.2)
        while time.monotonic() < until:
            n += 1
            qos = 1 if n % 2 else 2
            payload = f"q{qos}-{n}"
            info = pub.publish(f"crash/{qos}", payload, qos=qos)
            by_mid[info.mid] = payload
            published.append((payload, qos))
            if n % 50 == 0:
                info = pub.publish("crash/retained", f"state-{n}", qos=1, retain=True)
                by_mid[info.mid] = f"state-{n}"
            time.sleep(0.001)
        broker.proc.kill()  # SIGKILL: no chance to flush or say goodbye
        broker.proc.wait()
        kills += 1
        for r in (live1, live2, offline):
            r.run = kills
        assert "store opened" in broker.log()
        broker.start()

    # Let everything in flight settle: each acknowledged message must arrive.
    wait_for(lambda: pub.is_connected(), timeout=20, what="publisher reconnected")
    assert n < 60000, "packet ids would wrap"
    wait_for(lambda: set(by_mid) <= set(acked_mids), timeout=60, what="every publication to be acknowledged")
    acked = {by_mid[mid] for mid in acked_mids if mid in by_mid}
    acked_msgs = {p: q for p, q in published if p in acked}

    def missing(got):
        return sorted(p for p in acked_msgs if got.snapshot()[p] == 0)

    def wait_all(got, who):
        deadline = time.monotonic() + 60
        while missing(got) and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = missing(got)
        assert not lost, f"{who} never received {len(lost)} acknowledged messages, e.g. {lost[:10]}; got {sum(got.snapshot().values())} deliveries"

    wait_all(live1, "the QoS 1 subscriber")
    wait_all(live2, "the QoS 2 subscriber")

    offline_client = client(broker.port, "crash-offline", offline)
    wait_all(offline, "the offline subscriber")
    offline_client.disconnect()
    offline_client.loop_stop()

    # QoS 2 to the QoS 2 subscriber: exactly once.
    counts = live2.snapshot()
    twice = sorted(p for p, q in acked_msgs.items() if q == 2 and counts[p] != 1)
    assert not twice, f"QoS 2 messages not delivered exactly once: {[(p, live2.how[p]) for p in twice[:10]]} ({len(twice)})"

    # The retained message is the last acknowledged state (or a later one not yet acknowledged).
    states = [f"state-{i}" for i in range(50, n + 1, 50)]
    acked_states = [s for s in states if s in acked]
    if acked_states:
        got = []
        late = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-late", clean_session=True)
        late.on_message = lambda _c, _u, m: got.append(m.payload.decode())
        late.connect("127.0.0.1", broker.port)
        late.loop_start()
        late.subscribe("crash/retained", qos=1)
        wait_for(lambda: got, what="the retained message")
        late.loop_stop()
        assert int(got[0].split("-")[1]) >= int(acked_states[-1].split("-")[1]), (got, acked_states[-1])

    for c in [pub, *subs]:
        c.disconnect()
        c.loop_stop()
    broker.stop()
    total_q2 = sum(1 for q in acked_msgs.values() if q == 2)
    print(f"crash test: {kills} kills, {len(published)} published, {len(acked_msgs)} acknowledged ({total_q2} QoS 2), all delivered")
    assert kills == ROUNDS
    assert "damaged" not in broker.log()


def test_a_full_disk_refuses_publications_instead_of_acknowledging_them(tmp_path):
    """The store cannot write (the broker's file-size limit stands in for a full disk): QoS 1
    publications are refused with 0x97 and a reason [MQTT-3.4.2-1], none is acknowledged
    without being on disk, and once writing works again everything acknowledged is kept,
    through a SIGKILL."""
    import resource
    import subprocess

    limit = 256 * 1024
    broker = Broker(tmp_path)
    broker.preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    broker.start()
    try:
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        got = Received()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-sub", protocol=mqtt.MQTTv5)
        sub.on_message = got
        sub.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        sub.loop_start()
        wait_for(sub.is_connected, what="subscriber connected")
        sub.subscribe("disk/#", qos=1)
        time.sleep(0.3)
        sub.disconnect()
        sub.loop_stop()

        outcome = {}
        by_mid = {}

        def on_publish(_c, _u, mid, rc, _props):
            outcome[mid] = rc.value

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-pub", protocol=mqtt.MQTTv5)
        pub.on_publish = on_publish
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        wait_for(pub.is_connected, what="publisher connected")
        payload = b"p" * 1024
        n = 0
        # Past the limit the store fails; this publisher's window fills with publications
        # waiting for their acknowledgement.
        while "cannot write to the store" not in broker.log() and n < 2000:
            n += 1
            info = pub.publish("disk/x", payload + str(n).encode(), qos=1)
            by_mid[info.mid] = n
            time.sleep(0.002)
        assert "cannot write to the store" in broker.log()
        pending = [m for m in by_mid if m not in outcome]
        assert pending, "some publications must be waiting for the disk"
        # Meanwhile a new publication is refused, with the reason.
        refused_outcome = {}
        other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-pub-2", protocol=mqtt.MQTTv5)
        other.on_publish = lambda _c, _u, mid, rc, _p: refused_outcome.__setitem__(mid, rc.value)
        other.connect("127.0.0.1", broker.port)
        other.loop_start()
        wait_for(other.is_connected, what="second publisher connected")
        infos = [other.publish("disk/x", b"refused", qos=1) for _ in range(3)]
        wait_for(lambda: len(refused_outcome) == 3, what="refusals")
        assert set(refused_outcome.values()) == {0x97}, refused_outcome
        # 3.1.1 has no refusal: the connection is closed, and nothing is acknowledged.
        closed = []
        old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-pub-311", protocol=mqtt.MQTTv311)
        old.on_disconnect = lambda *_args: closed.append(True)
        old.on_publish = lambda _c, _u, mid, rc, _p: refused_outcome.__setitem__(("311", mid), rc)
        old.connect("127.0.0.1", broker.port)
        old.loop_start()
        wait_for(old.is_connected, what="3.1.1 publisher connected")
        old.reconnect_delay_set(min_delay=60, max_delay=60)
        old.publish("disk/x", b"refused", qos=1)
        wait_for(lambda: closed, what="the 3.1.1 publisher's connection to close")
        assert not any(isinstance(k, tuple) for k in refused_outcome), "a 3.1.1 publication was acknowledged"
        old.loop_stop()
        assert all(m not in outcome for m in pending), "acknowledged before it was on disk"
        # Space comes back: the waiting acknowledgements arrive, new publications are taken.
        subprocess.run(["prlimit", "--pid", str(broker.proc.pid), "--fsize=unlimited:unlimited"], check=True)
        wait_for(lambda: all(m in outcome for m in pending), timeout=20, what="the waiting acknowledgements")
        info = other.publish("disk/x", b"after", qos=1)
        wait_for(lambda: info.mid in refused_outcome, what="a publication after recovery")
        assert refused_outcome[info.mid] == 0
        assert "writing to the store works again" in broker.log()
        for c in (pub, other):
            c.disconnect()
            c.loop_stop()

        accepted = sorted(by_mid[m] for m, rc in outcome.items() if rc == 0 and m in by_mid)
        broker.proc.kill()
        broker.proc.wait()
        broker.preexec = None
        broker.start()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="disk-sub", protocol=mqtt.MQTTv5)
        sub.on_message = got
        sub.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        sub.loop_start()
        expected = {payload + str(i).encode() for i in accepted} | {b"after"}
        wait_for(lambda: expected <= {p.encode() for p in got.snapshot()}, timeout=30, what="every acknowledged publication")
        assert "refused" not in got.snapshot(), "a refused message was delivered"
        sub.disconnect()
        sub.loop_stop()
        print(f"full disk: {len(accepted)} accepted ({len(pending)} waited for the disk), 3 refused, all accepted delivered after SIGKILL")
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
