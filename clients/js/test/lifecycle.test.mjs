// The client's life around the happy path: which load balancer it asks
// after which refusal, close() at every stage, a socket that never welcomes,
// a disconnect without a close, a failing getRouteAuth, page events, and
// event subscriptions.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RtcClient } from "../dist/index.js";
import { FakeLb, FakeNode, start, until, welcome } from "./fakes.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const never = () => new Promise(() => {});
const bases = (lb) => lb.requests.map((r) => r.base.replace("http://", "").replace(".test", ""));

test("a 5xx without a wait or an answer that is not a route passes to the next load balancer; a 4xx does not", async () => {
  for (const [name, refusal] of [
    ["a proxy's 502", { status: 502, body: "<html>Bad Gateway</html>" }],
    ["a 503 without retry_after_ms", { status: 503, body: { error: "no_ready_node" } }],
    ["a captive portal's 200", { status: 200, body: "<html>log in</html>" }],
  ]) {
    const lb = new FakeLb((base) => (base === "http://lb-a.test" ? refusal : lb.route()));
    const { client, node } = start({ routeUrls: ["http://lb-a.test", "http://lb-b.test"], minReconnectDelayMs: 5_000 }, lb);
    (await node.next(0)).frame(welcome());
    await client.ready();
    assert.deepEqual(bases(lb), ["lb-a", "lb-b"], `${name}: B asked at once`);
    client.close();
  }
  const lb = new FakeLb((base) => (base === "http://lb-a.test" ? { status: 401, body: { error: "bad_token" } } : lb.route()));
  const { client, seen } = start({ routeUrls: ["http://lb-a.test", "http://lb-b.test"] }, lb);
  await until(() => lb.requests.length >= 3, "retries");
  assert.deepEqual(bases(lb).slice(0, 3), ["lb-a", "lb-a", "lb-a"], "a refusal of this client: the others would say the same");
  assert.equal(seen.errors[0].status, 401);
  client.close();
});

test("close() while a route request hangs aborts it: closed at once, sends fail, no error after", async () => {
  const lb = new FakeLb(never);
  const { client, seen } = start({ connectTimeoutMs: 60_000 }, lb);
  const sendFails = assert.rejects(client.send("u2", "x"), (e) => e.code === "closed");
  await until(() => lb.requests.length === 1, "the route request");
  client.close();
  await until(() => client.state === "closed", "closed", 500);
  assert.equal(lb.requests[0].signal.aborted, true, "the request was aborted");
  await sendFails;
  await sleep(20);
  assert.deepEqual(seen.errors, [], "close() is not an error");
});

test("close() while getRouteAuth hangs closes at once; a getRouteAuth that throws is auth_failed and retried", async () => {
  const lb = new FakeLb();
  const { client } = start({ getRouteAuth: never, connectTimeoutMs: 60_000 }, lb);
  await sleep(20);
  client.close();
  await until(() => client.state === "closed", "closed", 500);
  assert.equal(lb.requests.length, 0);

  let calls = 0;
  const failing = start({
    getRouteAuth: () => {
      calls += 1;
      if (calls === 1) throw new Error("token service down");
      return "Bearer t";
    },
  });
  (await failing.node.next(0)).frame(welcome());
  await failing.client.ready();
  assert.equal(failing.seen.errors[0].code, "auth_failed");
  assert.equal(failing.lb.requests[0].headers.authorization, "Bearer t");
  failing.client.close();
});

test("close() while the socket opens, or during a backoff, closes without an error or another attempt", async () => {
  const { client, node, seen } = start();
  const a = await node.next(0);
  client.close();
  await until(() => client.state === "closed", "closed");
  assert.equal(a.clientCloseCode, 1000);
  await sleep(20);
  assert.deepEqual(seen.errors, [], "no connect_failed after close()");

  const lb = new FakeLb(() => ({ status: 503, body: { error: "no_ready_node" } }));
  const backingOff = start({ minReconnectDelayMs: 10_000, random: () => 0.9 }, lb);
  await until(() => lb.requests.length === 1, "the first refusal");
  await sleep(20);
  backingOff.client.close();
  await until(() => backingOff.client.state === "closed", "closed", 500);
  await sleep(20);
  assert.equal(lb.requests.length, 1);
});

test("a socket that opens but never welcomes is given up after connectTimeoutMs", async () => {
  const { client, node, seen } = start({ connectTimeoutMs: 80 });
  const a = await node.next(0);
  const t0 = Date.now();
  const b = await node.next(1);
  assert.ok(Date.now() - t0 >= 60, `gave up after ${Date.now() - t0} ms`);
  assert.equal(a.clientCloseCode, 1000, "the silent socket was closed");
  assert.equal(seen.errors[0].code, "connect_failed");
  b.frame(welcome());
  await client.ready();
  client.close();
});

test("an error without a close (Node 20's WebSocket on a refused connection) fails the attempt at once", async () => {
  const { client, node, seen } = start({ connectTimeoutMs: 60_000 });
  const t0 = Date.now();
  (await node.next(0)).errorWithoutClose();
  const b = await node.next(1);
  assert.ok(Date.now() - t0 < 1_000, `tried again after ${Date.now() - t0} ms, not the 60 s connect timeout`);
  assert.equal(seen.errors[0].code, "connect_failed");
  // In a session, an error whose close never comes ends it after a second.
  b.frame(welcome());
  await client.ready();
  const t1 = Date.now();
  b.errorWithoutClose();
  await node.next(2);
  assert.ok(Date.now() - t1 >= 900 && Date.now() - t1 < 2_000, `the session ended ${Date.now() - t1} ms after the error`);
  client.close();
});

test("a disconnect frame not followed by the server's close: the client closes after 1 s and moves", async () => {
  const { client, node, seen } = start();
  const a = await node.next(0);
  a.frame(welcome());
  await client.ready();
  a.frame({ type: "disconnect", reason: "rebalance", reconnect: true, retry_after_ms: 0 });
  assert.equal(client.state, "connecting");
  const t0 = Date.now();
  await node.next(1);
  const waited = Date.now() - t0;
  assert.ok(waited >= 900 && waited < 2_000, `moved after ${waited} ms`);
  assert.equal(a.clientCloseCode, 1000);
  assert.ok(a.closed);
  assert.deepEqual(seen.states, ["connecting", "connected", "connecting"]);
  client.close();
});

test("state is disconnected before connect(); an unsubscribed handler hears nothing more", async () => {
  const node = new FakeNode();
  const lb = new FakeLb();
  const client = new RtcClient({ routeUrls: ["http://lb-a.test"], user: "u1", WebSocket: node.WebSocket, fetch: lb.fetch });
  assert.equal(client.state, "disconnected");
  assert.equal(client.session, null);
  const heard = [];
  const off = client.on("state", (s) => heard.push(s));
  client.connect();
  (await node.next(0)).frame(welcome());
  await client.ready();
  off();
  client.close();
  await until(() => client.state === "closed", "closed");
  assert.deepEqual(heard, ["connecting", "connected"]);
});

test("a page shown again or a network back cuts a backoff; a hidden page or a server's exact wait does not", async () => {
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = "hidden";
  Object.assign(globalThis, { document: doc, addEventListener: win.addEventListener.bind(win), removeEventListener: win.removeEventListener.bind(win) });
  /** A client whose next wait is seconds long, and a load balancer that now answers. */
  const backingOff = async () => {
    let refusing = true;
    const lb = new FakeLb(() => (refusing ? { status: 503, body: { error: "no_ready_node" } } : lb.route()));
    const started = start({ minReconnectDelayMs: 100, maxReconnectDelayMs: 60_000, random: () => 0.999 }, lb);
    await until(() => lb.requests.length >= 3, "backing off");
    refusing = false;
    return started;
  };
  /** How long after `event` the client connected (a random part of the 100 ms minimum). */
  const wokenBy = async ({ client, node }, target, event) => {
    const t0 = Date.now();
    target.dispatchEvent(new Event(event));
    await node.next(0);
    const took = Date.now() - t0;
    client.close();
    await until(() => client.state === "closed", "closed");
    return took;
  };
  try {
    const hidden = await backingOff();
    const asked = hidden.lb.requests.length;
    doc.dispatchEvent(new Event("visibilitychange"));
    await sleep(150);
    assert.equal(hidden.lb.requests.length, asked, "hidden: the backoff goes on");
    doc.visibilityState = "visible";
    const shown = await wokenBy(hidden, doc, "visibilitychange");
    assert.ok(shown < 150, `shown again: went ${shown} ms later`);
    const online = await wokenBy(await backingOff(), win, "online");
    assert.ok(online < 150, `network back: went ${online} ms later`);

    // A server said how long: the page coming back does not cut it.
    const told = start({ minReconnectDelayMs: 5, maxReconnectDelayMs: 5_000 });
    const a = await told.node.next(0);
    a.frame(welcome());
    await told.client.ready();
    a.frame({ type: "disconnect", reason: "drain", reconnect: true, retry_after_ms: 400 });
    a.serverClose(4002);
    const t1 = Date.now();
    await sleep(50);
    doc.dispatchEvent(new Event("visibilitychange"));
    await told.node.next(1);
    assert.ok(Date.now() - t1 >= 380, `kept the server's 400 ms: ${Date.now() - t1} ms`);
    told.client.close();
  } finally {
    delete globalThis.document;
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});
