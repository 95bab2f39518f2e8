// The web console in a real headless Chromium (Debian's, driven by playwright-core): log in,
// create a publish-only user, see a real MQTT client (MQTT.js) connected with it in the
// clients list, publish from the web client and receive it with mosquitto_sub, disconnect a
// client from the console. Saves a screenshot of each page.
//
// Environment: CONSOLE_URL, ADMIN_PASSWORD, MQTT_PORT, SCREENSHOTS (a directory).
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import mqtt from "mqtt";

const { CONSOLE_URL, ADMIN_PASSWORD, MQTT_PORT, SCREENSHOTS } = process.env;
mkdirSync(SCREENSHOTS, { recursive: true });
const step = (what) => console.log(`step: ${what}`);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
const children = [];
let board;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e));
  const shot = (name) => page.screenshot({ path: `${SCREENSHOTS}/${name}.png`, fullPage: true });

  step("log in");
  await page.goto(CONSOLE_URL);
  await page.waitForSelector("#page-login:not([hidden])");
  await shot("login");
  await page.fill("#login-password", "not the password");
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("wrong"));
  await page.fill("#login-password", ADMIN_PASSWORD);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#page-overview:not([hidden])");
  await page.waitForFunction(() => document.getElementById("ov-uptime").textContent !== "-");

  step("create a user with a publish-only permission, and one that may subscribe");
  await page.click('a[data-page="access"]');
  await page.waitForSelector("#page-access:not([hidden])");
  const addUser = async (name, password, action, topic) => {
    await page.fill("#user-name", name);
    await page.fill("#user-password", password);
    await page.selectOption("#rules .rule:first-child .rule-action", action);
    await page.fill("#rules .rule:first-child .rule-topic", topic);
    await page.click("#user-save");
    await page.waitForSelector(`tr[data-user="${name}"]`);
  };
  await addUser("board1", "board1-pass", "publish", "sensors/#");
  await addUser("viewer", "viewer-pass", "subscribe", "sensors/#");
  const rules = await page.textContent('tr[data-user="board1"]');
  assert.match(rules, /allow publish sensors\/#/);
  // A bad rule is refused with the broker's words.
  await page.fill("#user-name", "broken");
  await page.fill("#user-password", "broken-pass");
  await page.fill("#rules .rule:first-child .rule-topic", "a/#/b");
  await page.click("#user-save");
  await page.waitForFunction(() => document.getElementById("user-error").textContent.includes("not a valid topic filter"));
  await page.click("#user-cancel");
  await shot("access");

  step("a real MQTT client connects with the publish-only user and shows in the clients list");
  board = await mqtt.connectAsync(`mqtt://127.0.0.1:${MQTT_PORT}`, {
    clientId: "pico-board-1", username: "board1", password: "board1-pass", protocolVersion: 5, reconnectPeriod: 0,
  });
  const closed = new Promise((resolve) => board.on("disconnect", (packet) => resolve(packet.reasonCode)));
  await page.click('a[data-page="clients"]');
  await page.waitForSelector('tr[data-client="pico-board-1"]');
  const row = await page.textContent('tr[data-client="pico-board-1"]');
  assert.match(row, /board1/);
  assert.match(row, /5\.0/);
  await page.click('tr[data-client="pico-board-1"] button.secondary');
  await page.waitForSelector("#client-detail:not([hidden])");
  await shot("clients");

  step("publish from the web client; mosquitto_sub receives it");
  const sub = spawn("mosquitto_sub", ["-h", "127.0.0.1", "-p", MQTT_PORT, "-u", "viewer", "-P", "viewer-pass",
    "-t", "sensors/#", "-v", "-C", "1", "-W", "30"]);
  children.push(sub);
  let received = "";
  sub.stdout.on("data", (d) => { received += d; });
  const subDone = new Promise((resolve) => sub.on("exit", resolve));
  // mosquitto_sub is subscribed once the broker lists its subscription.
  await page.evaluate(async () => {
    for (let i = 0; i < 200; i++) {
      const r = await fetch("/api/v1/subscriptions?q=sensors");
      const body = await r.json();
      if (body.items.some((s) => s.client_id !== "pico-board-1" && s.connected)) return;
      await new Promise((ok) => setTimeout(ok, 50));
    }
    throw new Error("mosquitto_sub did not subscribe");
  });
  await page.click('a[data-page="webclient"]');
  await page.fill("#wc-user", "board1");
  await page.fill("#wc-password", "board1-pass");
  await page.click("#wc-connect-button");
  await page.waitForFunction(() => document.getElementById("wc-state").textContent === "connected");
  await page.fill("#wc-pub-topic", "sensors/kitchen");
  await page.fill("#wc-pub-payload", "21.5 from the console");
  await page.click("#wc-publish button[type=submit]");
  const code = await subDone;
  assert.equal(code, 0, "mosquitto_sub did not get the message");
  assert.equal(received.trim(), "sensors/kitchen 21.5 from the console");
  // The web client also receives: subscribe as an admin-made user allowed to.
  await page.fill("#wc-user", "viewer");
  await page.fill("#wc-password", "viewer-pass");
  await page.click("#wc-connect-button");
  await page.waitForFunction(() => document.getElementById("wc-state").textContent === "connected");
  await page.fill("#wc-sub-filter", "sensors/#");
  await page.click("#wc-subscribe button[type=submit]");
  await page.waitForFunction(() => document.getElementById("wc-subscriptions").textContent.includes("QoS 1"));
  await board.publishAsync("sensors/hall", "19.0", { qos: 1 });
  await page.waitForSelector("tr.wc-message");
  assert.match(await page.textContent("tr.wc-message"), /sensors\/hall19\.0/);
  await shot("webclient");

  step("topics: the tree shows the last message of each topic");
  await board.publishAsync("sensors/garden/soil", "42", { qos: 1, retain: true });
  await page.click('a[data-page="topics"]');
  await page.waitForSelector('[data-topic="sensors/garden/soil"]');
  assert.equal(await page.textContent('[data-topic="sensors/garden/soil"]'), "42");
  await page.waitForSelector('tr[data-retained="sensors/garden/soil"]');
  await shot("topics");
  await page.click('tr[data-retained="sensors/garden/soil"] button.danger');
  await page.waitForSelector('tr[data-retained="sensors/garden/soil"]', { state: "detached" });

  step("overview");
  await page.click('a[data-page="overview"]');
  await page.waitForFunction(() => Number(document.getElementById("ov-clients").textContent) >= 2);
  await page.waitForTimeout(2500); // a few points on the chart
  await shot("overview");

  step("disconnect a client from the console");
  await page.click('a[data-page="clients"]');
  await page.waitForSelector('tr[data-client="pico-board-1"]');
  await page.click('button[data-disconnect="pico-board-1"]');
  const reason = await closed;
  assert.equal(reason, 0x98, "the client is told: Administrative action");
  await page.waitForSelector('tr[data-client="pico-board-1"]', { state: "detached" });

  step("log out");
  await page.click("#logout");
  await page.waitForSelector("#page-login:not([hidden])");
  assert.deepEqual(pageErrors, [], "the console's scripts raised errors");
  console.log("console browser test passed");
} finally {
  for (const c of children) c.kill();
  if (board) board.end(true);
  await browser.close();
}
