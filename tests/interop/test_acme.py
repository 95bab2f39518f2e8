"""Automatic certificates end to end against Pebble, the ACME test server (Debian `pebble`),
on loopback with its validation ports pointed at tern: first issuance with TLS-ALPN-01 and
with HTTP-01, renewal of short-lived certificates while a TLS client stays connected,
restart with the stored certificate, and a clear error when the challenge fails."""

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, free_port, tern, wait_for


class Pebble:
    """A Pebble process whose validation ports are tern's; `root` is its issuing root CA."""

    def __init__(self, tmp_path, tls_port, http_port, validity=None):
        assert shutil.which("pebble"), "Debian's pebble is needed (scripts/test installs it)"
        self.dir = tmp_path / "pebble"
        self.dir.mkdir()
        # Pebble's own HTTPS certificate, from a CA tern makes.
        tern("cert", "localhost", "127.0.0.1", "--dir", str(self.dir / "https"))
        self.https_ca = self.dir / "https" / "ca.pem"
        self.port, self.management = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.dir / "https" / "server.pem"),
            "privateKey": str(self.dir / "https" / "server.key"),
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        if validity:
            config["pebble"]["certificateValidityPeriod"] = validity
        (self.dir / "config.json").write_text(json.dumps(config))
        self.log_path = self.dir / "pebble.log"
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(["pebble", "-config", str(self.dir / "config.json")],
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: "Pebble" in self.log_path.read_text() and self._up(), what="pebble to listen")
        ctx = ssl.create_default_context(cafile=str(self.https_ca))
        pem = urllib.request.urlopen(f"https://localhost:{self.management}/roots/0", context=ctx, timeout=10).read()
        self.root = self.dir / "root.pem"
        self.root.write_bytes(pem)

    def _up(self):
        # Pebble opens its ACME and management listeners one after the other: both must answer
        # before the root is fetched from the second.
        try:
            for port in (self.port, self.management):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def directory(self):
        return f"https://localhost:{self.port}/dir"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def acme_broker(tmp_path, pebble, tls_port, challenge="tls-alpn-01", http_port=None):
    config = tmp_path / "tern.toml"
    http = f'http_bind = "127.0.0.1:{http_port}"\n' if http_port else ""
    config.write_text(f"""
[[listener]]
bind = "127.0.0.1:0"

[[listener]]
kind = "tls"
bind = "127.0.0.1:{tls_port}"

[tls.acme]
domains = ["localhost"]
contact = "admin@example.org"
directory = "{pebble.directory()}"
ca_file = "{pebble.https_ca}"
challenge = "{challenge}"
{http}""")
    return Broker(tmp_path, config=config)


def served_certificate(port, root):
    """The certificate tern serves on `port`, verified against Pebble's root for `localhost`."""
    ctx = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert()


def obtained(broker):
    return broker.log().count("ACME certificate obtained")


def test_first_issuance_with_tls_alpn_then_restart_with_the_stored_certificate(tmp_path):
    tls_port = free_port()
    pebble = Pebble(tmp_path, tls_port=tls_port, http_port=free_port())
    b = acme_broker(tmp_path, pebble, tls_port).start()
    try:
        wait_for(lambda: obtained(b) == 1, timeout=60, what="the first certificate")
        cert = served_certificate(tls_port, pebble.root)
        assert dict(x[0] for x in cert["issuer"])["commonName"].startswith("Pebble Intermediate CA")
        assert ("DNS", "localhost") in cert["subjectAltName"]
        # A real MQTT client over TLS, checking the chain and the name.
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-board")
        c.tls_set(ca_certs=str(pebble.root))
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.connect("localhost", tls_port)
        c.loop_start()
        assert connected.wait(10)
        c.disconnect()
        c.loop_stop()
        serial = cert["serialNumber"]
        # Restart: the stored certificate is served at once, and no new one is ordered.
        b.stop()
        log_before = len(b.log())
        b.start()
        assert served_certificate(tls_port, pebble.root)["serialNumber"] == serial
        time.sleep(2)
        assert "ACME certificate obtained" not in b.log()[log_before:]
        assert (b.data_dir / "acme" / "account.json").exists()
    finally:
        b.stop()
        pebble.stop()


def test_renewal_keeps_connections(tmp_path):
    """Certificates valid for 20 s are renewed at two thirds of their life; a client
    connected before a renewal stays connected and working."""
    tls_port = free_port()
    pebble = Pebble(tmp_path, tls_port=tls_port, http_port=free_port(), validity=20)
    b = acme_broker(tmp_path, pebble, tls_port).start()
    try:
        wait_for(lambda: obtained(b) == 1, timeout=60, what="the first certificate")
        first = served_certificate(tls_port, pebble.root)["serialNumber"]
        got = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="long-lived")
        c.tls_set(ca_certs=str(pebble.root))
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.on_message = lambda cl, ud, m: got.append(m.payload)
        c.connect("localhost", tls_port)
        c.loop_start()
        assert connected.wait(10)
        c.subscribe("renewal/#", 1)
        wait_for(lambda: obtained(b) >= 2, timeout=60, what="a renewal")
        assert served_certificate(tls_port, pebble.root)["serialNumber"] != first
        c.publish("renewal/check", b"still here", qos=1).wait_for_publish(10)
        wait_for(lambda: got == [b"still here"], what="the old connection to keep working")
        assert "client disconnected client_id=long-lived" not in b.log()
        c.disconnect()
        c.loop_stop()
    finally:
        b.stop()
        pebble.stop()


def test_first_issuance_with_http01(tmp_path):
    tls_port, http_port = free_port(), free_port()
    pebble = Pebble(tmp_path, tls_port=free_port(), http_port=http_port)
    b = acme_broker(tmp_path, pebble, tls_port, challenge="http-01", http_port=http_port).start()
    try:
        wait_for(lambda: obtained(b) == 1, timeout=60, what="the certificate over HTTP-01")
        assert ("DNS", "localhost") in served_certificate(tls_port, pebble.root)["subjectAltName"]
    finally:
        b.stop()
        pebble.stop()


def test_a_failed_challenge_is_reported_clearly(tmp_path):
    """Pebble validates on a port where nothing answers: tern says the challenge failed, with
    Pebble's reason, keeps serving its stand-in certificate and retries later."""
    tls_port = free_port()
    pebble = Pebble(tmp_path, tls_port=free_port(), http_port=free_port())
    b = acme_broker(tmp_path, pebble, tls_port).start()
    try:
        wait_for(lambda: "ACME certificate not obtained" in b.log(), timeout=90, what="the failure")
        line = next(l for l in b.log().splitlines() if "ACME certificate not obtained" in l)
        assert "tls-alpn-01 challenge" in line and "Failed to connect" in line and "retry_in" in line, line
        assert 'domains=["localhost"]' in line, line
        # Still serving TLS (the stand-in), so the broker is usable meanwhile.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        b.stop()
        pebble.stop()
