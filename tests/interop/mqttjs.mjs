// MQTT.js (npm `mqtt`) against a tern broker: QoS 0/1/2 round trips, retained, will,
// persistent session, shared subscription. Usage: node mqttjs.mjs PORT PROTOCOL_VERSION
// Prints one JSON line per check and exits non-zero on the first failure.
import mqtt from "mqtt";

const [port, version] = [Number(process.argv[2]), Number(process.argv[3])];
const url = `mqtt://127.0.0.1:${port}`;

function connect(clientId, extra = {}) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { clientId, protocolVersion: version, reconnectPeriod: 0, connectTimeout: 10000, ...extra });
    c.once("connect", (connack) => resolve([c, connack]));
    c.once("error", reject);
  });
}

function collect(client, n, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`only ${got.length}/${n} messages`)), timeoutMs);
    client.on("message", (topic, payload, packet) => {
      got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain });
      if (got.length === n) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

function check(name, ok, detail) {
  console.log(JSON.stringify({ name, ok, detail }));
  if (!ok) process.exit(1);
}

const end = (...clients) => Promise.all(clients.map((c) => c.endAsync()));

// QoS 0, 1, 2 [MQTT-4.3.1-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1].
{
  const [sub] = await connect("js-sub");
  await sub.subscribeAsync("js/#", { qos: 2 });
  const [pub] = await connect("js-pub");
  const got = collect(sub, 3);
  for (const qos of [0, 1, 2]) await pub.publishAsync(`js/q${qos}`, `m${qos}`, { qos });
  const msgs = (await got).sort((a, b) => a.qos - b.qos);
  check("qos", msgs.map((m) => `${m.topic}:${m.payload}:${m.qos}`).join(",") === "js/q0:m0:0,js/q1:m1:1,js/q2:m2:2", msgs);
  await end(sub, pub);
}

// Retained [MQTT-3.3.1-6].
{
  const [pub] = await connect("js-rpub");
  await pub.publishAsync("js/retained", "kept", { qos: 1, retain: true });
  const [sub] = await connect("js-rsub");
  const got = collect(sub, 1);
  await sub.subscribeAsync("js/retained", { qos: 1 });
  const [m] = await got;
  check("retained", m.payload === "kept" && m.retain === true, m);
  await end(sub, pub);
}

// Will on abnormal disconnect [MQTT-3.1.2-8].
{
  const [watcher] = await connect("js-watcher");
  await watcher.subscribeAsync("js/will", { qos: 1 });
  const got = collect(watcher, 1);
  const [dying] = await connect("js-dying", { will: { topic: "js/will", payload: "bye", qos: 1, retain: false } });
  dying.stream.destroy();
  const [m] = await got;
  check("will", m.payload === "bye", m);
  dying.end(true);
  await end(watcher);
}

// Persistent session: messages queued while offline [MQTT-3.1.2-5].
{
  const opts = version === 5 ? { clean: false, properties: { sessionExpiryInterval: 600 } } : { clean: false };
  const [sub] = await connect("js-keeper", opts);
  await sub.subscribeAsync("js/inbox", { qos: 1 });
  await sub.endAsync();
  const [pub] = await connect("js-ipub");
  for (let i = 0; i < 3; i++) await pub.publishAsync("js/inbox", `${i}`, { qos: 1 });
  const c = mqtt.connect(url, { clientId: "js-keeper", protocolVersion: version, reconnectPeriod: 0, ...opts });
  const got = collect(c, 3);
  const connack = await new Promise((resolve) => c.once("connect", resolve));
  const msgs = await got;
  check("persistent", connack.sessionPresent && msgs.map((m) => m.payload).join(",") === "0,1,2", { sessionPresent: connack.sessionPresent, msgs });
  await end(c, pub);
}

// Shared subscription [MQTT-4.8.2-3].
{
  const [a] = await connect("js-a");
  const [b] = await connect("js-b");
  await a.subscribeAsync("$share/g/js/jobs", { qos: 1 });
  await b.subscribeAsync("$share/g/js/jobs", { qos: 1 });
  const got = [];
  for (const c of [a, b]) c.on("message", (_t, p) => got.push(Number(p.toString())));
  const [pub] = await connect("js-jpub");
  for (let i = 0; i < 10; i++) await pub.publishAsync("js/jobs", `${i}`, { qos: 1 });
  const deadline = Date.now() + 10000;
  while (got.length < 10 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  got.sort((x, y) => x - y);
  check("shared", got.join(",") === "0,1,2,3,4,5,6,7,8,9", got);
  await end(a, b, pub);
}
