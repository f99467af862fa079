// Bare `ws` peer server for rtc's comparison benchmark: the floor (not part of the product).
//
// Clients connect to ws://HOST:PORT/?user=<user>. The server subscribes to ONE
// Redis pub/sub channel whose messages are JSON strings
// {"user":"…","id":N,"ts":MS,"body":"…"}, and sends each message string
// unchanged, as one text frame, to that user's socket if it is connected.
// No server-sent pings, no compression.
//
// stdout carries exactly one line: {"event":"listening","port":P,"pid":PID}.
// Everything else goes to stderr.

import http from "node:http";
import { WebSocketServer, WebSocket } from "ws";
import { parseArgs, fail as failWith, logger, connectRedis, listenAndAnnounce } from "./common.mjs";

// Flags and defaults (--channel must match emit.mjs's --channel).
const FLAGS = {
  host: "127.0.0.1",
  port: "0",
  redis: "redis://127.0.0.1:6379",
  channel: "rtc-peers:messages",
};

const PROGRAM = "ws-server";
const fail = (msg) => failWith(PROGRAM, msg);
const log = logger(PROGRAM);

const opts = parseArgs(PROGRAM, process.argv.slice(2), FLAGS);
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be an integer in 0..65535, got ${JSON.stringify(opts.port)}`);

const sockets = new Map(); // user -> WebSocket
const counters = { delivered: 0, absent: 0, malformed: 0, rejected: 0, replaced: 0 };

const httpServer = http.createServer((req, res) => {
  res.writeHead(426, { "content-type": "text/plain" }).end("websocket only\n");
});
const wss = new WebSocketServer({ server: httpServer, perMessageDeflate: false });

wss.on("connection", (ws, req) => {
  const user = new URL(req.url, "http://peer").searchParams.get("user");
  if (!user) {
    counters.rejected++;
    ws.close(1008, "missing user");
    return;
  }
  const previous = sockets.get(user);
  if (previous) {
    // Last connection wins; the old socket stays open but no longer receives.
    counters.replaced++;
  }
  sockets.set(user, ws);
  ws.on("close", () => {
    if (sockets.get(user) === ws) sockets.delete(user);
  });
  ws.on("error", (err) => log(`socket error for ${user}: ${err.message}`));
});

// Gives up (exit 2) if Redis cannot be reached within 5 s.
const [subClient] = await connectRedis(PROGRAM, opts.redis, ["redis sub client"]);
await subClient.subscribe(opts.channel, (message) => {
  let user;
  try {
    user = JSON.parse(message).user;
  } catch {
    counters.malformed++;
    return;
  }
  if (typeof user !== "string") {
    counters.malformed++;
    return;
  }
  const ws = sockets.get(user);
  if (ws === undefined || ws.readyState !== WebSocket.OPEN) {
    counters.absent++;
    return;
  }
  ws.send(message); // a string: one text frame, unchanged
  counters.delivered++;
});

const boundPort = await listenAndAnnounce(httpServer, opts.host, port);
log(`listening on ${opts.host}:${boundPort}, redis ${opts.redis}, channel ${opts.channel}`);

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing; ${wss.clients.size} sockets open; counters ${JSON.stringify(counters)}`);
  const force = setTimeout(() => {
    log("shutdown took over 5 s; exiting anyway");
    process.exit(0);
  }, 5000);
  force.unref();
  for (const ws of wss.clients) ws.terminate();
  await new Promise((resolve) => wss.close(() => resolve()));
  await new Promise((resolve) => httpServer.close(() => resolve()));
  await Promise.allSettled([subClient.quit()]);
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
