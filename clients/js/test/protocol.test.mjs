// The protocol test vectors of rtc-core, run against this client's
// parsing, dedupe and resume point; plus the backoff's bounds and spread.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  Backoff, Cursor, formatMessageId, RecentSends, parseMessageId, parseServerFrame, reconnectsAfter, renderClientFrame,
} from "../dist/index.js";

const vectors = JSON.parse(readFileSync(new URL("../../../core/protocol-vectors.json", import.meta.url), "utf8"));

test("the vectors are the version this client speaks", () => {
  assert.equal(vectors.v, 1);
});

test("every server frame parses to its meaning", () => {
  assert.ok(vectors.server_frames.length >= 8);
  for (const { name, text, meaning } of vectors.server_frames) {
    // A message's meaning also names its id's parts.
    const { partition, offset, ...frame } = meaning;
    if (meaning.type === "message") {
      assert.deepEqual(parseMessageId(meaning.id), { partition, offset }, name);
      assert.deepEqual(parseServerFrame(text), frame, name);
    } else {
      assert.deepEqual(parseServerFrame(text), meaning, name);
    }
  }
  for (const bad of ["{", "[]", "null", '{"type":"welcome"}', '{"type":"nope"}', '{"type":"message","id":1}']) {
    assert.equal(parseServerFrame(bad), null, bad);
  }
});

test("client frames render as the server parses them", () => {
  for (const { name, frame } of vectors.client_frames) {
    assert.deepEqual(JSON.parse(renderClientFrame(frame)), frame, name);
  }
});

test("message ids parse, format and refuse what is not one", () => {
  for (const v of vectors.message_ids) {
    const id = parseMessageId(v.id);
    if (v.valid === false) {
      assert.equal(id, null, v.id);
    } else {
      assert.deepEqual(id, { partition: v.partition, offset: v.offset }, v.id);
      assert.equal(formatMessageId(id), v.id);
    }
  }
});

test("close codes say whether to reconnect", () => {
  for (const { code, reconnect } of vectors.close_codes) {
    assert.equal(reconnectsAfter(code), reconnect, String(code));
  }
});

test("dedupe delivers only ids after the last one", () => {
  for (const v of vectors.dedupe) {
    const cursor = new Cursor(v.last_id === null ? null : parseMessageId(v.last_id));
    assert.equal(cursor.accept(parseMessageId(v.id)), v.deliver, JSON.stringify(v));
  }
});

test("session scripts: delivered ids, recovered events and resume points", () => {
  for (const s of vectors.sessions) {
    const id = (text) => (text ? parseMessageId(text) : null);
    const cursor = new Cursor(id(s.last_id), id(s.live_from));
    assert.equal(cursor.query(), s.connect_query ? `&${s.connect_query}` : "", `${s.name}: connect query`);
    const recent = new RecentSends();
    const delivered = [];
    const events = [];
    let reconnectAfter = null;
    for (const text of s.frames) {
      const frame = parseServerFrame(text);
      assert.ok(frame, `${s.name}: ${text}`);
      if (frame.type === "welcome") cursor.welcomed(id(frame.live_from));
      if (frame.type === "message" && cursor.accept(parseMessageId(frame.id))) {
        if (recent.firstCopy(frame.from, frame.client_msg_id)) delivered.push(frame.id);
      }
      if (frame.type === "resumed") {
        cursor.resumed(frame.recovered);
        events.push({ recovered: frame.recovered, reason: frame.reason ?? null });
      }
      if (frame.type === "disconnect") cursor.disconnected(id(frame.through));
      if (frame.type === "disconnect" && frame.reconnect) reconnectAfter = frame.retry_after_ms;
    }
    assert.deepEqual(delivered, s.delivered, `${s.name}: delivered`);
    assert.deepEqual(events, s.events, `${s.name}: events`);
    const last = cursor.lastId === null ? null : formatMessageId(cursor.lastId);
    assert.equal(last, s.last_id_after, `${s.name}: last id after`);
    if (s.reconnect_after_ms !== undefined) assert.equal(reconnectAfter, s.reconnect_after_ms, `${s.name}: wait`);
    if (s.close_code !== undefined) assert.ok(reconnectsAfter(s.close_code), `${s.name}: close code`);
    if (s.next_connect_query !== undefined) {
      assert.equal(cursor.query(), `&${s.next_connect_query}`, `${s.name}: next connect query`);
    }
  }
});

test("a move's through is the resume point when further on, and dropped once stale", () => {
  const id = (text) => parseMessageId(text);
  const c = new Cursor(id("3:10"));
  c.disconnected(id("3:11"));
  assert.equal(c.query(), "&last_id=3:10", "right after the last id: the same point");
  c.disconnected(id("3:500"));
  assert.equal(c.query(), "&from_id=3:500");
  c.disconnected(null);
  assert.equal(c.query(), "&from_id=3:500", "a close without through keeps it");
  // The user moved to another partition since: the old through is stale.
  c.welcomed(id("5:100"));
  c.resumed(false);
  assert.ok(c.accept(id("5:120")));
  assert.equal(c.query(), "&last_id=5:120", "not from_id=3:500, refused again and again");
  const fresh = new Cursor();
  fresh.disconnected(id("5:2"));
  assert.equal(fresh.query(), "&from_id=5:2");
});

test("recent sends forget the oldest pair beyond their bound", () => {
  const recent = new RecentSends([], 3);
  for (const c of ["a", "b", "c"]) assert.ok(recent.firstCopy("u2", c));
  assert.equal(recent.firstCopy("u2", "a"), false);
  assert.ok(recent.firstCopy("u3", "a"), "another sender's id is another send");
  assert.ok(recent.firstCopy("u2", "a"), "a, the oldest, was forgotten");
  assert.ok(recent.firstCopy(null, "a") && recent.firstCopy("u2", undefined), "no pair, no dedupe");
  assert.deepEqual(recent.newest(2), ["u3\na", "u2\na"]);
  assert.equal(new RecentSends(recent.newest(2)).firstCopy("u2", "a"), false, "restored from storage");
});

test("backoff stays within its bounds and its cap", () => {
  const b = new Backoff(500, 20_000);
  // Step s: [min, min + min(max, min * 2^s)], capped at max.
  for (const [step, high] of [[0, 1_000], [1, 1_500], [2, 2_500], [3, 4_500], [5, 16_500], [6, 20_000], [40, 20_000]]) {
    assert.equal(b.delay(step, 0), 500, `step ${step} low end`);
    const top = b.delay(step, 0.999_999);
    assert.ok(top <= high && top + 20 >= high, `step ${step}: ${top} vs ${high}`);
  }
  assert.equal(b.delay(3, Number.NaN), 500, "NaN counts as 0");
  assert.equal(new Backoff(500, 100).maxMs, 500, "max below min is raised");
});

test("backoff spreads retries over the whole interval (full jitter)", () => {
  const b = new Backoff(100, 100_000);
  const delays = Array.from({ length: 2_000 }, () => b.delay(4, Math.random()));
  const buckets = new Array(8).fill(0);
  for (const d of delays) buckets[Math.min(7, Math.floor(((d - 100) / 1_600) * 8))] += 1;
  // Uniform over [100, 1700): each eighth holds about 250; none is empty or
  // holds more than twice its share.
  for (const n of buckets) assert.ok(n > 100 && n < 500, JSON.stringify(buckets));
});

test("backoff steps grow until a session opens", () => {
  const b = new Backoff(100, 1_000);
  assert.equal(b.next(0), 100);
  assert.ok(b.next(0.999_999) > 299, "second failure: up to 300");
  assert.equal(b.step, 2);
  b.reset();
  assert.equal(b.step, 0);
  assert.ok(b.next(0.999_999) <= 200);
});
