"""The admin API and /metrics on the console port, driven over real HTTP with real MQTT
clients (paho-mqtt) on the other side: every endpoint needs a login, refuses bad input with a
clear message, and changes take effect on connected clients at once. MQTT behaviour checked
here cites its statement."""

import http.client
import http.cookiejar
import ssl
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, tern, wait_for

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())


class Api:
    """An HTTP client with its own cookie jar; `login()` keeps the CSRF token for changes."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = None

    def call(self, method, path, body=None, headers=None, csrf=True, raw=None):
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if csrf and self.csrf and method != "GET":
            h.setdefault("X-CSRF-Token", self.csrf)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with self.opener.open(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text and r.headers.get("content-type", "").startswith("application/json") else text), r.headers
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            return e.code, (json.loads(text) if text.startswith("{") else text), e.headers

    def login(self, password, name="admin"):
        status, body, headers = self.call("POST", "/api/v1/login", {"name": name, "password": password})
        assert status == 200, body
        self.csrf = body["csrf"]
        return headers


@pytest.fixture
def console(tmp_path):
    b = Broker(tmp_path).start()
    api = Api(b.console_url)
    api.login(b.admin_password())
    yield b, api
    b.stop()


def paho_client(port, client_id, user=None, password=None, version=mqtt.MQTTv5, clean=True, will=None, session_expiry=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                    clean_session=clean if version != mqtt.MQTTv5 else None)
    if user:
        c.username_pw_set(user, password)
    if will:
        c.will_set(*will)
    state = {"connack": None, "disconnect": None, "messages": []}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason, properties):
        state["connack"] = reason.value if hasattr(reason, "value") else reason
        if state["connack"] != 0:
            client.disconnect()  # paho would otherwise retry on its own
        done.set()

    def on_disconnect(client, userdata, flags, reason, properties):
        state["disconnect"] = reason.value if hasattr(reason, "value") else reason
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = lambda cl, ud, m: state["messages"].append((m.topic, m.payload, m.retain))
    kwargs = {}
    if version == mqtt.MQTTv5:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes
        props = Properties(PacketTypes.CONNECT)
        if session_expiry is not None:
            props.SessionExpiryInterval = session_expiry
        kwargs = {"clean_start": clean, "properties": props}
    c.connect("127.0.0.1", port, keepalive=42, **kwargs)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c, state


def stop(c):
    c.disconnect()
    c.loop_stop()


def test_every_call_needs_a_login(tmp_path):
    """Every route the OpenAPI file lists, other than login and /metrics, answers 401 without
    the session cookie, and a made-up cookie does not help."""
    b = Broker(tmp_path).start()
    try:
        anonymous = Api(b.console_url)
        checked = 0
        for path, item in OPENAPI["paths"].items():
            for method, op in item.items():
                if op.get("security") == []:
                    continue
                concrete = path.replace("{client_id}", "x").replace("{name}", "x")
                status, body, _ = anonymous.call(method.upper(), concrete, body={} if method in ("post", "put") else None)
                assert status == 401, (method, path, status, body)
                assert "log in" in body["error"]
                status, _, _ = anonymous.call(method.upper(), concrete, headers={"Cookie": "tern_session=forged"})
                assert status == 401
                checked += 1
        assert checked >= 18
        status, text, _ = anonymous.call("GET", "/metrics")
        assert status == 200 and "tern_clients_connected" in text
    finally:
        b.stop()


def test_login_cookie_csrf_and_origin(tmp_path):
    b = Broker(tmp_path).start()
    try:
        api = Api(b.console_url)
        status, body, _ = api.call("POST", "/api/v1/login", {"name": "admin", "password": "wrong"})
        assert status == 401 and body["error"] == "wrong name or password"
        status, body, _ = api.call("POST", "/api/v1/login", {"name": "admin"})
        assert status == 400 and "password" in body["error"]
        headers = api.login(b.admin_password())
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        # A change without the CSRF token, or from another site, is refused.
        status, body, _ = api.call("DELETE", "/api/v1/clients/x", csrf=False)
        assert status == 403 and "X-CSRF-Token" in body["error"]
        status, body, _ = api.call("DELETE", "/api/v1/clients/x", headers={"Origin": "http://evil.example"})
        assert status == 403 and "cross-origin" in body["error"]
        status, body, _ = api.call("DELETE", "/api/v1/clients/x", headers={"Origin": b.console_url})
        assert status == 404
        status, body, _ = api.call("GET", "/api/v1/session")
        assert body["name"] == "admin" and body["csrf"] == api.csrf
        # Failed logins are counted, and logging out ends the session.
        status, text, _ = api.call("GET", "/metrics")
        assert "tern_console_login_failures_total 1" in text
        assert api.call("POST", "/api/v1/logout")[0] == 204
        assert api.call("GET", "/api/v1/overview")[0] == 401
        # The password printed once is not in the file that keeps it.
        assert b.admin_password() not in (b.data_dir / "admin.toml").read_text()
    finally:
        b.stop()


def test_bad_requests_get_clear_errors(console):
    b, api = console
    status, body, _ = api.call("POST", "/api/v1/users", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in body["error"]
    status, body, _ = api.call("POST", "/api/v1/users", raw=b"x" * 70000, headers={"Content-Type": "application/json"})
    assert status == 413
    assert api.call("GET", "/api/v1/nothing")[0] == 404
    assert api.call("PATCH", "/api/v1/clients")[0] == 405
    status, body, _ = api.call("GET", "/api/v1/clients?limit=many")
    assert status == 400 and "limit" in body["error"]
    status, body, _ = api.call("GET", "/api/v1/retained?filter=" + urllib.parse.quote("a/#/b"))
    assert status == 400 and "topic filter" in body["error"]
    status, body, _ = api.call("DELETE", "/api/v1/retained")
    assert status == 400 and "topic" in body["error"]
    # The broker is unharmed.
    assert api.call("GET", "/api/v1/overview")[0] == 200


def test_overview_clients_details_and_disconnect(console):
    """A connected client is listed with its address, protocol, keep alive and subscriptions;
    disconnecting it from the API closes it with 0x98 Administrative action and publishes its
    will ([MQTT-3.1.2-8]: the will is published when the server closes the connection)."""
    b, api = console
    watcher, watched = paho_client(b.port, "watcher")
    watcher.subscribe("wills/#", 1)
    c, state = paho_client(b.port, "board-7", will=("wills/board-7", b"gone", 1))
    c.subscribe("cmd/board-7/#", 1)
    wait_for(lambda: api.call("GET", "/api/v1/clients/board-7")[1].get("subscriptions") == 1, what="the subscription")

    status, o, _ = api.call("GET", "/api/v1/overview")
    assert status == 200
    assert o["clients_connected"] == 2 and o["version"]
    assert {"address": f"127.0.0.1:{b.port}", "kind": "tcp"} in o["listeners"]
    status, page, _ = api.call("GET", "/api/v1/clients?q=board")
    assert page["total"] == 1
    item = page["items"][0]
    assert item["client_id"] == "board-7" and item["protocol"] == "5.0" and item["keep_alive"] == 42
    assert item["peer"].startswith("127.0.0.1:") and item["connected"]
    status, detail, _ = api.call("GET", "/api/v1/clients/board-7")
    assert detail["subscription_list"][0]["filter"] == "cmd/board-7/#"
    assert detail["subscription_list"][0]["qos"] == 1
    status, subs, _ = api.call("GET", "/api/v1/subscriptions?client_id=board-7")
    assert [s["filter"] for s in subs["items"]] == ["cmd/board-7/#"]
    status, page, _ = api.call("GET", "/api/v1/clients?offset=1&limit=1")
    assert page["total"] == 2 and len(page["items"]) == 1

    assert api.call("DELETE", "/api/v1/clients/board-7")[0] == 204
    wait_for(lambda: state["disconnect"] is not None, what="the client to be closed")
    assert state["disconnect"] == 0x98
    wait_for(lambda: ("wills/board-7", b"gone", False) in watched["messages"], what="the will")
    assert api.call("GET", "/api/v1/clients/board-7")[0] == 404
    assert api.call("DELETE", "/api/v1/clients/board-7")[0] == 404
    c.loop_stop()
    stop(watcher)


def test_sessions_offline_listed_and_deleted_for_good(console):
    """A persistent session stays after its client leaves; deleting it removes it from memory
    and the store, so a restart does not bring it back and the client gets Session Present 0
    ([MQTT-3.2.2-3] Session Present 0 when the server has no session)."""
    b, api = console
    c, _ = paho_client(b.port, "sleepy", clean=False, session_expiry=3600)
    c.subscribe("x/#", 1)
    time.sleep(0.3)
    stop(c)
    wait_for(lambda: api.call("GET", "/api/v1/sessions?connected=false")[1]["total"] == 1, what="the offline session")
    status, page, _ = api.call("GET", "/api/v1/sessions?connected=false")
    s = page["items"][0]
    assert s["client_id"] == "sleepy" and not s["connected"] and s["persistent"]
    assert s["expiry_interval"] == 3600 and 0 < s["expires_in"] <= 3600
    assert api.call("GET", "/api/v1/sessions/sleepy")[1]["subscription_list"][0]["filter"] == "x/#"
    assert api.call("GET", "/api/v1/sessions?connected=maybe")[0] == 400
    assert api.call("DELETE", "/api/v1/sessions/sleepy")[0] == 204
    assert api.call("GET", "/api/v1/sessions/sleepy")[0] == 404
    b.stop()
    b.start()
    api = Api(b.console_url)
    api.login(b.admin_password())
    assert api.call("GET", "/api/v1/sessions")[1]["total"] == 0
    present = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sleepy", protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, ud, flags, rc, p: present.setdefault("v", flags.session_present)
    c.connect("127.0.0.1", b.port, clean_start=False)
    c.loop_start()
    wait_for(lambda: "v" in present, what="CONNACK")
    assert present["v"] is False
    stop(c)


def test_retained_browse_and_delete(console):
    """Deleting a retained message is what a retained empty PUBLISH does [MQTT-3.3.1-6]: a
    later subscriber gets nothing."""
    b, api = console
    pub, _ = paho_client(b.port, "pub")
    pub.publish("home/kitchen/temp", b"21.5", qos=1, retain=True).wait_for_publish(10)
    pub.publish("home/hall/temp", bytes([0xFF, 0x00]), qos=1, retain=True).wait_for_publish(10)
    pub.publish("garden/temp", b"9", qos=0, retain=True).wait_for_publish(10)
    status, r, _ = api.call("GET", "/api/v1/retained?filter=" + urllib.parse.quote("home/#"))
    assert [(m["topic"], m["payload"], m["encoding"]) for m in r["items"]] == [
        ("home/hall/temp", "/wA=", "base64"),
        ("home/kitchen/temp", "21.5", "utf8"),
    ]
    assert api.call("DELETE", "/api/v1/retained?topic=" + urllib.parse.quote("home/kitchen/temp"))[0] == 204
    assert api.call("DELETE", "/api/v1/retained?topic=nothing/here")[0] == 404
    late, state = paho_client(b.port, "late")
    late.subscribe("home/#", 1)
    wait_for(lambda: state["messages"], what="the remaining retained message")
    time.sleep(0.3)
    assert [m[0] for m in state["messages"]] == ["home/hall/temp"]
    # Topics seen: last message, count.
    status, t, _ = api.call("GET", "/api/v1/topics?prefix=home/")
    topics = {i["topic"]: i for i in t["items"]}
    assert topics["home/kitchen/temp"]["last_payload"] == "21.5" and topics["home/kitchen/temp"]["count"] == 1
    assert topics["home/kitchen/temp"]["last_retain"] is True
    stop(late)
    stop(pub)


def test_users_and_permissions_apply_live(console):
    """A user created through the API can connect at once and only do what its rules allow;
    changing the rules applies to the connected client; a wrong password gets CONNACK 0x86
    [MQTT-3.2.2-8 in spirit: the broker says why]; deleting the user closes its clients."""
    b, api = console
    bad = [
        ({"password": "longenough"}, "name"),
        ({"name": "x"}, "password"),
        ({"name": "x", "password": "short"}, "8 characters"),
        ({"name": "x", "password": "longenough", "rules": [{"allow": "write", "topic": "a"}]}, "rule 1"),
        ({"name": "x", "password": "longenough", "rules": [{"allow": "both", "deny": "both", "topic": "a"}]}, "exactly one"),
        ({"name": "x", "password": "longenough", "rules": [{"allow": "both", "topic": "a/#/b"}]}, "topic filter"),
    ]
    for body, words in bad:
        status, answer, _ = api.call("POST", "/api/v1/users", body)
        assert status == 400 and words in answer["error"], (body, answer)
    status, user, _ = api.call("POST", "/api/v1/users", {
        "name": "board1", "password": "board1-pass", "rules": [{"allow": "publish", "topic": "sensors/#"}]})
    assert status == 201 and user["rules"] == [{"allow": "publish", "topic": "sensors/#"}]
    assert api.call("POST", "/api/v1/users", {"name": "board1", "password": "board1-pass"})[0] == 409
    status, viewer, _ = api.call("POST", "/api/v1/users", {
        "name": "viewer", "password": "viewer-pass", "rules": [{"allow": "subscribe", "topic": "sensors/#"}]})
    assert status == 201
    status, users, _ = api.call("GET", "/api/v1/users")
    assert [u["name"] for u in users["items"]] == ["board1", "viewer"]
    status, one, _ = api.call("GET", "/api/v1/users/viewer")
    assert status == 200 and one == {"name": "viewer", "rules": [{"allow": "subscribe", "topic": "sensors/#"}]}
    assert api.call("GET", "/api/v1/users/nobody")[0] == 404
    assert "password" not in json.dumps(users)

    # Wrong password, and anonymous now that users exist.
    _, state = paho_client(b.port, "intruder", "board1", "wrong-pass")
    assert state["connack"] == 0x86
    board, board_state = paho_client(b.port, "board-1", "board1", "board1-pass")
    assert board_state["connack"] == 0
    view, view_state = paho_client(b.port, "viewer-1", "viewer", "viewer-pass")
    view.subscribe("sensors/#", 1)
    time.sleep(0.3)
    board.publish("sensors/t", b"1", qos=1).wait_for_publish(10)
    wait_for(lambda: view_state["messages"], what="the permitted message")
    # Publish-only: board1's subscription is refused.
    granted = {}
    board.on_subscribe = lambda cl, ud, mid, codes, p: granted.setdefault("codes", [c.value for c in codes])
    board.subscribe("sensors/#", 1)
    wait_for(lambda: "codes" in granted, what="SUBACK")
    assert granted["codes"] == [0x87]

    # Rules changed live: viewer loses sensors/#, so the next message does not reach it.
    status, changed, _ = api.call("PUT", "/api/v1/users/viewer", {"rules": [{"allow": "subscribe", "topic": "other/#"}]})
    assert status == 200 and changed["rules"][0]["topic"] == "other/#"
    board.publish("sensors/t", b"2", qos=1).wait_for_publish(10)
    time.sleep(0.5)
    assert [m[1] for m in view_state["messages"]] == [b"1"]
    # Password changed: the old one no longer works.
    assert api.call("PUT", "/api/v1/users/viewer", {"password": "new-viewer-pass"})[0] == 200
    _, state = paho_client(b.port, "viewer-2", "viewer", "viewer-pass")
    assert state["connack"] == 0x86
    assert api.call("PUT", "/api/v1/users/nobody", {"password": "whatever1"})[0] == 404

    # Deleted: its connected client is closed, and it cannot come back.
    status, deleted, _ = api.call("DELETE", "/api/v1/users/board1")
    assert status == 200 and deleted["clients_closed"] == 1
    wait_for(lambda: board_state["disconnect"] is not None, what="board1's client to be closed")
    board.loop_stop()
    _, state = paho_client(b.port, "board-1", "board1", "board1-pass")
    assert state["connack"] == 0x86
    assert api.call("DELETE", "/api/v1/users/board1")[0] == 404
    stop(view)
    # Failed logins are counted for Prometheus.
    text = api.call("GET", "/metrics")[1]
    assert "tern_auth_failures_total 3" in text


def test_metrics_count_by_direction_and_qos(console):
    b, api = console
    sub, state = paho_client(b.port, "sub")
    sub.subscribe("m/#", 2)
    time.sleep(0.3)
    pub, _ = paho_client(b.port, "pub")
    for qos in (0, 1, 2, 2):
        pub.publish("m/x", b"v", qos=qos).wait_for_publish(10)
    wait_for(lambda: len(state["messages"]) == 4, what="four messages")
    text = api.call("GET", "/metrics")[1]
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert lines['tern_messages_total{direction="in",qos="0"}'] == "1"
    assert lines['tern_messages_total{direction="in",qos="1"}'] == "1"
    assert lines['tern_messages_total{direction="in",qos="2"}'] == "2"
    assert lines['tern_messages_total{direction="out",qos="2"}'] == "2"
    assert lines["tern_clients_connected"] == "2"
    assert lines['tern_publish_handling_seconds_count'] == "4"
    assert int(lines["tern_store_bytes"]) > 0
    assert 'tern_messages_dropped_total{cause="queue_full"}' in lines
    stop(pub)
    stop(sub)


def test_mqtt_over_websocket_on_the_console_port(console):
    """The console's web client speaks MQTT over WebSocket on /mqtt of the same port; a real
    client (paho over WebSocket) does the same."""
    b, api = console
    got = []
    sub, state = paho_client(b.port, "tcp-sub")
    sub.subscribe("ws/#", 1)
    time.sleep(0.3)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-client", transport="websockets")
    c.ws_set_options(path="/mqtt")
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", b.console_port)
    c.loop_start()
    assert connected.wait(10)
    c.publish("ws/hello", b"over websocket", qos=1).wait_for_publish(10)
    wait_for(lambda: state["messages"], what="the message from the WebSocket client")
    assert state["messages"][0][:2] == ("ws/hello", b"over websocket")
    status, page, _ = api.call("GET", "/api/v1/clients?q=ws-client")
    assert page["total"] == 1
    stop(c)
    stop(sub)


def test_websocket_from_another_site_is_refused(console):
    """A page on another site cannot open MQTT on the console port through a visitor's
    browser: the upgrade is refused when Origin names another host."""
    b, _ = console
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    for origin, expected in (("http://evil.example", 403), (f"http://127.0.0.1:{b.console_port}", 101)):
        conn = http.client.HTTPConnection("127.0.0.1", b.console_port, timeout=10)
        conn.request("GET", "/mqtt", headers={
            "Host": f"127.0.0.1:{b.console_port}", "Origin": origin, "Upgrade": "websocket",
            "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "mqtt"})
        r = conn.getresponse()
        assert r.status == expected, (origin, r.status)
        if expected == 101:
            # RFC 6455 section 1.3's example key and answer.
            assert r.headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            assert r.headers["Sec-WebSocket-Protocol"] == "mqtt"
        conn.close()


def test_console_over_https_marks_the_cookie_secure(tmp_path):
    certs = tmp_path / "certs"
    tern("cert", "localhost", "127.0.0.1", "--dir", str(certs))
    config = tmp_path / "tern.toml"
    config.write_text(f"""
[[listener]]
bind = "127.0.0.1:0"

[console]
cert = "{certs}/server.pem"
key = "{certs}/server.key"
""")
    b = Broker(tmp_path, config=config).start()
    try:
        assert b.console_url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        api = Api(b.console_url.replace("127.0.0.1", "localhost"))
        api.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(api.jar),
                                                 urllib.request.HTTPSHandler(context=ctx))
        headers = api.login(b.admin_password())
        assert "Secure" in headers["Set-Cookie"]
        assert api.call("GET", "/api/v1/overview")[0] == 200
    finally:
        b.stop()
