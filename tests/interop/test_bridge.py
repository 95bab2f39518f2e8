"""Bridges: a tern broker forwards topics to and from another broker (another tern process,
or Debian's Mosquitto over TLS), both ways, with prefixes remapped, no loops, and no QoS 1
message lost while the remote restarts. Clients on both sides are paho-mqtt."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import TERN, Broker, free_port, tern, wait_for


class Client:
    """A paho MQTT 5 client that records what it receives; `persistent` keeps its session."""

    def __init__(self, port, client_id, persistent=False, tls_ca=None):
        self.messages = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls_ca:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.c.on_message = lambda cl, ud, m: self.messages.append((m.topic, m.payload))
        self.connected = threading.Event()
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.c.connect("localhost" if tls_ca else "127.0.0.1", port, clean_start=not persistent, properties=props)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def subscribe(self, topic, qos=1):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(10)

    def publish(self, topic, payload, qos=1, retain=False):
        self.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def payloads(self, topic):
        return [p for t, p in self.messages if t == topic]

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def bridge_config(tmp_path, remote_url, extra="", protocol=5):
    config = tmp_path / "home.toml"
    config.write_text(f"""
[[listener]]
bind = "127.0.0.1:0"

[sys]
interval = 1

[[bridge]]
name = "cloud"
url = "{remote_url}"
protocol = {protocol}
{extra}

[[bridge.topic]]
direction = "out"
local = "home/#"
remote = "site1/home/#"

[[bridge.topic]]
direction = "in"
local = "cmd/#"
remote = "site1/cmd/#"

[[bridge.topic]]
direction = "both"
local = "shared/#"
qos = 1
""")
    return config


@pytest.fixture
def tern_pair(tmp_path):
    """`cloud`: a plain tern broker; `home`: a tern broker bridged to it."""
    (tmp_path / "cloud").mkdir()
    (tmp_path / "home").mkdir()
    cloud = Broker(tmp_path / "cloud").start()
    home = Broker(tmp_path / "home", config=bridge_config(tmp_path / "home", f"mqtt://127.0.0.1:{cloud.port}"))
    home.start()
    home.port = home.ports["tcp"]
    wait_for(lambda: "bridge connected" in home.log(), what="the bridge to connect")
    yield home, cloud
    home.stop()
    cloud.stop()


def check_both_ways_without_loops(home_port, cloud_port, cloud_tls=None):
    at_home = Client(home_port, "home-sub")
    at_home.subscribe("cmd/#")
    at_home.subscribe("shared/#")
    in_cloud = Client(cloud_port, "cloud-sub", tls_ca=cloud_tls)
    in_cloud.subscribe("site1/#")
    in_cloud.subscribe("shared/#")
    time.sleep(0.3)
    home_pub = Client(home_port, "home-pub")
    cloud_pub = Client(cloud_port, "cloud-pub", tls_ca=cloud_tls)
    home_pub.publish("home/kitchen/temp", b"21.5", qos=1)
    home_pub.publish("home/hall/temp", b"19.0", qos=0)
    cloud_pub.publish("site1/cmd/heater", b"on", qos=1)
    home_pub.publish("shared/from-home", b"h", qos=1)
    cloud_pub.publish("shared/from-cloud", b"c", qos=1)
    wait_for(lambda: in_cloud.payloads("site1/home/kitchen/temp") == [b"21.5"], what="home -> cloud with the prefix")
    wait_for(lambda: in_cloud.payloads("site1/home/hall/temp") == [b"19.0"], what="QoS 0 home -> cloud")
    wait_for(lambda: at_home.payloads("cmd/heater") == [b"on"], what="cloud -> home with the prefix removed")
    wait_for(lambda: in_cloud.payloads("shared/from-home") == [b"h"], what="both: home -> cloud")
    wait_for(lambda: at_home.payloads("shared/from-cloud") == [b"c"], what="both: cloud -> home")
    # No loops: each side sees each message once, however long we wait.
    time.sleep(1.0)
    assert at_home.payloads("shared/from-home") == [b"h"]
    assert in_cloud.payloads("shared/from-cloud") == [b"c"]
    assert in_cloud.payloads("site1/home/kitchen/temp") == [b"21.5"]
    for c in (at_home, in_cloud, home_pub, cloud_pub):
        c.stop()


def test_tern_to_tern_both_ways_no_loops_and_status(tern_pair):
    home, cloud = tern_pair
    check_both_ways_without_loops(home.port, cloud.port)
    # Status: Mosquitto's $SYS name, tern's counts, the metrics and the console's overview.
    watcher = Client(home.port, "sys-watch")
    watcher.subscribe("$SYS/broker/connection/cloud/state")
    watcher.subscribe("$SYS/broker/bridges/cloud/forwarded/out")
    wait_for(lambda: watcher.payloads("$SYS/broker/connection/cloud/state")[-1:] == [b"1"], what="$SYS bridge state")
    wait_for(lambda: int((watcher.payloads("$SYS/broker/bridges/cloud/forwarded/out") or [b"0"])[-1]) >= 3,
             what="$SYS forwarded count")
    watcher.stop()
    import urllib.request
    metrics = urllib.request.urlopen(home.console_url + "/metrics", timeout=10).read().decode()
    assert 'tern_bridge_connected{bridge="cloud"} 1' in metrics
    assert 'tern_bridge_messages_total{bridge="cloud",direction="out"}' in metrics
    # Nobody can take the bridge's own session on the home broker.
    thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="$bridge/cloud", protocol=mqtt.MQTTv5)
    refused = {}
    thief.on_connect = lambda cl, ud, fl, rc, p: refused.setdefault("rc", rc.value)
    thief.connect("127.0.0.1", home.port)
    thief.loop_start()
    wait_for(lambda: "rc" in refused, what="CONNACK")
    thief.disconnect()
    thief.loop_stop()
    assert refused["rc"] == 0x85  # Client Identifier not valid


def test_remote_restart_loses_no_qos1_message(tern_pair):
    """While the remote is down the bridge keeps what it must forward (in the home broker's
    store) and delivers all of it once the remote is back."""
    home, cloud = tern_pair
    receiver = Client(cloud.port, "receiver", persistent=True)
    receiver.subscribe("site1/home/#")
    receiver.stop()
    cloud.stop()
    publisher = Client(home.port, "publisher")
    for i in range(200):
        publisher.publish("home/counter", str(i).encode(), qos=1)
    publisher.stop()
    time.sleep(0.5)
    cloud.start()
    receiver = Client(cloud.port, "receiver", persistent=True)
    wait_for(lambda: len(set(receiver.payloads("site1/home/counter"))) == 200, timeout=60,
             what="all 200 messages after the remote restarted")
    assert sorted(set(int(p) for p in receiver.payloads("site1/home/counter"))) == list(range(200))
    receiver.stop()


def test_home_restart_keeps_the_queue_for_the_remote(tern_pair, tmp_path):
    """Messages queued for an unreachable remote survive a SIGKILL of the home broker."""
    home, cloud = tern_pair
    receiver = Client(cloud.port, "receiver", persistent=True)
    receiver.subscribe("site1/home/#")
    receiver.stop()
    cloud.stop()
    publisher = Client(home.port, "publisher")
    for i in range(50):
        publisher.publish("home/queued", str(i).encode(), qos=1)
    publisher.stop()
    home.proc.send_signal(signal.SIGKILL)
    home.proc.wait()
    cloud.start()
    home.start()
    home.port = home.ports["tcp"]
    receiver = Client(cloud.port, "receiver", persistent=True)
    wait_for(lambda: len(set(receiver.payloads("site1/home/queued"))) == 50, timeout=60,
             what="the 50 queued messages after the home broker was killed")
    receiver.stop()


def mosquitto(tmp_path, certs, port, tls_port):
    """Debian's Mosquitto with a plain and a TLS listener and persistence."""
    conf = tmp_path / "mosquitto.conf"
    # Mosquitto started as root would switch to its own user, which cannot read these files.
    for name in ("server.pem", "server.key"):
        os.chmod(certs / name, 0o644)
    conf.write_text(
        "user root\n"
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"certfile {certs}/server.pem\nkeyfile {certs}/server.key\n"
        f"persistence true\npersistence_location {tmp_path}/\n"
    )
    log = open(tmp_path / "mosquitto.log", "a")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf), "-v"], stdout=log, stderr=subprocess.STDOUT)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(up, what="mosquitto to listen")
    return proc


def test_tern_to_mosquitto_over_tls(tmp_path):
    assert shutil.which("mosquitto"), "Debian's mosquitto is needed (scripts/test installs it)"
    certs = tmp_path / "certs"
    tern("cert", "localhost", "127.0.0.1", "--dir", str(certs))
    port, tls_port = free_port(), free_port()
    (tmp_path / "m").mkdir()
    (tmp_path / "home").mkdir()
    mosq = mosquitto(tmp_path / "m", certs, port, tls_port)
    home = None
    try:
        config = bridge_config(tmp_path / "home", f"mqtts://localhost:{tls_port}", extra=f'ca_file = "{certs}/ca.pem"')
        home = Broker(tmp_path / "home", config=config).start()
        home.port = home.ports["tcp"]
        wait_for(lambda: "bridge connected" in home.log(), what="the bridge to connect to Mosquitto over TLS")
        check_both_ways_without_loops(home.port, port)
        # Mosquitto restarts (SIGTERM: it saves its state); nothing acknowledged is lost.
        receiver = Client(port, "receiver", persistent=True)
        receiver.subscribe("site1/home/#")
        receiver.stop()
        mosq.send_signal(signal.SIGTERM)
        mosq.wait(10)
        publisher = Client(home.port, "publisher")
        for i in range(100):
            publisher.publish("home/counter", str(i).encode(), qos=1)
        publisher.stop()
        mosq = mosquitto(tmp_path / "m", certs, port, tls_port)
        receiver = Client(port, "receiver", persistent=True)
        wait_for(lambda: len(set(receiver.payloads("site1/home/counter"))) == 100, timeout=60,
                 what="all 100 messages after Mosquitto restarted")
        receiver.stop()
    finally:
        if home:
            home.stop()
        mosq.send_signal(signal.SIGTERM)
        mosq.wait(10)


def test_a_bridge_that_could_loop_is_refused(tmp_path):
    """MQTT 3.1.1 cannot ask the remote not to echo: overlapping in/out patterns are refused
    with the line and the reason."""
    config = bridge_config(tmp_path, "mqtt://127.0.0.1:1", protocol=4)
    run = subprocess.run([str(TERN), "broker", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                          "--console", "off"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "bridge \"cloud\"" in run.stderr and "loop" in run.stderr and "line 9" in run.stderr, run.stderr
