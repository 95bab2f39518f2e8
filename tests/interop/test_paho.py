"""paho-mqtt (Python), MQTT 3.1.1 and 5.0, against a tern broker process."""

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_for

VERSIONS = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]


class Client:
    """A paho client with its received messages collected."""

    def __init__(self, broker, client_id, version, clean=True, expiry=None, will=None):
        self.messages = []
        self.lock = threading.Lock()
        kwargs = {"client_id": client_id, "protocol": version}
        if version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.c.on_message = self._on_message
        self.connected = threading.Event()
        self.session_present = None
        self.c.on_connect = self._on_connect
        if will:
            self.c.will_set(will[0], will[1], qos=1)
        props = None
        if version == mqtt.MQTTv5 and expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
        connect_kwargs = {"properties": props} if version == mqtt.MQTTv5 else {}
        if version == mqtt.MQTTv5:
            connect_kwargs["clean_start"] = clean
        self.c.connect("127.0.0.1", broker.port, keepalive=30, **connect_kwargs)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = flags.session_present
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.qos, msg.retain))

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def got(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_round_trips(broker, version):
    # [MQTT-4.3.1-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1] each QoS end to end, at the granted QoS.
    sub = Client(broker, "sub", version)
    sub.subscribe("paho/#", 2)
    pub = Client(broker, "pub", version)
    for qos in (0, 1, 2):
        pub.publish(f"paho/q{qos}", f"m{qos}".encode(), qos)
    wait_for(lambda: len(sub.got()) == 3, what="three messages")
    assert sorted(sub.got()) == [(f"paho/q{q}", f"m{q}".encode(), q, False) for q in (0, 1, 2)]
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_message_delivered_on_subscribe(broker, version):
    # [MQTT-3.3.1-6] a new subscriber gets the retained message with RETAIN set.
    pub = Client(broker, "pub", version)
    pub.publish("paho/retained", b"kept", 1, retain=True)
    sub = Client(broker, "sub", version)
    sub.subscribe("paho/retained", 1)
    wait_for(lambda: sub.got(), what="the retained message")
    assert sub.got() == [("paho/retained", b"kept", 1, True)]
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_abnormal_disconnect(broker, version):
    # [MQTT-3.1.2-8] the will is published when the connection is lost.
    watcher = Client(broker, "watcher", version)
    watcher.subscribe("paho/will", 1)
    dying = Client(broker, "dying", version, will=("paho/will", b"bye"))
    dying.c.loop_stop()
    dying.c.socket().close()
    wait_for(lambda: watcher.got(), what="the will")
    assert watcher.got() == [("paho/will", b"bye", 1, False)]
    watcher.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_queues_while_offline(broker, version):
    # [MQTT-3.1.2-5] QoS 1 messages for an offline persistent session wait for it;
    # [MQTT-3.2.2-2] Session Present on return.
    sub = Client(broker, "keeper", version, clean=False, expiry=600)
    sub.subscribe("paho/inbox", 1)
    sub.close()
    pub = Client(broker, "pub", version)
    for i in range(5):
        pub.publish("paho/inbox", f"{i}".encode(), 1)
    sub = Client(broker, "keeper", version, clean=False, expiry=600)
    assert sub.session_present
    wait_for(lambda: len(sub.got()) == 5, what="queued messages")
    assert [m[1] for m in sub.got()] == [f"{i}".encode() for i in range(5)]
    pub.close()
    sub.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_subscription_splits_messages(broker, version):
    # [MQTT-4.8.2-3] each message goes to one member of the share group.
    a = Client(broker, "a", version)
    b = Client(broker, "b", version)
    a.subscribe("$share/workers/paho/jobs", 1)
    b.subscribe("$share/workers/paho/jobs", 1)
    pub = Client(broker, "pub", version)
    for i in range(20):
        pub.publish("paho/jobs", f"{i}".encode(), 1)
    wait_for(lambda: len(a.got()) + len(b.got()) == 20, what="twenty jobs")
    got = sorted(int(m[1]) for m in a.got() + b.got())
    assert got == list(range(20))
    assert a.got() and b.got(), "both members get work"
    for c in (a, b, pub):
        c.close()
