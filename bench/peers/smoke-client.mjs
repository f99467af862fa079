// Smoke-test client for the peer servers (not part of the product).
//
// Opens one WebSocket per user (with `ws`; Engine.IO v4 / Socket.IO v5 spoken by
// hand for --target socketio), prints {"event":"ready",...} on stdout once every
// user is connected, then collects messages until --expect distinct ids have
// arrived (or --timeout-secs), and checks each id 0..expect-1 arrived exactly
// once, at the right user. Ends with one {"event":"result",...} line on stdout;
// exit 0 when everything checks out.
//
// The right user: for ws the message names its user. For socketio it does not,
// so with --redis the client also taps the emitter's Redis channel
// (socket.io#/#user:<user>#) and learns which room each publish went to; the
// producer publishes in id order on one connection, so the k-th publish is id k
// (cross-checked against the "<id>:" body prefix found in the packed payload).
//
// Also checks that a connection without a user is turned away.

import { WebSocket } from "ws";
import { createClient } from "redis";
import { parseArgs, fail as failWith, logger } from "./common.mjs";

const FLAGS = {
  target: "socketio",
  url: "ws://127.0.0.1:3000",
  users: "50",
  "first-user": "0",
  "user-prefix": "user-",
  expect: "0",
  "timeout-secs": "30",
  redis: "",
  "print-frames": "3",
};

const PROGRAM = "smoke-client";
const fail = (msg) => failWith(PROGRAM, msg);
const log = logger(PROGRAM, { pid: false });

const opts = parseArgs(PROGRAM, process.argv.slice(2), FLAGS);
const target = opts.target;
if (target !== "socketio" && target !== "ws") fail("--target must be socketio or ws");
const base = opts.url.replace(/\/+$/, "");
const nUsers = Number(opts.users);
const firstUser = Number(opts["first-user"]);
const prefix = opts["user-prefix"];
const expect = Number(opts.expect);
const timeoutMs = Number(opts["timeout-secs"]) * 1000;
let framesToPrint = Number(opts["print-frames"]);

function urlFor(user) {
  const q = user === null ? "" : "user=" + encodeURIComponent(user);
  return target === "socketio"
    ? `${base}/socket.io/?EIO=4&transport=websocket${q ? "&" + q : ""}`
    : `${base}/${q ? "?" + q : ""}`;
}

function showFrame(user, data) {
  if (framesToPrint > 0) {
    framesToPrint--;
    log(`frame for ${user}: ${data}`);
  }
}

// ---- observations -----------------------------------------------------------
const received = new Map(); // id -> [users...]
const problems = [];
let frames = 0;
let pingsAnswered = 0;
let wrongUserWs = 0; // ws target: message names another user
let onAll = null;

function record(user, id, raw) {
  if (!Number.isInteger(id)) {
    problems.push(`${user}: message without an integer id: ${raw.slice(0, 200)}`);
    return;
  }
  const list = received.get(id);
  if (list) list.push(user);
  else received.set(id, [user]);
  if (expect > 0 && received.size >= expect && onAll) onAll();
}

// ---- one connection ---------------------------------------------------------
// Resolves once the user is connected (socketio: after the server's "40{...}").
function connect(user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(urlFor(user), { perMessageDeflate: false });
    const info = { user, ws, open: null, sid: null };
    let ready = false;
    ws.on("error", (err) => (ready ? problems.push(`${user}: ${err.message}`) : reject(err)));
    ws.on("close", (code) => {
      if (!ready) reject(new Error(`${user}: closed before ready (${code})`));
    });
    if (target === "ws") {
      ws.on("open", () => {
        ready = true;
        resolve(info);
      });
      ws.on("message", (data, isBinary) => {
        frames++;
        const text = data.toString();
        showFrame(user, text);
        if (isBinary) problems.push(`${user}: binary frame`);
        let msg;
        try {
          msg = JSON.parse(text);
        } catch {
          problems.push(`${user}: not JSON: ${text.slice(0, 200)}`);
          return;
        }
        if (msg.user !== user) {
          wrongUserWs++;
          problems.push(`id ${msg.id}: for ${msg.user} but arrived at ${user}`);
        }
        record(user, msg.id, text);
      });
      return;
    }
    // Engine.IO v4 over websocket: one packet per frame, type digit first.
    ws.on("message", (data) => {
      frames++;
      const text = data.toString();
      switch (text[0]) {
        case "0": // engine.io open
          info.open = JSON.parse(text.slice(1));
          if (user === prefix + firstUser) log(`open packet for ${user}: ${text}`);
          ws.send("40"); // socket.io CONNECT to the main namespace
          return;
        case "2": // engine.io ping
          pingsAnswered++;
          ws.send("3");
          return;
        case "1": // engine.io close
          return;
        case "4": {
          // engine.io message carrying a socket.io packet
          const sio = text[1];
          if (sio === "0") {
            info.sid = JSON.parse(text.slice(2) || "{}").sid;
            if (user === prefix + firstUser) log(`connect ack for ${user}: ${text}`);
            ready = true;
            resolve(info);
          } else if (sio === "2") {
            showFrame(user, text);
            let ev, payload;
            try {
              [ev, payload] = JSON.parse(text.slice(2));
            } catch {
              problems.push(`${user}: bad event frame: ${text.slice(0, 200)}`);
              return;
            }
            if (ev !== "m") problems.push(`${user}: unexpected event ${ev}`);
            record(user, payload?.id, text);
          } else if (sio === "1") {
            problems.push(`${user}: disconnected by the server (41)`);
          } else if (sio === "4") {
            problems.push(`${user}: connect error ${text}`);
            if (!ready) reject(new Error(`${user}: ${text}`));
          } else {
            problems.push(`${user}: unexpected frame ${text.slice(0, 200)}`);
          }
          return;
        }
        default:
          problems.push(`${user}: unexpected frame ${text.slice(0, 200)}`);
      }
    });
  });
}

// ---- check: no user => turned away -------------------------------------------
async function checkRejection() {
  const events = [];
  await new Promise((resolve) => {
    const ws = new WebSocket(urlFor(null), { perMessageDeflate: false });
    const timer = setTimeout(() => {
      events.push("still open after 3 s");
      ws.terminate();
      resolve();
    }, 3000);
    ws.on("message", (data) => {
      const text = data.toString();
      events.push(`frame ${text}`);
      if (target === "socketio" && text[0] === "0") ws.send("40");
    });
    ws.on("close", (code, reason) => {
      events.push(`close ${code} ${reason.toString()}`.trim());
      clearTimeout(timer);
      resolve();
    });
    ws.on("error", (err) => events.push(`error ${err.message}`));
  });
  return events;
}

// ---- optional Redis tap (socketio ground truth) ------------------------------
const tapped = []; // k -> room user
let tap = null;
if (target === "socketio" && opts.redis) {
  tap = createClient({ url: opts.redis });
  tap.on("error", (err) => log(`redis tap error: ${err.message}`));
  await tap.connect();
  await tap.pSubscribe(
    "socket.io#/#*",
    (message, channel) => {
      const k = tapped.length;
      const m = /^socket\.io#\/#user:(.*)#$/.exec(channel.toString());
      const room = m ? m[1] : null;
      // Cross-check: the packed payload holds the body "<k>:xxx…" as raw bytes.
      const bodyOk = new RegExp(`(?<![0-9])${k}:x`).test(message.toString("latin1"));
      tapped.push({ user: room, bodyOk });
    },
    true, // buffers
  );
}

// ---- run -----------------------------------------------------------------------
const rejection = await checkRejection();
log(`connection without a user: ${rejection.join(" | ")}`);

const users = [];
for (let i = 0; i < nUsers; i++) users.push(prefix + (firstUser + i));
const t0 = performance.now();
const conns = await Promise.all(users.map((u) => connect(u)));
log(`${conns.length} users connected in ${(performance.now() - t0).toFixed(0)} ms`);
process.stdout.write(JSON.stringify({ event: "ready", connected: conns.length }) + "\n");

const complete = await new Promise((resolve) => {
  const timer = setTimeout(() => resolve(false), timeoutMs);
  onAll = () => {
    clearTimeout(timer);
    resolve(true);
  };
  if (expect === 0) {
    clearTimeout(timer);
    resolve(true);
  }
});
// Linger briefly so that duplicates, if any, have a chance to show up.
await new Promise((resolve) => setTimeout(resolve, 500));

// ---- verdict -------------------------------------------------------------------
let missing = 0;
let duplicated = 0;
let unexpected = 0;
let wrongUser = 0;
let tapMismatch = 0;
for (let id = 0; id < expect; id++) {
  const at = received.get(id);
  if (!at) {
    missing++;
    if (missing <= 5) problems.push(`id ${id} never arrived`);
    continue;
  }
  if (at.length > 1) {
    duplicated++;
    if (duplicated <= 5) problems.push(`id ${id} arrived ${at.length} times (${at.join(",")})`);
  }
  if (tap) {
    const t = tapped[id];
    if (!t || !t.bodyOk) tapMismatch++;
    else if (at.some((u) => u !== t.user)) {
      wrongUser++;
      if (wrongUser <= 5) problems.push(`id ${id}: published to ${t.user}, arrived at ${at.join(",")}`);
    }
  }
}
for (const id of received.keys()) if (!(id >= 0 && id < expect)) unexpected++;
if (tap && tapped.length !== expect) problems.push(`tap saw ${tapped.length} publishes, expected ${expect}`);
if (tapMismatch) problems.push(`${tapMismatch} tapped publishes whose body did not carry the expected id`);
const wrongUserChecked = target === "ws" || tap !== null;
wrongUser += wrongUserWs;

const turnedAway =
  target === "ws"
    ? rejection.some((e) => e.startsWith("close 1008"))
    : rejection.some((e) => e === "frame 41") || rejection.some((e) => e.startsWith("close"));
if (!turnedAway) problems.push("connection without a user was not turned away");

for (const c of conns) c.ws.close();
if (tap) await tap.quit().catch(() => {});

const perUser = new Map();
for (const [, at] of received) for (const u of at) perUser.set(u, (perUser.get(u) ?? 0) + 1);
const result = {
  event: "result",
  target,
  users: conns.length,
  users_with_messages: perUser.size,
  expected: expect,
  distinct_received: received.size,
  frames,
  missing,
  duplicated,
  unexpected,
  wrong_user: wrongUser,
  wrong_user_checked: wrongUserChecked,
  tapped: tap ? tapped.length : null,
  pings_answered: pingsAnswered,
  rejected_without_user: turnedAway,
  complete,
  ok: complete && missing === 0 && duplicated === 0 && unexpected === 0 && wrongUser === 0 && problems.length === 0,
};
for (const p of problems.slice(0, 20)) log(`problem: ${p}`);
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.ok ? 0 : 1);
