"""mosquitto_pub and mosquitto_sub (Debian mosquitto-clients), -V 311 and -V 5."""

import subprocess

import pytest

from conftest import wait_for

VERSIONS = ["311", "5"]


def pub(broker, version, *args):
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", version, *args],
        check=True,
        timeout=20,
    )


def sub(broker, version, *args):
    """Starts mosquitto_sub; returns the process (stdout: one `topic payload` line each)."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", version, "-v", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def subscribed(broker, client_id):
    """True once the broker has logged the client's subscription."""
    return f"subscribed client_id={client_id} " in broker.log()


def finish(proc):
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    return out.splitlines()


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_round_trips(broker, version):
    # Each QoS end to end [MQTT-4.3.1-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1].
    s = sub(broker, version, "-i", "msub", "-t", "mq/#", "-q", "2", "-C", "3", "-W", "15")
    wait_for(lambda: subscribed(broker, "msub"), what="subscriber")
    for qos in ("0", "1", "2"):
        pub(broker, version, "-t", f"mq/{qos}", "-m", f"m{qos}", "-q", qos)
    assert sorted(finish(s)) == ["mq/0 m0", "mq/1 m1", "mq/2 m2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained(broker, version):
    # [MQTT-3.3.1-6] retained message to a later subscriber; [MQTT-3.3.1-10] empty clears it.
    pub(broker, version, "-t", "mr/x", "-m", "kept", "-r", "-q", "1")
    s = sub(broker, version, "-t", "mr/#", "-C", "1", "-W", "15")
    assert finish(s) == ["mr/x kept"]
    pub(broker, version, "-t", "mr/x", "-n", "-r")
    s = sub(broker, version, "-t", "mr/#", "-C", "1", "-W", "1")
    out, _ = s.communicate(timeout=20)
    assert out == ""  # timed out: nothing retained any more


@pytest.mark.parametrize("version", VERSIONS)
def test_will(broker, version):
    # [MQTT-3.1.2-8] a client killed without DISCONNECT has its will published.
    s = sub(broker, version, "-i", "wsub", "-t", "mw/#", "-C", "1", "-W", "15")
    wait_for(lambda: subscribed(broker, "wsub"), what="subscriber")
    dying = sub(broker, version, "-i", "dying", "-t", "nothing", "--will-topic", "mw/dying", "--will-payload", "gone")
    wait_for(lambda: subscribed(broker, "dying"), what="the dying client")
    dying.kill()
    dying.wait()
    assert finish(s) == ["mw/dying gone"]


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session(broker, version):
    # -c: a persistent session; messages published while it is away arrive when it returns.
    extra = ["-x", "600"] if version == "5" else []
    s = sub(broker, version, "-i", "persist", "-c", *extra, "-t", "mp/inbox", "-q", "1", "-C", "1", "-W", "15")
    wait_for(lambda: subscribed(broker, "persist"), what="subscriber")
    pub(broker, version, "-t", "mp/inbox", "-m", "first", "-q", "1")
    assert finish(s) == ["mp/inbox first"]
    for i in range(3):
        pub(broker, version, "-t", "mp/inbox", "-m", f"offline{i}", "-q", "1")
    s = sub(broker, version, "-i", "persist", "-c", *extra, "-t", "mp/inbox", "-q", "1", "-C", "3", "-W", "15")
    assert finish(s) == [f"mp/inbox offline{i}" for i in range(3)]


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_subscription(broker, version):
    # [MQTT-4.8.2-3] each message to one member of the group.
    a = sub(broker, version, "-i", "sa", "-t", "$share/g/ms/jobs", "-q", "1", "-W", "3")
    b = sub(broker, version, "-i", "sb", "-t", "$share/g/ms/jobs", "-q", "1", "-W", "3")
    wait_for(lambda: subscribed(broker, "sa") and subscribed(broker, "sb"), what="subscribers")
    for i in range(10):
        pub(broker, version, "-t", "ms/jobs", "-m", str(i), "-q", "1")
    out_a, _ = a.communicate(timeout=20)
    out_b, _ = b.communicate(timeout=20)
    got = sorted(int(line.split()[1]) for line in (out_a + out_b).splitlines())
    assert got == list(range(10))
    assert out_a and out_b
