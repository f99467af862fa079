// Producer for rtc's comparison benchmark (not part of the product): the
// Socket.IO-world equivalent of producing to Kafka, run as its own process.
//
//   --target socketio : @socket.io/redis-emitter, .to("user:<user>").emit("m", {id, ts, body})
//   --target ws       : PUBLISH <channel> {"user":"…","id":N,"ts":MS,"body":"…"}
//
// Paced by ticks: every --tick-ms it sends the messages due so far,
// floor(elapsed_s * rate) capped at rate * secs, each to a uniformly random
// user. Every publish promise is tracked; failures are counted.
//
// stdout carries exactly one line at the end:
// {"event":"report","target":"…","sent":N,"failed":F,"elapsed_s":X,"rate_achieved":R}

import { Emitter } from "@socket.io/redis-emitter";
import { parseArgs, fail as failWith, logger, connectRedis } from "./common.mjs";

const FLAGS = {
  redis: "redis://127.0.0.1:6379",
  target: "socketio",
  rate: "1000",
  secs: "10",
  users: "1000",
  "first-user": "0",
  "user-prefix": "user-",
  "body-bytes": "64",
  "tick-ms": "10",
  channel: "rtc-peers:messages",
};

const PROGRAM = "emit";
const fail = (msg) => failWith(PROGRAM, msg);
const log = logger(PROGRAM);

function numFlag(opts, name, { min, integer }) {
  const v = Number(opts[name]);
  if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    fail(`--${name} must be ${integer ? "an integer" : "a number"} >= ${min}, got ${JSON.stringify(opts[name])}`);
  }
  return v;
}

const opts = parseArgs(PROGRAM, process.argv.slice(2), FLAGS);
const target = opts.target;
if (target !== "socketio" && target !== "ws") fail(`--target must be socketio or ws, got ${JSON.stringify(target)}`);
const rate = numFlag(opts, "rate", { min: 0, integer: false });
const secs = numFlag(opts, "secs", { min: 0, integer: false });
const users = numFlag(opts, "users", { min: 1, integer: true });
const firstUser = numFlag(opts, "first-user", { min: 0, integer: true });
const bodyBytes = numFlag(opts, "body-bytes", { min: 0, integer: true });
const tickMs = numFlag(opts, "tick-ms", { min: 1, integer: false });
const prefix = opts["user-prefix"];
const channel = opts.channel;

const total = Math.floor(rate * secs);
const giveUpMs = (2 * secs + 10) * 1000;

// Gives up (exit 2) if Redis cannot be reached within 5 s.
const [client] = await connectRedis(PROGRAM, opts.redis, ["redis client"]);

// Accounting of publish promises. `noReceiver` counts PUBLISHes that reached no
// subscriber at all (no server listening): a diagnostic, not a failure.
let sent = 0;
let failed = 0;
let noReceiver = 0;
let inFlight = 0;
let firstError = null;
let onDrained = null;

function track(promise) {
  inFlight++;
  promise.then(
    (receivers) => {
      if (receivers === 0) noReceiver++;
    },
    (err) => {
      failed++;
      if (firstError === null) firstError = err;
    },
  ).finally(() => {
    inFlight--;
    if (inFlight === 0 && onDrained) onDrained();
  });
}

// The emitter calls publish() and drops its promise; this thin view of the same
// client hands every promise to track() so none is lost.
const emitter = new Emitter({
  publish: (ch, msg) => {
    const p = client.publish(ch, msg);
    track(p);
    return p;
  },
});

function body(id) {
  const head = id + ":";
  return head.length >= bodyBytes ? head : head + "x".repeat(bodyBytes - head.length);
}

function sendOne() {
  const id = sent;
  const user = prefix + (firstUser + Math.floor(Math.random() * users));
  const ts = Date.now();
  const b = body(id);
  sent++;
  try {
    if (target === "socketio") {
      emitter.to("user:" + user).emit("m", { id, ts, body: b });
    } else {
      track(client.publish(channel, JSON.stringify({ user, id, ts, body: b })));
    }
  } catch (err) {
    // Synchronous throw (e.g. client closed): counted as a failure.
    failed++;
    if (firstError === null) firstError = err;
  }
}

let stopRequested = null;
process.on("SIGTERM", () => (stopRequested = "SIGTERM"));
process.on("SIGINT", () => (stopRequested = "SIGINT"));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const t0 = performance.now();
let tSendEnd = t0;
let gaveUp = false;
while (sent < total) {
  const elapsedMs = performance.now() - t0;
  if (elapsedMs > giveUpMs) {
    gaveUp = true;
    break;
  }
  if (stopRequested) break;
  const due = Math.min(total, Math.floor((elapsedMs / 1000) * rate));
  while (sent < due) sendOne();
  tSendEnd = performance.now();
  if (sent >= total) break;
  await sleep(tickMs);
}

// Wait for every publish to be acknowledged (or to fail), within the give-up budget.
if (inFlight > 0) {
  const budget = Math.max(1000, giveUpMs - (performance.now() - t0));
  const drained = await Promise.race([
    new Promise((resolve) => (onDrained = () => resolve(true))),
    sleep(budget).then(() => false),
  ]);
  if (!drained) {
    log(`${inFlight} publishes still unacknowledged after the give-up time; counted as failed`);
    failed += inFlight;
  }
}

const elapsedS = (tSendEnd - t0) / 1000;
if (gaveUp) log(`gave up after ${(giveUpMs / 1000).toFixed(1)} s with ${sent}/${total} sent`);
if (stopRequested) log(`${stopRequested}: stopped with ${sent}/${total} sent`);
if (firstError) log(`first publish error: ${firstError.message}`);
if (noReceiver > 0) log(`${noReceiver} publishes reached no subscriber (is the server up and on the same Redis?)`);

process.stdout.write(
  JSON.stringify({
    event: "report",
    target,
    sent,
    failed,
    elapsed_s: Number(elapsedS.toFixed(3)),
    rate_achieved: Number((elapsedS > 0 ? sent / elapsedS : 0).toFixed(1)),
  }) + "\n",
);

await client.quit().catch(() => {});
process.exit(stopRequested || gaveUp ? 1 : 0);
