// RtcClient against a fake load balancer and a fake socket node: every
// session script of rtc-core's vectors acted on by the real client, then
// routing, waits, terminal codes, sends and their retries, states, storage.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { RtcClient, RtcError } from "../dist/index.js";
import { FakeLb, FakeNode, MemoryStorage, start, until, welcome } from "./fakes.mjs";

const vectors = JSON.parse(readFileSync(new URL("../../../core/protocol-vectors.json", import.meta.url), "utf8"));

test("every session script is acted on as specified", async () => {
  assert.ok(vectors.sessions.length >= 7);
  for (const s of vectors.sessions) {
    const storage = new MemoryStorage();
    if (s.last_id) storage.setItem("rtc-client:u1:last_id", s.last_id);
    if (s.live_from) storage.setItem("rtc-client:u1:live_from", s.live_from);
    const told = s.reconnect_after_ms !== undefined;
    // Backing off instead of following retry_after_ms would take 5 s or more.
    const { client, node, seen } = start({ storage, minReconnectDelayMs: told ? 5_000 : 5, maxReconnectDelayMs: 10_000 });
    const first = await node.next(0);
    assert.equal(first.resumeQuery(), s.connect_query, `${s.name}: connect query`);
    assert.equal(first.query("token"), "tok-1", `${s.name}: the route's token`);
    let toldAt = null;
    for (const text of s.frames) {
      if (text.includes('"type":"disconnect"')) toldAt = Date.now();
      first.frame(text);
    }
    first.serverClose(s.close_code ?? 1000);
    // The reconnect (after the server's wait, or a 5 ms backoff after a
    // plain close) resumes where the script says.
    const second = await node.next(1);
    if (told) {
      const waited = Date.now() - toldAt;
      assert.ok(waited >= s.reconnect_after_ms - 5 && waited < 2_000, `${s.name}: waited ${waited} ms`);
    }
    const lastAfter = s.last_id_after ? `last_id=${s.last_id_after}` : undefined;
    assert.equal(second.resumeQuery(), s.next_connect_query ?? lastAfter, `${s.name}: next connect query`);
    assert.equal(second.query("token"), "tok-2", `${s.name}: a new token for every connect`);
    assert.deepEqual(seen.messages.map((m) => m.id), s.delivered, `${s.name}: delivered`);
    assert.deepEqual(seen.recovered, s.events, `${s.name}: recovered events`);
    assert.equal(client.lastId, s.last_id_after, `${s.name}: last id`);
    // A resume that could not recover gives up the stored last id.
    const gaveUp = s.events.some((e) => !e.recovered);
    assert.equal(storage.getItem("rtc-client:u1:last_id"), s.last_id_after ?? (gaveUp ? "" : s.last_id), `${s.name}: stored`);
    client.close();
    await until(() => client.state === "closed", "closed");
  }
});

test("states go connecting, connected, connecting, connected, closed; ready() follows", async () => {
  const { client, node, seen } = start();
  assert.equal(client.state, "connecting");
  const ready = client.ready();
  (await node.next(0)).frame(welcome());
  await ready;
  assert.equal(client.state, "connected");
  assert.deepEqual(client.session, { nodeId: "socket-0", partition: 3, epoch: 8 });
  node.sockets[0].frame({ type: "disconnect", reason: "drain", reconnect: true, retry_after_ms: 10 });
  assert.equal(client.state, "connecting", "a disconnect frame moves to connecting at once");
  node.sockets[0].serverClose(4002);
  (await node.next(1)).frame(welcome({ node_id: "socket-1" }));
  await client.ready();
  assert.equal(client.session.nodeId, "socket-1");
  assert.equal(client.reconnects, 1);
  client.close();
  await until(() => client.state === "closed", "closed");
  assert.deepEqual(seen.states, ["connecting", "connected", "connecting", "connected", "closed"]);
  assert.equal(node.sockets[1].clientCloseCode, 1000);
  await assert.rejects(client.ready(), RtcError);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(node.sockets.length, 2, "no reconnect after close()");
});

test("terminal close codes and disconnect{reconnect:false} close the client", async () => {
  for (const end of [{ code: 4500 }, { code: 4999 }, { code: 3000 }, { disconnect: true }]) {
    const { client, node } = start();
    const s = await node.next(0);
    s.frame(welcome());
    if (end.disconnect) s.frame({ type: "disconnect", reason: "shutdown", reconnect: false, retry_after_ms: 0 });
    s.serverClose(end.code ?? 4003);
    await until(() => client.state === "closed", `closed after ${JSON.stringify(end)}`);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(node.sockets.length, 1, `no reconnect after ${JSON.stringify(end)}`);
  }
  // And a reconnectable code does reconnect.
  const { client, node } = start();
  (await node.next(0)).frame(welcome());
  node.sockets[0].serverClose(4499);
  await node.next(1);
  client.close();
});

test("load balancers are tried in turn; one that answers is asked again", async () => {
  const lb = new FakeLb((base) => {
    if (base === "http://lb-a.test") throw new TypeError("fetch failed");
    return lb.route();
  });
  const { client, node, seen } = start({ routeUrls: ["http://lb-a.test/", "http://lb-b.test"] }, lb);
  (await node.next(0)).frame(welcome());
  await client.ready();
  assert.deepEqual(lb.requests.map((r) => r.base), ["http://lb-a.test", "http://lb-b.test"]);
  assert.equal(lb.requests[1].path, "/v1/route");
  assert.equal(seen.errors[0].code, "route_unreachable");
  node.sockets[0].serverClose(1001);
  await node.next(1);
  assert.equal(lb.requests.at(-1).base, "http://lb-b.test", "stays with the one that worked");
  client.close();
});

test("a route answer's retry_after_ms is followed exactly; Retry-After bounds the backoff", async () => {
  let answers = [{ status: 503, body: { error: "owner_silent", retry_after_ms: 40 } }];
  const lb = new FakeLb(() => answers.shift() ?? lb.route());
  const asked = () => lb.requests.length;
  const { client, node, seen } = start({ minReconnectDelayMs: 5_000, maxReconnectDelayMs: 10_000 }, lb);
  await until(() => asked() === 1, "the first route");
  const t0 = Date.now();
  await node.next(0);
  const waited = Date.now() - t0;
  assert.ok(waited >= 30 && waited < 1_000, `followed 40 ms, not the 5 s backoff: ${waited} ms`);
  assert.equal(seen.errors[0].code, "route_refused");
  assert.equal(seen.errors[0].status, 503);
  client.close();

  // Retry-After (seconds) alone: a lower bound on a backoff shorter than it.
  answers = [{ status: 429, body: { error: "rate_limited" }, headers: { "retry-after": "1" } }];
  const lb2 = new FakeLb(() => answers.shift() ?? lb2.route());
  const { client: c2, node: n2 } = start({ random: () => 0 }, lb2);
  await until(() => lb2.requests.length === 1, "the first route");
  const t1 = Date.now();
  await n2.next(0);
  assert.ok(Date.now() - t1 >= 990, `waited ${Date.now() - t1} ms, Retry-After says 1 s`);
  c2.close();
});

test("sends resolve on their ack, fail on an error naming them, and are retried after a lost session", async () => {
  const { client, node } = start();
  const a = await node.next(0);
  a.frame(welcome());
  await client.ready();
  const first = client.send("u2", "hello");
  const second = client.send("u2", "again");
  const refused = client.send("u2", "too fast");
  await until(() => a.sent.length === 3, "three send frames");
  const [f1, f2, f3] = a.sent;
  assert.deepEqual({ ...f1, client_msg_id: undefined }, { type: "send", to: "u2", body: "hello", client_msg_id: undefined });
  assert.match(f1.client_msg_id, /^[0-9a-f]{12}-1$/);
  assert.notEqual(f1.client_msg_id, f2.client_msg_id);
  a.frame({ type: "ack", client_msg_id: f1.client_msg_id, id: "9:1" });
  assert.equal(await first, "9:1");
  a.frame({ type: "error", code: "send_failed", message: "the log refused it", client_msg_id: f3.client_msg_id });
  await assert.rejects(refused, (e) => e.code === "send_failed" && e.clientMsgId === f3.client_msg_id);
  // The session ends before `second` is acknowledged: it goes again, same id.
  a.serverClose(1006);
  const queued = client.send("u3", "while away");
  const b = await node.next(1);
  b.frame(welcome());
  await until(() => b.sent.length === 2, "the retried and the queued send");
  assert.deepEqual(b.sent.map((f) => f.client_msg_id), [f2.client_msg_id, `${f1.client_msg_id.split("-")[0]}-4`]);
  b.frame({ type: "ack", client_msg_id: f2.client_msg_id, id: "9:7" });
  b.frame({ type: "ack", client_msg_id: b.sent[1].client_msg_id, id: "4:2" });
  assert.equal(await second, "9:7");
  assert.equal(await queued, "4:2");
  // `second`, and `queued`, written to the closing socket before its close event.
  assert.equal(client.resends, 2);
  // A send still waiting fails when the client closes.
  const last = client.send("u2", "bye");
  client.close();
  await assert.rejects(last, (e) => e.code === "closed");
  await assert.rejects(client.send("u2", "after"), (e) => e.code === "closed");
});

test("a send not acknowledged in time fails", async () => {
  const { client, node } = start({ sendTimeoutMs: 30 });
  (await node.next(0)).frame(welcome());
  await client.ready();
  await assert.rejects(client.send("u2", "x"), (e) => e.code === "send_timeout");
  client.close();
});

test("the second copy of a retried send is not delivered, across a reload too", async () => {
  const storage = new MemoryStorage();
  const msg = (id, c) => ({ type: "message", id, from: "u2", body: "hi", ts_ms: 1, client_msg_id: c });
  const first = start({ storage });
  const a = await first.node.next(0);
  a.frame(welcome());
  a.frame(msg("3:5", "k-1"));
  a.frame(msg("3:6", "k-1"));
  assert.deepEqual(first.seen.messages.map((m) => m.id), ["3:5"]);
  assert.equal(first.client.duplicatesDropped, 1);
  first.client.close();
  // The page reloads; the retry's copy arrives in the replay.
  const second = start({ storage });
  const b = await second.node.next(0);
  assert.equal(b.resumeQuery(), "last_id=3:6");
  b.frame(welcome());
  b.frame(msg("3:7", "k-1"));
  b.frame(msg("3:8", "k-2"));
  assert.deepEqual(second.seen.messages.map((m) => m.id), ["3:8"]);
  second.client.close();
});

test("a first connect that is moved before any message resumes from its welcome after a reload", async () => {
  const storage = new MemoryStorage();
  const first = start({ storage });
  (await first.node.next(0)).frame(welcome({ live_from: "3:40" }));
  first.client.close();
  const second = start({ storage });
  assert.equal((await second.node.next(0)).resumeQuery(), "from_id=3:40");
  second.client.close();
});

test("getRouteAuth is asked for every route; a socket that fails before its welcome backs off", async () => {
  let n = 0;
  const lb = new FakeLb();
  const { client, node, seen } = start({ getRouteAuth: async () => `Bearer t${++n}` }, lb);
  (await node.next(0)).refuse();
  (await node.next(1)).frame(welcome());
  await client.ready();
  assert.deepEqual(lb.requests.map((r) => r.headers.authorization), ["Bearer t1", "Bearer t2"]);
  assert.equal(seen.errors[0].code, "connect_failed");
  assert.deepEqual([node.sockets[0].query("token"), node.sockets[1].query("token")], ["tok-1", "tok-2"]);
  client.close();
});

test("bad options are refused", () => {
  assert.throws(() => new RtcClient({ routeUrls: [], user: "u1", WebSocket: class {} }), /routeUrls/);
  assert.throws(() => new RtcClient({ routeUrls: ["ws://x"], user: "u1", WebSocket: class {} }), /http/);
  assert.throws(() => new RtcClient({ routeUrls: ["http://x"], user: "", WebSocket: class {} }), /user/);
});
