"""The tutorial's two board programs, run through a reproduction of umqtt (umqtt_board.py),
against a tern broker process: a publisher sending every second (sped up here) and a
subscriber that sleeps between `check_msg()` polls and reads one packet per poll."""

import time

from conftest import wait_for
from umqtt_board import MQTTClient, RobustMQTTClient


def board(cls, broker, client_id):
    return cls(client_id, "127.0.0.1", port=broker.port, user="board", password="secret", keepalive=7200)


def test_publisher_and_polling_subscriber_lose_nothing(broker):
    # The tutorial's programs at ten times their pace, for three minutes of tutorial time: the
    # publisher sends every 0.1 s (tutorial: 1 s), the subscriber sleeps 0.5 s (tutorial: 5 s)
    # and reads one packet per check_msg(). Messages pile up in the broker and the socket,
    # never dropped, and arrive in order once it catches up.
    received = []
    sub = board(MQTTClient, broker, "pico-sub")
    sub.set_callback(lambda topic, msg: received.append((topic, msg)))
    sub.connect()
    sub.subscribe("Topic", 1)
    pub = board(MQTTClient, broker, "pico-pub")
    pub.connect()
    count = 180
    next_poll = time.monotonic()
    for i in range(count):
        pub.publish("Topic", f"Hello {i}".encode(), qos=i % 2)
        if time.monotonic() >= next_poll:
            sub.check_msg()
            next_poll = time.monotonic() + 0.5
        time.sleep(0.1)
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        sub.check_msg()
    assert [m for _, m in received] == [f"Hello {i}".encode() for i in range(count)]
    assert all(t == b"Topic" for t, _ in received)


def test_robust_publisher_carries_on_after_broker_restart(broker):
    RobustMQTTClient.DELAY = 0.2
    pub = board(RobustMQTTClient, broker, "pico-pub")
    pub.connect()
    for i in range(5):
        pub.publish("Topic", f"before {i}".encode())
    broker.stop()
    broker.start()  # same port
    received = []
    sub = board(MQTTClient, broker, "pico-sub")
    sub.set_callback(lambda topic, msg: received.append(msg))
    sub.connect()
    sub.subscribe("Topic", 0)
    # The first publish after the restart meets the dead socket; robust reconnects (clean
    # session off, as the board does) and carries on.
    for i in range(20):
        pub.publish("Topic", f"after {i}".encode(), qos=1)
    wait_for(lambda: sub.check_msg() is None and len(received) >= 20, what="messages after restart")
    assert received[-20:] == [f"after {i}".encode() for i in range(20)]
