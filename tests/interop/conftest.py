"""Fixtures for interop tests: a real `tern broker` process on a free loopback port.

Tests here drive the broker with clients tern did not write (paho-mqtt, mosquitto_pub and
mosquitto_sub, MQTT.js) and with a reproduction of the tutorial boards' umqtt.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERN = Path(os.environ.get("TERN_BIN", ROOT / "target" / "debug" / "tern"))
LISTENING = re.compile(r"listening addr=127\.0\.0\.1:(\d+) kind=Tcp")


class Broker:
    """A tern broker process. `start()` binds port 0 the first time and the same port after."""

    def __init__(self, tmp_path):
        self.port = 0
        self.proc = None
        self.log_path = tmp_path / "broker.log"
        self.data_dir = tmp_path / "data"

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(TERN), "broker", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), "--log-level", "debug"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log_path.read_text())
            if m and (self.port == 0 or int(m.group(1)) == self.port) and self._listening_count() > self._starts:
                self.port = int(m.group(1))
                self._starts += 1
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


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
