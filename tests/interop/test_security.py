"""Secure by default, with real clients: TLS (mosquitto clients, paho, the boards' TLS 1.2),
WebSocket and WebSocket over TLS (MQTT.js), users, permissions, reloads and abuse limits."""

import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import tern, wait_for
from umqtt_board import MQTTClient, MQTTException

HERE = Path(__file__).resolve().parent
CREATE_CONNECTION = socket.create_connection


def mosq(tool, port, certs, *args, version="311"):
    base = [tool, "-h", "127.0.0.1", "-p", str(port), "-V", version]
    if certs:
        base += ["--cafile", str(certs / "ca.pem")]
    return base + list(args)


def connack_code(port, user=None, password=None, client_id="c", version=4, tls_ca=None, source="127.0.0.1"):
    """Sends a raw CONNECT and returns the CONNACK's code (3.1.1 return code or MQTT 5 reason)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    if tls_ca:
        ctx = ssl.create_default_context(cafile=str(tls_ca))
        s = ctx.wrap_socket(s, server_hostname="localhost")
    flags = 0x02
    payload = len(client_id).to_bytes(2, "big") + client_id.encode()
    if user is not None:
        flags |= 0xC0
        payload += len(user).to_bytes(2, "big") + user.encode()
        payload += len(password).to_bytes(2, "big") + password.encode()
    body = b"\x00\x04MQTT" + bytes([version, flags]) + b"\x00\x3c" + (b"\x00" if version == 5 else b"") + payload
    s.sendall(b"\x10" + bytes([len(body)]) + body)
    head = s.recv(2)
    rest = s.recv(head[1])
    s.close()
    return rest[1]


def test_mosquitto_clients_over_tls_12_and_13(secure):
    broker, certs = secure
    port = broker.ports["tls"]
    for tls in ("tlsv1.2", "tlsv1.3"):
        sub = subprocess.Popen(
            mosq("mosquitto_sub", port, certs, "--tls-version", tls, "-u", "alice", "-P", "alice-pw", "-i", f"s-{tls}", "-t", "home/alice/#", "-C", "1", "-W", "15", "-v"),
            stdout=subprocess.PIPE, text=True,
        )
        wait_for(lambda: f"subscribed client_id=s-{tls} " in broker.log(), what="subscriber")
        subprocess.run(mosq("mosquitto_pub", port, certs, "--tls-version", tls, "-u", "alice", "-P", "alice-pw", "-t", "home/alice/t", "-m", tls), check=True, timeout=20)
        out, _ = sub.communicate(timeout=20)
        assert out.strip() == f"home/alice/t {tls}"


def test_paho_over_tls(secure):
    broker, certs = secure
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(certs / "ca.pem"))
    c.username_pw_set("alice", "alice-pw")
    c.on_message = lambda cl, ud, m: got.append(m.payload)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("localhost", broker.ports["tls"])
    c.loop_start()
    c.subscribe("home/alice/paho", 1)
    assert subscribed.wait(10)
    c.publish("home/alice/paho", b"over tls", qos=1).wait_for_publish(10)
    wait_for(lambda: got, what="the message")
    assert got == [b"over tls"]
    c.disconnect()
    c.loop_stop()


def board_tls_socket(port, sni="localhost"):
    """The boards' TLS: 1.2 only, ECDHE with AES-GCM on P-256 (no X25519, no ChaCha20), SNI
    sent, the certificate not checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ECDHE+AESGCM")
    ctx.set_ecdh_curve("prime256v1")
    raw = CREATE_CONNECTION(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=sni)


class TlsBoard(MQTTClient):
    """umqtt with `ssl=True, ssl_params={'server_hostname': ...}`, as the tutorial sets it."""

    def connect(self, clean_session=True):
        real = socket.create_connection
        socket.create_connection = lambda addr, timeout=None: board_tls_socket(addr[1])
        try:
            return super().connect(clean_session)
        finally:
            socket.create_connection = real


def test_tutorial_boards_over_tls_12(secure):
    broker, _ = secure
    got = []
    sub = TlsBoard("pico-sub", "127.0.0.1", port=broker.ports["tls"], user="alice", password="alice-pw")
    sub.set_callback(lambda t, m: got.append(m))
    sub.connect()
    assert sub.sock.version() == "TLSv1.2"
    sub.subscribe("home/alice/Topic", 1)
    pub = TlsBoard("pico-pub", "127.0.0.1", port=broker.ports["tls"], user="alice", password="alice-pw")
    pub.connect()
    for i in range(5):
        pub.publish("home/alice/Topic", f"hello {i}".encode(), qos=1)
    while len(got) < 5:
        sub.check_msg()
    assert got == [f"hello {i}".encode() for i in range(5)]


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_mqttjs_over_websocket(secure, kind):
    broker, certs = secure
    script = """
import mqtt from "mqtt";
import fs from "fs";
const [url, ca] = [process.argv[2], process.argv[3]];
const c = mqtt.connect(url, { username: "alice", password: "alice-pw", protocolVersion: 5, ca: fs.readFileSync(ca), reconnectPeriod: 0 });
let done = false;
c.on("error", (e) => { if (!done) { console.log("error " + e.message); process.exit(1); } });
c.on("connect", async () => {
  const got = new Promise((resolve) => c.on("message", (t, p) => resolve(t + " " + p.toString())));
  await c.subscribeAsync("home/alice/js", { qos: 1 });
  await c.publishAsync("home/alice/js", "over websocket", { qos: 1 });
  const line = await got;
  // The message and the PUBACK are both in: what the connection does while closing is not
  // part of the check.
  done = true;
  console.log(line);
  await c.endAsync();
  process.exit(0);
});
"""
    (HERE / "ws_check.mjs").write_text(script)
    try:
        url = f"{kind}://localhost:{broker.ports[kind]}/mqtt"
        run = subprocess.run(["node", str(HERE / "ws_check.mjs"), url, str(certs / "ca.pem")], capture_output=True, text=True, timeout=60, cwd=HERE)
    finally:
        (HERE / "ws_check.mjs").unlink()
    assert run.stdout.strip() == "home/alice/js over websocket", run.stdout + run.stderr


def test_websocket_on_another_path_is_refused(secure):
    broker, _ = secure
    s = socket.create_connection(("127.0.0.1", broker.ports["ws"]), timeout=10)
    s.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert b" 404 " in s.recv(200).split(b"\r\n")[0]


def test_wrong_password_unknown_user_and_anonymous(secure):
    # 3.1.1: 4 bad user name or password, 5 not authorized; MQTT 5: 0x86 and 0x87.
    broker, certs = secure
    tls = broker.ports["tls"]
    assert connack_code(tls, "alice", "nope", tls_ca=certs / "ca.pem") == 4
    assert connack_code(tls, "mallory", "x", tls_ca=certs / "ca.pem", client_id="m") == 4
    assert connack_code(tls, None, None, tls_ca=certs / "ca.pem", client_id="anon") == 5
    assert connack_code(tls, "alice", "nope", version=5, tls_ca=certs / "ca.pem", client_id="v5") == 0x86
    # Users exist: anonymous is off even on the loopback TCP listener.
    assert connack_code(broker.ports["tcp"], None, None, client_id="anon2") == 5
    assert connack_code(broker.ports["tcp"], "alice", "alice-pw", client_id="ok") == 0
    log = broker.log()
    assert 'why="bad user name or password"' in log and 'why="not authorized to connect"' in log
    assert "alice-pw" not in log and "nope" not in log


def paho(broker, user, password, version, client_id):
    got = []
    kwargs = {"client_id": client_id, "protocol": version}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    c.username_pw_set(user, password)
    c.on_message = lambda cl, ud, m: got.append((m.topic, m.payload))
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", broker.ports["tcp"])
    c.loop_start()
    assert connected.wait(10)
    return c, got


def subscribe_codes(c, topic):
    result = []
    done = threading.Event()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        result.extend(rc.value if hasattr(rc, "value") else rc for rc in reason_codes)
        done.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, 1)
    assert done.wait(10)
    return result


@pytest.mark.parametrize("version,denied", [(mqtt.MQTTv311, 0x80), (mqtt.MQTTv5, 0x87)])
def test_denied_topics(secure, version, denied):
    broker, _ = secure
    bob, bob_got = paho(broker, "bob", "bob-pw", version, "bob")
    alice, alice_got = paho(broker, "alice", "alice-pw", version, "alice")
    # Subscribe: outside alice's rules, and a topic no one may subscribe to.
    assert subscribe_codes(alice, "home/bob/#") == [denied]
    assert subscribe_codes(bob, "secret/#") == [denied]
    assert subscribe_codes(bob, "#") == [1]
    # Publish: %u keeps alice in her own home; MQTT 5 hears 0x87 in PUBACK, 3.1.1 is dropped.
    info = alice.publish("home/bob/x", b"not hers", qos=1)
    info.wait_for_publish(10)
    alice.publish("home/alice/x", b"hers", qos=1).wait_for_publish(10)
    # bob may publish under secret/, but no subscriber receives it, not even via `#`.
    bob.publish("secret/plans", b"hidden", qos=1).wait_for_publish(10)
    bob.publish("shared/open", b"visible", qos=1).wait_for_publish(10)
    wait_for(lambda: ("shared/open", b"visible") in bob_got, what="the visible message")
    # Retained messages obey the rules too: a later `#` subscriber does not get secret/ ones.
    bob.publish("secret/kept", b"hidden", qos=1, retain=True).wait_for_publish(10)
    bob.publish("shared/kept", b"shown", qos=1, retain=True).wait_for_publish(10)
    late, late_got = paho(broker, "bob", "bob-pw", version, "bob-late")
    assert subscribe_codes(late, "#") == [1]
    wait_for(lambda: late_got, what="the retained message")
    time.sleep(0.2)
    assert [t for t, _ in late_got] == ["shared/kept"]
    late.disconnect()
    late.loop_stop()
    assert ("home/alice/x", b"hers") in bob_got
    assert all(t not in ("home/bob/x", "secret/plans") for t, _ in bob_got)
    for c in (alice, bob):
        c.disconnect()
        c.loop_stop()


def test_puback_0x87_for_a_denied_publish_in_mqtt5(secure):
    broker, _ = secure
    s = socket.create_connection(("127.0.0.1", broker.ports["tcp"]), timeout=10)
    body = b"\x00\x04MQTT\x05\xc2\x00\x3c\x00" + b"\x00\x01a" + b"\x00\x05alice" + b"\x00\x08alice-pw"
    s.sendall(b"\x10" + bytes([len(body)]) + body)
    head = s.recv(2)
    s.recv(head[1])
    topic = b"home/bob/x"
    pub = len(topic).to_bytes(2, "big") + topic + b"\x00\x07" + b"\x00" + b"x"
    s.sendall(b"\x32" + bytes([len(pub)]) + pub)
    assert s.recv(5) == b"\x40\x03\x00\x07\x87"


def test_client_id_rules_and_will_permissions(secure):
    broker, _ = secure
    # pico-1 may publish devices/pico-1/out (a %c rule); a will on a forbidden topic is refused.
    bob, bob_got = paho(broker, "bob", "bob-pw", mqtt.MQTTv311, "bob")
    assert subscribe_codes(bob, "devices/#") == [1]
    pico, _ = paho(broker, "alice", "alice-pw", mqtt.MQTTv311, "pico-1")
    pico.publish("devices/pico-1/out", b"from pico", qos=1).wait_for_publish(10)
    wait_for(lambda: bob_got, what="the pico's message")
    assert bob_got == [("devices/pico-1/out", b"from pico")]
    w = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="willer", protocol=mqtt.MQTTv311)
    w.username_pw_set("alice", "alice-pw")
    w.will_set("home/bob/will", b"x")
    codes = []
    w.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    w.connect("127.0.0.1", broker.ports["tcp"])
    w.loop_start()
    wait_for(lambda: codes, what="CONNACK")
    w.loop_stop()
    assert codes[0] == 0x87  # paho's name for 3.1.1 return code 5
    for c in (bob, pico):
        c.disconnect()
        c.loop_stop()


def test_sys_topics_only_for_users_allowed(secure):
    broker, _ = secure
    alice, _ = paho(broker, "alice", "alice-pw", mqtt.MQTTv311, "alice")
    bob, _ = paho(broker, "bob", "bob-pw", mqtt.MQTTv311, "bob")
    assert subscribe_codes(alice, "$SYS/#") == [1]
    assert subscribe_codes(bob, "$SYS/#") == [0x80]  # bob's `#` does not reach `$` topics
    for c in (alice, bob):
        c.disconnect()
        c.loop_stop()


def test_rules_reload_while_connected(secure):
    broker, _ = secure
    alice, _ = paho(broker, "alice", "alice-pw", mqtt.MQTTv311, "alice")
    assert subscribe_codes(alice, "garden/#") == [0x80]
    users = broker.data_dir / "users.toml"
    users.write_text(users.read_text().replace('{ allow = "both", topic = "shared/#" },\n]', '{ allow = "both", topic = "shared/#" },\n  { allow = "both", topic = "garden/#" },\n]', 1))
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "users and permissions reloaded" in broker.log(), what="the reload")
    assert subscribe_codes(alice, "garden/#") == [1]
    alice.disconnect()
    alice.loop_stop()


def test_rules_reload_when_the_file_changes(secure):
    # No signal: the broker notices the file changed (checked every 2 s).
    broker, _ = secure
    users = broker.data_dir / "users.toml"
    users.write_text(users.read_text() + '\n[[client]]\nid = "watched"\nrules = []\n')
    wait_for(lambda: "users and permissions reloaded" in broker.log(), timeout=15, what="the reload")


def test_tls13_with_p256_only_as_embedded_tls_speaks(secure):
    # embedded-tls on Rust boards: TLS 1.3, AES-GCM, key share secp256r1 only.
    broker, certs = secure
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve("prime256v1")
    with ctx.wrap_socket(CREATE_CONNECTION(("127.0.0.1", broker.ports["tls"]), timeout=10), server_hostname="localhost") as s:
        assert s.version() == "TLSv1.3"
        assert "AES" in s.cipher()[0]


def peer_cert(port, ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost") as s:
        return s.getpeercert(binary_form=True)


def test_certificate_reload_keeps_connections(secure):
    broker, certs = secure
    port = broker.ports["tls"]
    before = peer_cert(port, certs / "ca.pem")
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stays", protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(certs / "ca.pem"))
    c.username_pw_set("alice", "alice-pw")
    c.on_message = lambda cl, ud, m: got.append(m.payload)
    c.connect("localhost", port)
    c.loop_start()
    wait_for(lambda: c.is_connected(), what="connection")
    assert subscribe_codes(c, "home/alice/#") == [1]
    tern("cert", "localhost", "127.0.0.1", "--dir", str(certs))  # a new server certificate, same CA
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "certificate reloaded" in broker.log(), what="the reload")
    assert peer_cert(port, certs / "ca.pem") != before
    c.publish("home/alice/after", b"still here", qos=1).wait_for_publish(10)
    wait_for(lambda: got, what="a message on the old connection")
    assert got == [b"still here"]
    c.disconnect()
    c.loop_stop()


def test_slow_connect_is_closed(secure):
    broker, _ = secure
    s = socket.create_connection(("127.0.0.1", broker.ports["tcp"]), timeout=30)
    assert s.recv(10) == b""  # closed by the broker after connect_timeout (2 s here)


def test_failed_logins_are_delayed_without_delaying_others(secure):
    broker, _ = secure
    port = broker.ports["tcp"]
    # Four failures from 127.0.0.2: each next answer is held longer.
    for i in range(4):
        assert connack_code(port, "alice", "wrong", source="127.0.0.2", client_id=f"bad{i}") == 4
    held = {}

    def attacker():
        held["code"] = connack_code(port, "alice", "wrong", source="127.0.0.2", client_id="bad5")
        held["done"] = time.monotonic()

    t = threading.Thread(target=attacker)
    t.start()
    time.sleep(0.2)
    # A good client from another address is answered at once, while the attacker still waits.
    assert connack_code(port, "alice", "alice-pw", source="127.0.0.1", client_id="good") == 0
    good_done = time.monotonic()
    assert "done" not in held
    t.join(30)
    assert held["code"] == 4 and held["done"] > good_done
    assert "holding a login from an address with recent failures" in broker.log()


def test_connections_per_address_limit(tmp_path):
    from conftest import Broker

    config = tmp_path / "tern.toml"
    config.write_text('[[listener]]\nbind = "127.0.0.1:0"\n[limits]\nmax_connections_per_address = 2\n')
    b = Broker(tmp_path, config=config).start()
    try:
        port = b.ports["tcp"]
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        assert connack_code(port, None, None, version=5, client_id="third") == 0x97
        assert 'why="too many connections from this address"' in b.log()
        for s in held:
            s.close()
    finally:
        b.stop()


@pytest.mark.parametrize("limit", ["max_message_rate = 20", "max_bandwidth = 2000"])
def test_message_rate_and_bandwidth_are_throttled(tmp_path, limit):
    from conftest import Broker

    config = tmp_path / "tern.toml"
    config.write_text(f'[[listener]]\nbind = "127.0.0.1:0"\n[limits]\n{limit}\n')
    b = Broker(tmp_path, config=config).start()
    try:
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub")
        sub.on_message = lambda c, u, m: got.append(time.monotonic())
        sub.connect("127.0.0.1", b.ports["tcp"])
        sub.loop_start()
        wait_for(lambda: sub.is_connected(), what="subscriber")
        subscribe_codes(sub, "rate")
        flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood")
        flood.connect("127.0.0.1", b.ports["tcp"])
        flood.loop_start()
        start = time.monotonic()
        for i in range(60):
            flood.publish("rate", b"%03d" % i + b"x" * 97, qos=0)
        wait_for(lambda: len(got) == 60, timeout=30, what="all 60 messages")
        # 60 messages at 20 per second (or 6,600 bytes at 2,000 per second), after a
        # one-second burst: at least two seconds, and nothing lost.
        assert got[-1] - start >= 1.9
        for c in (sub, flood):
            c.disconnect()
            c.loop_stop()
    finally:
        b.stop()


def test_client_certificate_names_the_user(tmp_path):
    from conftest import Broker

    certs = tmp_path / "certs"
    tern("cert", "localhost", "127.0.0.1", "--dir", str(certs))
    tern("cert", "--client", "alice", "--dir", str(certs))
    config = tmp_path / "tern.toml"
    config.write_text(
        f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:0"\ncert = "{certs}/server.pem"\nkey = "{certs}/server.key"\n'
        f'client_ca = "{certs}/ca.pem"\nrequire_client_cert = true\ncn_as_username = true\n'
        '[[listener]]\nbind = "127.0.0.1:0"\n'
    )
    b = Broker(tmp_path, config=config).start()
    try:
        port = b.ports["tls"]
        run = subprocess.run(
            mosq("mosquitto_pub", port, certs, "--cert", str(certs / "client-alice.pem"), "--key", str(certs / "client-alice.key"), "-i", "certified", "-t", "x", "-m", "y"),
            capture_output=True, text=True, timeout=20,
        )
        assert run.returncode == 0, run.stderr
        wait_for(lambda: "client connected client_id=certified" in b.log(), what="the certified client")
        # Without a certificate the handshake fails.
        run = subprocess.run(mosq("mosquitto_pub", port, certs, "-t", "x", "-m", "y"), capture_output=True, text=True, timeout=20)
        assert run.returncode != 0
    finally:
        b.stop()


def test_tern_user_commands(tmp_path):
    data = tmp_path / "data"
    tern("user", "add", "carol", "--password-stdin", "--allow", "home/%u/#", "--data-dir", str(data), stdin="pw\n")
    text = (data / "users.toml").read_text()
    assert "$argon2id$" in text and "pw\n" not in text.split("password")[1][:5]
    assert "carol\tallow both home/%u/#" in tern("user", "list", "--data-dir", str(data))
    tern("user", "passwd", "carol", "--password-stdin", "--data-dir", str(data), stdin="pw2\n")
    assert (data / "users.toml").read_text() != text
    tern("user", "remove", "carol", "--data-dir", str(data))
    assert "carol" not in tern("user", "list", "--data-dir", str(data))


def test_password_logins_do_not_leave_memory_behind(secure):
    # Each password check is argon2id with 19 MiB of working memory. Eight logins at once must
    # not leave eight such blocks resident (glibc kept them: 185 MiB after eight logins).
    broker, _ = secure

    def rss_kib():
        with open(f"/proc/{broker.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    assert connack_code(broker.ports["tcp"], "alice", "alice-pw", client_id="warm") == 0
    before = rss_kib()
    codes = []
    threads = [
        threading.Thread(target=lambda i=i: codes.append(connack_code(broker.ports["tcp"], "alice", "alice-pw", client_id=f"login-{i}")))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0] * 8
    grown = rss_kib() - before
    print(f"RSS {before} KiB before eight concurrent password logins, {grown} KiB more after")
    assert grown < 16 * 1024, f"{grown} KiB still resident after eight logins"
