// How sends go out: once per session, paced under the node's burst, retried
// under their id when the node says rate_limited, timed from their first
// write; and how tabs sharing storage keep the resume point.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeLb, MemoryStorage, start, until, welcome } from "./fakes.mjs";

const ids = (socket) => socket.sent.map((f) => f.client_msg_id);
const ack = (socket, frame, n) => socket.frame({ type: "ack", client_msg_id: frame.client_msg_id, id: `4:${n}` });

test("a send made from the connected handler, and one queued before, each go out once", async () => {
  const { client, node } = start();
  const queued = client.send("u2", "queued");
  let fromHandler = null;
  client.on("state", (s) => {
    if (s === "connected" && !fromHandler) fromHandler = client.send("u2", "from the handler");
  });
  const a = await node.next(0);
  a.frame(welcome());
  await until(() => a.sent.length >= 2, "two sends");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(a.sent.length, 2, `written: ${JSON.stringify(ids(a))}`);
  assert.equal(new Set(ids(a)).size, 2);
  a.sent.forEach((f, i) => ack(a, f, i));
  assert.equal(await queued, "4:0");
  assert.equal(await fromHandler, "4:1");
  client.close();
});

test("sends queued in an outage go out 32 unacknowledged at a time, each once", async () => {
  const { client, node } = start();
  const sends = Array.from({ length: 150 }, (_, i) => client.send("u2", `m${i}`));
  const a = await node.next(0);
  a.frame(welcome());
  await until(() => a.sent.length === 32, "the first window");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(a.sent.length, 32, "no more until acks come");
  // The server acknowledges as it goes; the window slides.
  for (let n = 0; n < 150; n++) {
    await until(() => a.sent.length > n, `send #${n + 1}`);
    ack(a, a.sent[n], n);
    assert.ok(a.sent.length - (n + 1) <= 32, `${a.sent.length - n - 1} unacknowledged`);
  }
  assert.equal(new Set(ids(a)).size, 150, "each written once");
  assert.deepEqual(await Promise.all(sends), Array.from({ length: 150 }, (_, n) => `4:${n}`));
  client.close();
});

test("a send the node refused for its rate goes again under its id, after a pause", async () => {
  const { client, node } = start();
  const a = await node.next(0);
  a.frame(welcome());
  await client.ready();
  const sent = client.send("u2", "x");
  await until(() => a.sent.length === 1, "the send");
  const refusedAt = Date.now();
  a.frame({ type: "error", code: "rate_limited", message: "slow down", client_msg_id: a.sent[0].client_msg_id });
  const later = client.send("u2", "y");
  await until(() => a.sent.length === 3, "the retry and the next send", 3_000);
  assert.ok(Date.now() - refusedAt >= 900, `written again after ${Date.now() - refusedAt} ms`);
  assert.deepEqual(ids(a), [a.sent[0].client_msg_id, a.sent[0].client_msg_id, a.sent[2].client_msg_id], "oldest first, same id");
  ack(a, a.sent[1], 1);
  ack(a, a.sent[2], 2);
  assert.equal(await sent, "4:1");
  assert.equal(await later, "4:2");
  client.close();
});

test("the send timeout counts from the first write, and a timed-out send can go again under its id", async () => {
  let refusals = 1;
  const lb = new FakeLb(() => (refusals-- > 0 ? { status: 503, body: { error: "owner_silent", retry_after_ms: 150 } } : lb.route()));
  const { client, node } = start({ sendTimeoutMs: 60 }, lb);
  const sent = client.send("u2", "x");
  let settled = null;
  sent.then(
    () => (settled = "resolved"),
    (e) => (settled = e),
  );
  const a = await node.next(0); // 150 ms later: longer than the timeout
  a.frame(welcome());
  await until(() => a.sent.length === 1, "the send");
  assert.equal(settled, null, "not timed out while it could not go out");
  await until(() => settled, "the timeout");
  assert.equal(settled.code, "send_timeout");
  const id = settled.clientMsgId;
  assert.equal(id, a.sent[0].client_msg_id);
  const again = client.send("u2", "x", { clientMsgId: id });
  await until(() => a.sent.length === 2, "the resend");
  assert.equal(a.sent[1].client_msg_id, id, "the recipient drops a second copy under the same id");
  await assert.rejects(client.send("u2", "y", { clientMsgId: id }), (e) => e.code === "duplicate_send");
  ack(a, a.sent[1], 1);
  assert.equal(await again, "4:1");
  client.close();
});

test("a tab behind does not move the stored last id back", async () => {
  const storage = new MemoryStorage();
  storage.setItem("rtc-client:u1:last_id", "3:5");
  const { client, node } = start({ storage });
  const a = await node.next(0);
  assert.equal(a.resumeQuery(), "last_id=3:5");
  // Another tab of the same user delivers further and stores it.
  storage.setItem("rtc-client:u1:last_id", "3:10");
  a.frame(welcome());
  a.frame({ type: "message", id: "3:7", from: "u2", body: "b", ts_ms: 1 });
  assert.equal(client.lastId, "3:7");
  assert.equal(storage.getItem("rtc-client:u1:last_id"), "3:10", "the newer id stays");
  a.frame({ type: "message", id: "3:11", from: "u2", body: "c", ts_ms: 2 });
  assert.equal(storage.getItem("rtc-client:u1:last_id"), "3:11");
  client.close();
});
