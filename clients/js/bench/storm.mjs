// The reconnect storm's TypeScript side (scripts/bench-client --storm):
// RTC_STORM_USERS rtc-clients (default 5000) connect through
// RTC_STACK_LBS, then each sends to the next one in a ring every 10 s or
// so. Prints "ready" once all are connected. On the line "report" on stdin
// the sends stop, and it prints one JSON line: the reconnect times (from
// the state going to connecting until connected again), the messages
// acknowledged and those of them never delivered, and the process's memory;
// then it closes and exits.
import { createInterface } from "node:readline";

import { RtcClient } from "../dist/index.js";

const USERS = Number(process.env.RTC_STORM_USERS ?? 5000);
const lbs = (process.env.RTC_STACK_LBS ?? "").split(",").filter(Boolean);
if (!lbs.length) throw new Error("RTC_STACK_LBS is not set");
const prefix = process.env.RTC_STORM_PREFIX ?? "storm";

const clients = [];
const reconnectMs = [];
// Where a reconnect's time goes: the route request, and the socket from
// its creation to the welcome (the rest is the server's retry_after_ms).
const routeMs = [];
const socketMs = [];
const timedFetch = async (...args) => {
  const t0 = performance.now();
  try {
    return await fetch(...args);
  } finally {
    routeMs.push(performance.now() - t0);
  }
};
class TimedWebSocket extends WebSocket {
  constructor(url) {
    super(url);
    const t0 = performance.now();
    this.addEventListener("message", () => socketMs.push(performance.now() - t0), { once: true });
  }
}
const notRecovered = [];
/** Per user: the numbers it received. */
const received = new Map();
for (let i = 0; i < USERS; i++) {
  const client = new RtcClient({
    routeUrls: lbs, user: `${prefix}-${i}`, minReconnectDelayMs: 100, maxReconnectDelayMs: 2_000,
    fetch: timedFetch, WebSocket: TimedWebSocket,
  });
  client.on("recovered", (r) => {
    if (!r.recovered) notRecovered.push(r.reason);
  });
  let lostAt = null;
  let connected = false;
  client.on("state", (s) => {
    if (s === "connected") {
      if (lostAt !== null) reconnectMs.push(performance.now() - lostAt);
      lostAt = null;
      connected = true;
    } else if (s === "connecting" && connected) {
      lostAt = performance.now();
      connected = false;
    }
  });
  const got = new Set();
  received.set(client.user, got);
  client.on("message", (m) => got.add(Number(m.body)));
  client.connect();
  clients.push(client);
  // Connect in waves: 5 000 route requests at once would time out on 2 cores.
  if (i % 250 === 249) await Promise.all(clients.slice(i - 249).map((c) => c.ready()));
}
await Promise.all(clients.map((c) => c.ready()));
reconnectMs.length = 0;
routeMs.length = 0;
socketMs.length = 0;
console.log("ready");

let sending = true;
const acked = new Map(clients.map((c) => [c.user, []]));
const failures = [];
async function ring(i) {
  const client = clients[i];
  const to = clients[(i + 1) % clients.length].user;
  await new Promise((r) => setTimeout(r, Math.random() * 10_000));
  for (let n = 1; sending; n++) {
    try {
      await client.send(to, String(n));
      acked.get(to).push(n);
    } catch (e) {
      if (sending) failures.push(e.code);
    }
    await new Promise((r) => setTimeout(r, 9_000 + Math.random() * 2_000));
  }
}
clients.forEach((_, i) => void ring(i));

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() !== "report") continue;
  sending = false;
  const missing = () => clients.reduce((n, c) => n + acked.get(c.user).filter((k) => !received.get(c.user).has(k)).length, 0);
  for (const until = Date.now() + 5_000; Date.now() < until && missing() > 0; ) await new Promise((r) => setTimeout(r, 100));
  const quantile = (list, p) => {
    const sorted = [...list].sort((a, b) => a - b);
    return sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]) : null;
  };
  const sorted = reconnectMs;
  const q = (p) => quantile(reconnectMs, p);
  const lostDetail = clients.flatMap((c) => acked.get(c.user).filter((k) => !received.get(c.user).has(k))
    .map((k) => ({ user: c.user, n: k, last_id: c.lastId, state: c.state, got: [...received.get(c.user)].sort((a, b) => a - b).slice(-4) })));
  const stillConnecting = clients.filter((c) => c.state !== "connected").length;
  console.log(JSON.stringify({
    users: USERS, reconnects: sorted.length, reconnect_p50_ms: q(0.5), reconnect_p99_ms: q(0.99), reconnect_max_ms: q(1),
    not_connected: stillConnecting, rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
    acked: [...acked.values()].reduce((n, l) => n + l.length, 0), lost: missing(), send_failures: failures.length,
    route_p50_ms: quantile(routeMs, 0.5), route_p99_ms: quantile(routeMs, 0.99),
    socket_p50_ms: quantile(socketMs, 0.5), socket_p99_ms: quantile(socketMs, 0.99),
    not_recovered: notRecovered.length, not_recovered_reasons: [...new Set(notRecovered)], lost_detail: lostDetail.slice(0, 5),
  }));
  break;
}
for (const c of clients) c.close();
process.exit(0);
