// A small MQTT 3.1.1 client over WebSocket, for the console's web client: CONNECT with a
// user name and password, SUBSCRIBE, UNSUBSCRIBE, PUBLISH at QoS 0, 1 and 2 both ways,
// PINGREQ on the keep alive. Nothing else is needed to test a board.
"use strict";

const MqttClient = (() => {
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  function str(s) {
    const b = enc.encode(s);
    return [b.length >> 8, b.length & 255, ...b];
  }

  function packet(type, flags, body) {
    const head = [(type << 4) | flags];
    let n = body.length;
    do {
      let d = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) d |= 128;
      head.push(d);
    } while (n > 0);
    return new Uint8Array([...head, ...body]);
  }

  class Client {
    constructor() {
      this.ws = null;
      this.buf = new Uint8Array(0);
      this.nextId = 1;
      this.pending = new Map(); // packet id -> resolve
      this.onmessage = () => {};
      this.onclose = () => {};
      this.onconnect = () => {};
      this.ping = null;
    }

    connect(url, opts) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, ["mqtt"]);
        ws.binaryType = "arraybuffer";
        this.ws = ws;
        this.connack = { resolve, reject };
        ws.onopen = () => {
          let flags = 0x02; // clean session
          const payload = [...str(opts.clientId || "")];
          if (opts.username) {
            flags |= 0x80;
            payload.push(...str(opts.username));
            if (opts.password) {
              flags |= 0x40;
              payload.push(...str(opts.password));
            }
          }
          const keepalive = opts.keepalive || 60;
          const body = [...str("MQTT"), 4, flags, keepalive >> 8, keepalive & 255, ...payload];
          this.send(packet(1, 0, body));
          this.ping = setInterval(() => this.send(packet(12, 0, [])), keepalive * 500);
        };
        ws.onmessage = (e) => this.receive(new Uint8Array(e.data));
        ws.onerror = () => {};
        ws.onclose = () => {
          clearInterval(this.ping);
          if (this.connack) {
            this.connack.reject(new Error("connection closed before CONNACK"));
            this.connack = null;
          }
          this.onclose();
        };
      });
    }

    send(bytes) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
    }

    id() {
      const id = this.nextId;
      this.nextId = (this.nextId % 65535) + 1;
      return id;
    }

    subscribe(filter, qos) {
      const id = this.id();
      this.send(packet(8, 2, [id >> 8, id & 255, ...str(filter), qos]));
      return new Promise((resolve) => this.pending.set(id, resolve));
    }

    unsubscribe(filter) {
      const id = this.id();
      this.send(packet(10, 2, [id >> 8, id & 255, ...str(filter)]));
      return new Promise((resolve) => this.pending.set(id, resolve));
    }

    publish(topic, payload, qos, retain) {
      const body = [...str(topic)];
      let id = 0;
      if (qos > 0) {
        id = this.id();
        body.push(id >> 8, id & 255);
      }
      body.push(...enc.encode(payload));
      this.send(packet(3, (qos << 1) | (retain ? 1 : 0), body));
      if (qos === 0) return Promise.resolve();
      return new Promise((resolve) => this.pending.set(id, resolve));
    }

    disconnect() {
      this.send(packet(14, 0, []));
      if (this.ws) this.ws.close();
    }

    receive(chunk) {
      const all = new Uint8Array(this.buf.length + chunk.length);
      all.set(this.buf);
      all.set(chunk, this.buf.length);
      this.buf = all;
      for (;;) {
        let len = 0, mult = 1, i = 1, complete = false;
        while (i < this.buf.length && i <= 4) {
          const d = this.buf[i++];
          len += (d & 127) * mult;
          mult *= 128;
          if ((d & 128) === 0) { complete = true; break; }
        }
        if (!complete || this.buf.length < i + len) return;
        this.handle(this.buf[0], this.buf.subarray(i, i + len));
        this.buf = this.buf.slice(i + len);
      }
    }

    handle(first, body) {
      const type = first >> 4;
      const id = body.length >= 2 ? (body[0] << 8) | body[1] : 0;
      switch (type) {
        case 2: { // CONNACK
          const code = body[1];
          if (this.connack) {
            if (code === 0) this.connack.resolve(); else this.connack.reject(new Error(`CONNACK return code ${code}`));
            this.connack = null;
          }
          break;
        }
        case 3: { // PUBLISH
          const qos = (first >> 1) & 3;
          const tlen = (body[0] << 8) | body[1];
          const topic = dec.decode(body.subarray(2, 2 + tlen));
          let at = 2 + tlen, pid = 0;
          if (qos > 0) { pid = (body[at] << 8) | body[at + 1]; at += 2; }
          const payload = dec.decode(body.subarray(at));
          if (qos === 1) this.send(packet(4, 0, [pid >> 8, pid & 255]));
          if (qos === 2) this.send(packet(5, 0, [pid >> 8, pid & 255]));
          this.onmessage({ topic, payload, qos, retain: (first & 1) === 1 });
          break;
        }
        case 5: // PUBREC: release
          this.send(packet(6, 2, [id >> 8, id & 255]));
          break;
        case 6: // PUBREL: complete
          this.send(packet(7, 0, [id >> 8, id & 255]));
          break;
        case 4: case 7: case 9: case 11: { // PUBACK, PUBCOMP, SUBACK, UNSUBACK
          const done = this.pending.get(id);
          this.pending.delete(id);
          if (done) done(type === 9 ? Array.from(body.subarray(2)) : undefined);
          break;
        }
        default:
          break;
      }
    }
  }

  return { Client };
})();
