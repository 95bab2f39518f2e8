"""The `tern broker` process as a person meets it: flags, configuration errors, logs, signals."""

import signal
import socket
import subprocess

from conftest import TERN, wait_for


def test_help_documents_the_flags():
    out = subprocess.run([str(TERN), "broker", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--listen", "--config", "--data-dir", "--log-level"):
        assert flag in out


def test_bad_configuration_names_the_line_and_the_key(tmp_path):
    bad = tmp_path / "tern.toml"
    bad.write_text('log_level = "info"\n\n[limits]\nmaximum_qos = 7\n')
    run = subprocess.run([str(TERN), "broker", "--config", str(bad)], capture_output=True, text=True, timeout=20)
    assert run.returncode == 2
    assert "line 4" in run.stderr and "maximum_qos" in run.stderr, run.stderr
    bad.write_text("[limits]\nmax_packet_sise = 10\n")
    run = subprocess.run([str(TERN), "broker", "--config", str(bad)], capture_output=True, text=True, timeout=20)
    assert run.returncode == 2
    assert "line 2" in run.stderr and "max_packet_sise" in run.stderr, run.stderr


def test_connect_and_disconnect_are_logged(broker):
    # One line per connect and disconnect, with client id, address and reason.
    s = socket.create_connection(("127.0.0.1", broker.port))
    s.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02me")
    assert s.recv(4) == b"\x20\x02\x00\x00"
    s.close()
    wait_for(lambda: "client disconnected client_id=me" in broker.log(), what="the disconnect line")
    log = broker.log()
    assert "client connected client_id=me peer=127.0.0.1:" in log
    assert "end=Lost" in log


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_sigterm_shuts_down_gracefully(broker):
    # MQTT 5 clients are told 0x8B (Server shutting down); the process exits 0.
    s = socket.create_connection(("127.0.0.1", broker.port))
    s.sendall(b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02me")
    s.settimeout(10)
    header = recv_exact(s, 2)
    assert header[0] == 0x20
    recv_exact(s, header[1])  # the CONNACK's properties
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(timeout=10) == 0
    data = s.recv(256)
    # DISCONNECT, reason 0x8B, then its properties (a Reason String) [MQTT-3.14.2-1].
    assert data[0] == 0xE0 and data[2] == 0x8B, data
    assert b"shutting down" in data, data
