"""Fixtures for interop tests: a real `tern broker` process on a free loopback port.

Tests here drive the broker with clients tern did not write (paho-mqtt, mosquitto_pub and
mosquitto_sub, MQTT.js) and with a reproduction of the tutorial boards' umqtt.
"""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERN = Path(os.environ.get("TERN_BIN", ROOT / "target" / "debug" / "tern"))
LISTENING = re.compile(r"listening addr=127\.0\.0\.1:(\d+) kind=Tcp")
LISTENERS = re.compile(r"listening addr=127\.0\.0\.1:(\d+) kind=(\w+)")
CONSOLE = re.compile(r"console listening: (http\S+?)/? ")
ADMIN_PASSWORD = re.compile(r"password `([^`]+)`")


class Broker:
    """A tern broker process. `start()` binds port 0 the first time and the same port after."""

    def __init__(self, tmp_path, config=None):
        self.port = 0
        self.proc = None
        self.config = config
        self.ports = {}
        self.console_port = 0
        self.console_url = None
        self.log_path = tmp_path / "broker.log"
        self.data_dir = tmp_path / "data"
        # Runs in the broker's process before it starts (e.g. to set a resource limit).
        self.preexec = None
        # Extra environment variables for the broker's process (e.g. LD_PRELOAD).
        self.env = {}

    def start(self):
        log = open(self.log_path, "a")
        if self.config:
            # The configuration's listeners (port 0 each); `ports` maps kind to port.
            args = ["--config", str(self.config)]
        else:
            args = ["--listen", f"127.0.0.1:{self.port}"]
        # The console on a free port of its own (never the default one, which another broker
        # on this machine may hold).
        args += ["--console", f"127.0.0.1:{self.console_port}"]
        self.proc = subprocess.Popen(
            [str(TERN), "broker", *args, "--data-dir", str(self.data_dir), "--log-level", "debug"],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log_path.read_text())
            consoles = CONSOLE.findall(self.log_path.read_text())
            if m and (self.port == 0 or int(m.group(1)) == self.port) and self._listening_count() > self._starts \
                    and len(consoles) > self._starts:
                self.port = int(m.group(1))
                self._starts += 1
                self.console_url = consoles[-1]
                self.console_port = int(self.console_url.rsplit(":", 1)[1])
                if self.config:
                    time.sleep(0.2)  # every listener logs within the same start-up
                    self.ports = {k.lower(): int(p) for p, k in LISTENERS.findall(self.log_path.read_text())}
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"tern broker exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError("tern broker did not start listening in time")

    _starts = 0

    def _listening_count(self):
        return len(LISTENING.findall(self.log_path.read_text()))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        return self.log_path.read_text()

    def admin_password(self):
        """The console password the broker printed when it created its administrator."""
        m = ADMIN_PASSWORD.search(self.log())
        assert m, "the broker did not print a console password"
        return m.group(1)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


_given_ports = set()


def free_port():
    """A loopback port free now and never handed out before in this run. Two binds of port 0
    in a row may get the same port, so a test that starts several servers could otherwise
    give two of them one port (seen: a NATS server's client and route ports)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def tern(*args, stdin=None):
    """Runs a `tern` subcommand; returns its stdout."""
    run = subprocess.run([str(TERN), *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


SECURE_CONFIG = """
[[listener]]
bind = "127.0.0.1:0"

[[listener]]
kind = "tls"
bind = "127.0.0.1:0"
cert = "{certs}/server.pem"
key = "{certs}/server.key"

[[listener]]
kind = "ws"
bind = "127.0.0.1:0"

[[listener]]
kind = "wss"
bind = "127.0.0.1:0"
cert = "{certs}/server.pem"
key = "{certs}/server.key"

[limits]
connect_timeout = 2
max_connections_per_address = 50
"""

USERS = """
rules = [{ deny = "subscribe", topic = "secret/#" }]

[[user]]
name = "alice"
password = "{alice}"
rules = [
  { allow = "both", topic = "home/%u/#" },
  { allow = "subscribe", topic = "$SYS/#" },
  { allow = "both", topic = "shared/#" },
]

[[user]]
name = "bob"
password = "{bob}"
rules = [
  { allow = "subscribe", topic = "#" },
  { allow = "both", topic = "shared/#" },
  { allow = "publish", topic = "secret/#" },
]

[[client]]
id = "pico-1"
rules = [{ allow = "publish", topic = "devices/%c/out" }]
"""


@pytest.fixture
def secure(tmp_path):
    """A broker with TLS, WebSocket and users: alice (home/alice/#, $SYS, shared/#), bob
    (subscribe everything, publish shared/# and secret/#), nobody may subscribe secret/#.
    Yields (broker, certs_dir)."""
    certs = tmp_path / "certs"
    tern("cert", "localhost", "127.0.0.1", "--dir", str(certs))
    data = tmp_path / "data"
    data.mkdir()
    tern("user", "add", "alice", "--password-stdin", "--data-dir", str(data), stdin="alice-pw\n")
    tern("user", "add", "bob", "--password-stdin", "--data-dir", str(data), stdin="bob-pw\n")
    hashes = {}
    for line in (data / "users.toml").read_text().splitlines():
        if line.startswith("name = "):
            name = line.split('"')[1]
        if line.startswith("password = "):
            hashes[name] = line.split('"')[1]
    (data / "users.toml").write_text(USERS.replace("{alice}", hashes["alice"]).replace("{bob}", hashes["bob"]))
    config = tmp_path / "tern.toml"
    config.write_text(SECURE_CONFIG.format(certs=certs))
    b = Broker(tmp_path, config=config)
    b.data_dir = data
    b.start()
    yield b, certs
    b.stop()
