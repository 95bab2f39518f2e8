"""A reproduction of the tutorial boards' MicroPython client, `umqtt.simple` 1.8 and
`umqtt.robust` 1.0.3, as it behaves on the wire (the project's field notes list the facts):

- CONNECT at protocol level 4, keep alive 7200 by default, user and password flags together;
- reads CONNACK as exactly 4 bytes `20 02 flags rc` and raises on rc != 0;
- SUBSCRIBE then reads packets until 0x90, then exactly 4 more bytes `03 id id rc`; 0x80 raises;
- `check_msg()` reads at most one packet, without blocking when nothing is there;
- handles QoS 0/1 PUBLISH (answering PUBACK for QoS 1) and PINGRESP; a QoS 2 PUBLISH raises;
  any other packet type is returned as an opcode with its body left unread, as the board does;
- never sends PINGREQ by itself;
- robust: on any socket error, reconnects with clean_session=False every DELAY seconds and
  retries the call, without resubscribing.
"""

import socket
import ssl
import struct
import time


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=1883, user=None, password=None, keepalive=7200):
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.sock = None
        self.cb = None
        self.pid = 0

    def set_callback(self, f):
        self.cb = f

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError(-1, "connection closed")
            data += chunk
        return data

    @staticmethod
    def _len(n):
        out = b""
        while True:
            byte = n & 0x7F
            n >>= 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    @staticmethod
    def _str(s):
        return struct.pack("!H", len(s)) + s

    def _recv_len(self):
        n, shift = 0, 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def connect(self, clean_session=True):
        self.sock = socket.create_connection((self.server, self.port), timeout=30)
        flags = clean_session << 1
        body = b"\x00\x04MQTT\x04" + bytes([0]) + struct.pack("!H", self.keepalive)
        payload = self._str(self.client_id.encode())
        if self.user is not None:
            flags |= 0xC0
            payload += self._str(self.user.encode()) + self._str(self.pswd.encode())
        body = body[:7] + bytes([flags]) + body[8:] + payload
        self.sock.sendall(b"\x10" + self._len(len(body)) + body)
        resp = self._read(4)
        if resp[0] != 0x20 or resp[1] != 0x02:
            raise MQTTException("bad CONNACK", resp)
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()

    def publish(self, topic, msg, retain=False, qos=0):
        assert qos in (0, 1), "the board has no QoS 2"
        topic = topic.encode()
        body = self._str(topic)
        if qos:
            self.pid += 1
            pid = self.pid
            body += struct.pack("!H", pid)
        body += msg
        self.sock.sendall(bytes([0x30 | qos << 1 | retain]) + self._len(len(body)) + body)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    size = self._read(1)
                    assert size == b"\x02"
                    if struct.unpack("!H", self._read(2))[0] == pid:
                        return

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "subscribe callback is not set"
        self.pid += 1
        pid = struct.pack("!H", self.pid)
        body = pid + self._str(topic.encode()) + bytes([qos])
        self.sock.sendall(b"\x82" + self._len(len(body)) + body)
        while True:
            op = self.wait_msg()
            if op == 0x90:
                resp = self._read(4)
                if resp[0] != 0x03 or resp[1:3] != pid:
                    raise MQTTException("bad SUBACK", resp)
                if resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def wait_msg(self):
        """Reads one packet. Returns None for nothing/PINGRESP, else the packet's first byte."""
        try:
            res = self.sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(30)
        if res == b"":
            raise OSError(-1, "connection closed")
        if res == b"\xd0":
            assert self._read(1)[0] == 0
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        size = self._recv_len()
        tlen = struct.unpack("!H", self._read(2))[0]
        topic = self._read(tlen)
        size -= tlen + 2
        if op & 6:
            pid = self._read(2)
            size -= 2
        msg = self._read(size)
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.sendall(b"\x40\x02" + pid)
        elif op & 6 == 4:
            raise MQTTException("QoS 2 PUBLISH: the board cannot handle it")
        return op

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()


class RobustMQTTClient(MQTTClient):
    DELAY = 2

    def reconnect(self):
        while True:
            try:
                return super().connect(False)
            except OSError:
                time.sleep(self.DELAY)

    def publish(self, topic, msg, retain=False, qos=0):
        while True:
            try:
                return super().publish(topic, msg, retain, qos)
            except OSError:
                self.reconnect()

    def wait_msg(self):
        while True:
            try:
                return super().wait_msg()
            except OSError:
                self.reconnect()
