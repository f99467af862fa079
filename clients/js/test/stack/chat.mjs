// rtc-client users chatting through the real stack, for the chaos scenario
// `js-client` (scripts/lib/chaos.py), which injects the faults from outside
// (a drain, a node SIGKILL) while this runs. Each user sends to the next one
// in a ring, numbered, one send at a time; every recipient checks what it
// got. The stack comes in the environment:
//   RTC_STACK_LBS       comma-separated load balancer base URLs
//   RTC_STACK_USERS     how many users (default 50)
//   RTC_STACK_SECONDS   how long they send (default 16)
//   RTC_STACK_KILLED    the node id that will be SIGKILLed (its users'
//                       reconnects wait for dead-after; the rest are moves)
// Prints "ready" once every user is connected, then one JSON report line.
import { RtcClient } from "../../dist/index.js";

const USERS = Number(process.env.RTC_STACK_USERS ?? 50);
const SECONDS = Number(process.env.RTC_STACK_SECONDS ?? 16);
const lbs = (process.env.RTC_STACK_LBS ?? "").split(",").filter(Boolean);
const killed = process.env.RTC_STACK_KILLED ?? "";
if (!lbs.length) throw new Error("RTC_STACK_LBS is not set");

const run = `${process.pid}-${Date.now() % 1e6}`;
const users = Array.from({ length: USERS }, (_, i) => `js-${run}-${i}`);
const clients = new Map();
/** Per recipient: [sender, seq] in delivery order. */
const received = new Map(users.map((u) => [u, []]));
/** Per recipient: the seqs whose send was acknowledged. */
const acked = new Map(users.map((u) => [u, []]));
const moves = [];
const crashes = [];
const failures = [];
const unsettledAt = new Map();
/** What the slowest reconnect after the SIGKILL went through (errors, in ms from the loss). */
let slowestCrash = { ms: -1, trail: [] };

for (const user of users) {
  // 30 s for a send: a send written to the node that dies waits for
  // dead-after (6 s) and the reconnect, and its timer runs from that write.
  const client = new RtcClient({ routeUrls: lbs, user, minReconnectDelayMs: 100, maxReconnectDelayMs: 1_000, sendTimeoutMs: 30_000 });
  let node = null;
  let lost = null;
  client.on("state", (s) => {
    if (s === "connecting" && node !== null) {
      lost = { at: Date.now(), from: node, trail: [] };
      node = null;
    } else if (s === "connected") {
      node = client.session?.nodeId ?? null;
      if (lost) {
        const ms = Date.now() - lost.at;
        (lost.from === killed ? crashes : moves).push(ms);
        if (lost.from === killed && ms > slowestCrash.ms) slowestCrash = { ms, trail: [...lost.trail, `connected to ${node}`] };
      }
      lost = null;
    }
  });
  client.on("message", (m) => {
    const [from, seq] = JSON.parse(m.body);
    received.get(user).push([from, seq]);
  });
  client.on("error", (e) => {
    lost?.trail.push(`${Date.now() - lost.at} ms: ${e.code} ${e.message.slice(-80)}`);
    if (!["route_unreachable", "route_refused", "connect_failed"].includes(e.code)) failures.push(`${user}: ${e.code} ${e.message}`);
  });
  client.connect();
  clients.set(user, client);
}
await Promise.all([...clients.values()].map((c) => c.ready()));
moves.length = 0;
console.log("ready");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = Date.now() + SECONDS * 1000;
let inFlight = 0;
let inFlightAtEnd = 0;
async function chat(user, i) {
  const to = users[(i + 1) % users.length];
  for (let seq = 1; Date.now() < deadline; seq++) {
    inFlight += 1;
    try {
      await clients.get(user).send(to, JSON.stringify([user, seq]));
      acked.get(to).push(seq);
    } catch (e) {
      failures.push(`send ${user}->${to} #${seq}: ${e.code}`);
    } finally {
      inFlight -= 1;
    }
    await sleep(100 + Math.random() * 100);
  }
}
const ticker = setInterval(() => unsettledAt.set(Date.now(), inFlight), 250);
await Promise.all(users.map(chat));
clearInterval(ticker);
inFlightAtEnd = inFlight;
// What was acknowledged is in the log; give its delivery a moment.
const settle = Date.now() + 10_000;
const missing = () => users.reduce((n, u) => n + acked.get(u).filter((s) => !received.get(u).some(([, r]) => r === s)).length, 0);
while (Date.now() < settle && missing() > 0) await sleep(100);

let lost = 0;
let duplicates = 0;
let disorder = 0;
let delivered = 0;
for (const user of users) {
  const got = received.get(user).map(([, seq]) => seq);
  delivered += got.length;
  duplicates += got.length - new Set(got).size;
  const have = new Set(got);
  lost += acked.get(user).filter((s) => !have.has(s)).length;
  for (let k = 1; k < got.length; k++) if (got[k] <= got[k - 1]) disorder += 1;
}
const pct = (list, p) => {
  const s = [...list].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(s.length * p))] : null;
};
for (const c of clients.values()) c.close();
console.log(JSON.stringify({
  users: USERS,
  acked: [...acked.values()].reduce((n, l) => n + l.length, 0),
  delivered, lost, duplicates, disorder,
  moves: moves.length, move_p99_ms: pct(moves, 0.99), move_max_ms: pct(moves, 1),
  crashes: crashes.length, crash_max_ms: pct(crashes, 1), slowest_crash: slowestCrash.trail.slice(-12),
  max_sends_waiting: Math.max(0, ...unsettledAt.values()), sends_waiting_at_end: inFlightAtEnd,
  resends: [...clients.values()].reduce((n, c) => n + c.resends, 0),
  duplicates_dropped: [...clients.values()].reduce((n, c) => n + c.duplicatesDropped, 0),
  failures: failures.slice(0, 20), failure_count: failures.length,
}));
process.exit(0);
