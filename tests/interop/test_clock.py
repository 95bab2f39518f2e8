"""Wall-clock jumps (an NTP step, a board-sized server whose RTC was wrong at boot) do not move
the broker's timers: keep alive [MQTT-3.1.2-24], session expiry [MQTT-3.1.2-23] and message
expiry [MQTT-3.3.2-5] run on the monotonic clock.

The jump is real for the broker process: libfaketime (Debian's `libfaketime`, installed by
scripts/test) is preloaded with `DONT_FAKE_MONOTONIC=1`, so `CLOCK_REALTIME` moves when the
test rewrites the offset file while `CLOCK_MONOTONIC` goes on as before, exactly as with a
system clock step. The broker's own log timestamps prove each jump took effect.
"""

import datetime
import re
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Broker, wait_for

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
LOG_DATE = re.compile(r"^(\d{4}-\d\d-\d\d)T", re.M)


@pytest.fixture
def jumpy(tmp_path):
    """A broker whose wall clock the test sets: yields (broker, jump) where jump("+2d")
    moves the broker's CLOCK_REALTIME and waits until its log shows the new date."""
    assert LIBFAKETIME.exists(), "libfaketime is missing: scripts/test installs it"
    offset = tmp_path / "faketime"
    offset.write_text("+0d\n")
    b = Broker(tmp_path)
    b.env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_CACHE_DURATION": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }
    b.start()

    def jump(spec, days):
        offset.write_text(spec + "\n")
        want = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)).date().isoformat()

        def logged_new_date():
            # A connection makes the broker log a line with its (faked) wall-clock time.
            raw_connect(b.port, b"clock-probe", keep_alive=30).close()
            return LOG_DATE.findall(b.log())[-1] == want

        wait_for(logged_new_date, timeout=10, what=f"the broker's clock to read {want}")

    yield b, jump
    b.stop()


def raw_connect(port, client_id, keep_alive):
    """An MQTT 3.1.1 CONNECT on a plain socket; returns the socket after a successful CONNACK."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = b"\x00\x04MQTT\x04\x02" + keep_alive.to_bytes(2, "big") + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


class V5:
    """A paho MQTT 5 client that records messages with their properties and whether it lost
    its connection."""

    def __init__(self, broker, client_id, clean=True, expiry=0, keepalive=30):
        self.messages = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.disconnects = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.c.connect("127.0.0.1", broker.port, keepalive=keepalive, clean_start=clean, properties=props)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = flags.session_present
        self.connected.set()

    def _on_disconnect(self, *args):
        self.disconnects += 1

    def _on_message(self, client, userdata, msg):
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        with self.lock:
            self.messages.append((msg.topic, msg.payload, expiry))

    def subscribe(self, topic, qos=1):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic, payload, qos=1, retain=False, expiry=None):
        props = Properties(PacketTypes.PUBLISH)
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)
        assert info.is_published()

    def got(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def round_trip(client, topic, payload):
    client.publish(topic, payload)
    wait_for(lambda: any(m[1] == payload for m in client.got()), what=f"{payload!r} back")


def test_forward_jump_expires_nothing_early(jumpy):
    """Two days forward: a session with 10 minutes of expiry keeps its queued message, whose
    60 s of message expiry is still running (its remaining time is what passed on the
    monotonic clock [MQTT-3.3.2-6]), and a retained message with 60 s of expiry stays."""
    broker, jump = jumpy
    live = V5(broker, "live", keepalive=2)
    live.subscribe("clock/live")
    offline = V5(broker, "offline", clean=False, expiry=600)
    offline.subscribe("clock/queued")
    offline.close()
    live.publish("clock/queued", b"queued", expiry=60)
    live.publish("clock/retained", b"kept", retain=True, expiry=60)

    jump("+2d", 2)
    time.sleep(3)  # more than a keep-alive period of `live` with the clock moved

    round_trip(live, "clock/live", b"after the jump")
    assert live.disconnects == 0, "a keep-alive timer fired on the wall clock"
    back = V5(broker, "offline", clean=False, expiry=600)
    assert back.session_present, "the session expired on the wall clock [MQTT-3.1.2-23]"
    wait_for(lambda: back.got(), what="the queued message")
    topic, payload, expiry = back.got()[0]
    assert (topic, payload) == ("clock/queued", b"queued")
    assert 40 <= expiry <= 60, f"message expiry {expiry} s: wall time counted against it"
    fresh = V5(broker, "fresh")
    fresh.subscribe("clock/retained")
    wait_for(lambda: fresh.got(), what="the retained message")
    assert fresh.got()[0][1] == b"kept"
    assert 40 <= fresh.got()[0][2] <= 60
    for c in (live, back, fresh):
        c.close()


def test_backward_jump_still_expires_and_times_out(jumpy):
    """Two days back: timers still fire when their monotonic time comes. A session with 2 s
    of expiry is gone 2 s after its connection ends; a queued message with 2 s of message
    expiry is not delivered; a client silent past 1.5x its keep alive is disconnected
    [MQTT-3.1.2-24]; a client that keeps talking is not."""
    broker, jump = jumpy
    live = V5(broker, "live", keepalive=2)
    live.subscribe("clock/live")
    jump("-2d", -2)

    short = V5(broker, "short", clean=False, expiry=2)
    short.subscribe("clock/short")
    short.close()
    keeper = V5(broker, "keeper", clean=False, expiry=600)
    keeper.subscribe("clock/expiring")
    keeper.close()
    live.publish("clock/expiring", b"stale", expiry=2)

    # A raw MQTT 3.1.1 connection with a 1 s keep alive that then says nothing.
    silent = raw_connect(broker.port, b"silent", keep_alive=1)
    started = time.monotonic()
    assert silent.recv(1) == b"", "the broker must close a connection silent past 1.5x its keep alive"
    silent_for = time.monotonic() - started
    assert silent_for < 8, f"closed only after {silent_for:.1f} s"

    time.sleep(max(0.0, 3 - silent_for))
    again = V5(broker, "short", clean=False, expiry=2)
    assert not again.session_present, "the session outlived its expiry [MQTT-3.1.2-23]"
    back = V5(broker, "keeper", clean=False, expiry=600)
    assert back.session_present
    round_trip(live, "clock/live", b"still here")
    assert back.got() == [], "a message past its expiry was delivered [MQTT-3.3.2-5]"
    assert live.disconnects == 0
    for c in (live, again, back):
        c.close()
