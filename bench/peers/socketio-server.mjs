// Socket.IO 4 peer server for rtc's comparison benchmark (not part of the product).
//
// One Socket.IO server on a plain Node http server, websocket transport only,
// with the Redis adapter so that a separate producer (emit.mjs, through
// @socket.io/redis-emitter) can reach the rooms "user:<user>".
//
// stdout carries exactly one line: {"event":"listening","port":P,"pid":PID}.
// Everything else goes to stderr.

import http from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { parseArgs, fail as failWith, logger, connectRedis, listenAndAnnounce } from "./common.mjs";

// Flags and defaults (the benchmark passes --ping-interval-ms 3600000).
const FLAGS = {
  host: "127.0.0.1",
  port: "0",
  redis: "redis://127.0.0.1:6379",
  "ping-interval-ms": "25000",
  "ping-timeout-ms": "20000",
};

const PROGRAM = "socketio-server";
const fail = (msg) => failWith(PROGRAM, msg);
const log = logger(PROGRAM);

function intFlag(opts, name, min) {
  const v = Number(opts[name]);
  if (!Number.isInteger(v) || v < min) fail(`--${name} must be an integer >= ${min}, got ${JSON.stringify(opts[name])}`);
  return v;
}

const opts = parseArgs(PROGRAM, process.argv.slice(2), FLAGS);
const port = intFlag(opts, "port", 0);
const pingInterval = intFlag(opts, "ping-interval-ms", 1);
const pingTimeout = intFlag(opts, "ping-timeout-ms", 1);
if (port > 65535) fail("--port must be <= 65535");

// Gives up (exit 2) if Redis cannot be reached within 5 s.
const [pubClient, subClient] = await connectRedis(PROGRAM, opts.redis, ["redis pub client", "redis sub client"]);

const httpServer = http.createServer((req, res) => {
  // Socket.IO answers its own path; anything else is a 404.
  res.writeHead(404).end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
  pingInterval,
  pingTimeout,
  adapter: createAdapter(pubClient, subClient),
});

let connected = 0;
let rejected = 0;
io.on("connection", (socket) => {
  const user = socket.handshake.query.user;
  if (typeof user !== "string" || user === "") {
    rejected++;
    socket.disconnect(true);
    return;
  }
  connected++;
  socket.join("user:" + user);
  socket.on("disconnect", () => {
    connected--;
  });
});

const boundPort = await listenAndAnnounce(httpServer, opts.host, port);
log(`listening on ${opts.host}:${boundPort}, redis ${opts.redis}, pingInterval ${pingInterval} ms, pingTimeout ${pingTimeout} ms`);

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing (${connected} sockets connected, ${rejected} rejected for lack of a user)`);
  const force = setTimeout(() => {
    log("shutdown took over 5 s; exiting anyway");
    process.exit(0);
  }, 5000);
  force.unref();
  try {
    await io.close(); // disconnects every socket, closes the adapter and the http server
  } catch (err) {
    log(`io.close: ${err.message}`);
  }
  await Promise.allSettled([pubClient.quit(), subClient.quit()]);
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
