"""`tern pub` and `tern sub` end to end against a tern broker process, including TLS and the
JSON output, with the flags and exit codes Mosquitto's users expect."""

import json
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import TERN, wait_for


def tern(*args, **kw):
    return subprocess.run([str(TERN), *args], capture_output=True, text=True, timeout=30, **kw)


def sub(broker, *args):
    return subprocess.Popen([str(TERN), "sub", "-p", str(broker.port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def subscribed(broker, client_id):
    return f"subscribed client_id={client_id} " in broker.log()


@pytest.mark.parametrize("version", ["311", "5"])
def test_pub_and_sub_plain(broker, version):
    s = sub(broker, "-V", version, "-i", f"s{version}", "-t", "cli/#", "-q", "1", "-v", "-C", "4")
    wait_for(lambda: subscribed(broker, f"s{version}"), what="subscriber")
    assert tern("pub", "-p", str(broker.port), "-V", version, "-t", "cli/m", "-m", "one", "-q", "1").returncode == 0
    run = tern("pub", "-p", str(broker.port), "-V", version, "-t", "cli/l", "-l", "-q", "2", input="two\nthree\n")
    assert run.returncode == 0, run.stderr
    assert tern("pub", "-L", f"mqtt://127.0.0.1:{broker.port}/cli/url", "-V", version, "-m", "four").returncode == 0
    out, err = s.communicate(timeout=30)
    assert s.returncode == 0, err
    assert out.splitlines() == ["cli/m one", "cli/l two", "cli/l three", "cli/url four"]


def test_file_stdin_and_null_retained(broker, tmp_path):
    f = tmp_path / "payload.bin"
    f.write_bytes(b"from a file")
    port = str(broker.port)
    assert tern("pub", "-p", port, "-t", "cli/f", "-f", str(f), "-r").returncode == 0
    assert tern("pub", "-p", port, "-t", "cli/s", "-s", "-r", input="all of stdin").returncode == 0
    run = tern("sub", "-p", port, "-t", "cli/+", "-v", "-C", "2")
    assert sorted(run.stdout.splitlines()) == ["cli/f from a file", "cli/s all of stdin"]
    assert tern("pub", "-p", port, "-t", "cli/f", "-n", "-r").returncode == 0
    run = tern("sub", "-p", port, "-t", "cli/+", "-v", "-C", "1")
    assert run.stdout.splitlines() == ["cli/s all of stdin"]


def test_json_output_with_properties(broker):
    s = sub(broker, "-V", "5", "-i", "js", "-t", "cli/json", "-F", "json", "-C", "1")
    wait_for(lambda: subscribed(broker, "js"), what="subscriber")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p5", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "text/plain"
    props.UserProperty = ("site", "kitchen")
    c.publish("cli/json", b"21.5", qos=1, properties=props).wait_for_publish(10)
    out, _ = s.communicate(timeout=30)
    line = json.loads(out)
    assert line["topic"] == "cli/json" and line["payload"] == "21.5" and line["qos"] == 0
    assert line["properties"]["content_type"] == "text/plain"
    assert line["properties"]["user_properties"] == [["site", "kitchen"]]
    c.disconnect()
    c.loop_stop()


def test_exit_codes(broker):
    # 27: -W timed out; 2: usage; 1: cannot connect.
    assert tern("sub", "-p", str(broker.port), "-t", "nothing", "-W", "1").returncode == 27
    assert tern("pub", "-p", str(broker.port), "-m", "no topic").returncode == 2
    assert tern("pub", "-p", str(broker.port), "-t", "t", "-m", "x", "-q", "3").returncode == 2
    closed = tern("pub", "-p", "1", "-t", "t", "-m", "x")
    assert closed.returncode == 1 and "refused" in closed.stderr.lower()


def test_quiet_on_a_closed_pipe(broker):
    # `tern sub | head -n 1`: once head has gone, the next write fails; tern exits 0 quietly
    # (not "Broken pipe", not the -W timeout).
    pipeline = subprocess.Popen(
        f"'{TERN}' sub -p {broker.port} -i piped -t 'pipe/#' -W 20 | head -n 1",
        shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(lambda: subscribed(broker, "piped"), what="subscriber")
    for i in range(200):
        if pipeline.poll() is not None:
            break
        tern("pub", "-p", str(broker.port), "-t", f"pipe/{i}", "-m", "x")
    out, err = pipeline.communicate(timeout=30)
    assert out == "x\n"
    assert err == ""


def test_over_tls_with_cafile_and_url(secure):
    broker, certs = secure
    port = str(broker.ports["tls"])
    ca = str(certs / "ca.pem")
    s = subprocess.Popen(
        [str(TERN), "sub", "-h", "localhost", "-p", port, "--cafile", ca, "-u", "alice", "-P", "alice-pw", "-i", "tls-sub", "-t", "shared/#", "-v", "-C", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for(lambda: subscribed(broker, "tls-sub"), what="subscriber")
    run = tern("pub", "-L", f"mqtts://alice:alice-pw@localhost:{port}/shared/cli", "--cafile", ca, "-m", "over tls")
    assert run.returncode == 0, run.stderr
    out, err = s.communicate(timeout=30)
    assert out.strip() == "shared/cli over tls", err
    # A wrong password is refused, exit 1.
    run = tern("pub", "-L", f"mqtts://alice:wrong@localhost:{port}/shared/cli", "--cafile", ca, "-m", "x")
    assert run.returncode == 1 and "refused" in run.stderr
