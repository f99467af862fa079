// Code shared by the peer programs (socketio-server, ws-server, emit, smoke-client)
// of rtc's comparison benchmark (not part of the product). `program` is the name
// that prefixes the program's stderr messages.

import { createClient } from "redis";

// Prints `<program>: <msg>` to stderr and exits 2 (bad usage, unreachable Redis).
export function fail(program, msg) {
  process.stderr.write(`${program}: ${msg}\n`);
  process.exit(2);
}

// A stderr logger: `<program>[<pid>]: <msg>`, or `<program>: <msg>` with { pid: false }.
export function logger(program, { pid = true } = {}) {
  const prefix = pid ? `${program}[${process.pid}]` : program;
  return (msg) => process.stderr.write(`${prefix}: ${msg}\n`);
}

// `--name value` or `--name=value`; fallback RTC_PEER_<NAME> (dashes to underscores); then default.
// Every value is a string; `defaults` lists the known flags. Bad usage fails (exit 2).
export function parseArgs(program, argv, defaults) {
  const given = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) fail(program, `unexpected argument ${JSON.stringify(arg)}`);
    let name = arg.slice(2);
    let value;
    const eq = name.indexOf("=");
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    } else {
      if (i + 1 >= argv.length) fail(program, `flag --${name} needs a value`);
      value = argv[++i];
    }
    if (!(name in defaults)) fail(program, `unknown flag --${name}; known: ${Object.keys(defaults).map((n) => "--" + n).join(" ")}`);
    given[name] = value;
  }
  const out = {};
  for (const [name, def] of Object.entries(defaults)) {
    const env = process.env["RTC_PEER_" + name.toUpperCase().replace(/-/g, "_")];
    out[name] = given[name] ?? (env !== undefined && env !== "" ? env : def);
  }
  return out;
}

// Creates and connects one node-redis client per entry of `names` (the first
// created from `url`, the others its duplicates) and returns them in that order.
// Gives up if the first connection has not succeeded within 5 s (instead of
// node-redis's default of retrying forever): then fails (exit 2) with
// "cannot connect to Redis at <url>: …". After that, the default backoff.
// Each client logs its errors as `<name> error: …`, repeated identical ones once.
export async function connectRedis(program, url, names) {
  const log = logger(program);
  let started = false;
  const giveUpAt = Date.now() + 5000;
  const first = createClient({
    url,
    socket: {
      reconnectStrategy: (retries, cause) =>
        !started && Date.now() > giveUpAt ? cause : Math.min(retries * 50, 500),
    },
  });
  const clients = names.map((_, i) => (i === 0 ? first : first.duplicate()));
  clients.forEach((client, i) => {
    let last = "";
    client.on("error", (err) => {
      if (err.message !== last) log(`${names[i]} error: ${err.message}`);
      last = err.message;
    });
  });
  try {
    await Promise.all(clients.map((client) => client.connect()));
  } catch (err) {
    fail(program, `cannot connect to Redis at ${url}: ${err.message}`);
  }
  started = true;
  return clients;
}

// Starts `httpServer` on host:port, then prints the servers' one stdout line,
// {"event":"listening","port":P,"pid":PID}, and returns P.
export async function listenAndAnnounce(httpServer, host, port) {
  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen({ host, port, backlog: 4096 }, () => {
      httpServer.off("error", reject);
      resolve();
    });
  });
  const actual = httpServer.address().port;
  process.stdout.write(JSON.stringify({ event: "listening", port: actual, pid: process.pid }) + "\n");
  return actual;
}
