// A fake load balancer (a fetch function) and a fake socket node (a
// WebSocket class) for the client's unit tests: each records what the client
// asked for and lets the test play the server's side.

import { RtcClient } from "../dist/index.js";

/** Polls `check` until it returns something truthy; fails after `ms`. */
export async function until(check, what, ms = 3_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const welcome = (over = {}) => ({
  type: "welcome", node_id: "socket-0", user: "u1", partition: 3, epoch: 8, live_from: "3:1", ...over,
});

/** The socket node: every socket the client opens, in order. */
export class FakeNode {
  sockets = [];

  get WebSocket() {
    const node = this;
    return class FakeSocket {
      onopen = null;
      onmessage = null;
      onclose = null;
      onerror = null;
      sent = [];
      closed = false;
      clientCloseCode = null;

      constructor(url) {
        this.url = new URL(url);
        node.sockets.push(this);
        setTimeout(() => this.onopen?.({}), 0);
      }

      dropped = [];

      send(data) {
        // A closing socket drops what is sent, as browsers do.
        (this.closed ? this.dropped : this.sent).push(JSON.parse(data));
      }

      close(code = 1000) {
        if (this.closed) return;
        this.closed = true;
        this.clientCloseCode = code;
        setTimeout(() => this.onclose?.({ code, reason: "" }), 0);
      }

      // The server's side.
      frame(frame) {
        this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
      }

      serverClose(code) {
        if (this.closed) return;
        this.closed = true;
        setTimeout(() => this.onclose?.({ code, reason: "" }), 0);
      }

      /** A refused upgrade: the browser reports an error, then a close (1006). */
      refuse() {
        this.onerror?.({});
        this.serverClose(1006);
      }

      /** A refused connection as Node 20's WebSocket (undici) reports it: an error, no close. */
      errorWithoutClose() {
        this.onerror?.({});
      }

      query(name) {
        return this.url.searchParams.get(name);
      }

      /** What the URL adds after the token, as the vectors write it. */
      resumeQuery() {
        for (const key of ["last_id", "from_id"]) {
          const v = this.query(key);
          if (v !== null) return `${key}=${v}`;
        }
        return "";
      }
    };
  }

  async next(n = this.sockets.length) {
    return until(() => this.sockets[n], `socket #${n + 1}`);
  }
}

/**
 * The load balancers: `answer(base, request)` returns `{status, body,
 * headers}` or throws (unreachable). By default every route is to the
 * fake node with a new token each time.
 */
export class FakeLb {
  requests = [];
  tokens = 0;

  constructor(answer) {
    this.answer = answer ?? (() => this.route());
  }

  route(user = "u1") {
    this.tokens += 1;
    return {
      status: 200,
      body: { user, partition: 3, node_id: "socket-0", url: "ws://node.test/ws", epoch: 8, token: `tok-${this.tokens}` },
    };
  }

  get fetch() {
    return async (url, init) => {
      const u = new URL(url);
      const signal = init?.signal;
      const request = { base: u.origin, path: u.pathname, user: u.searchParams.get("user"), headers: init?.headers ?? {}, signal };
      this.requests.push(request);
      // As fetch does: an abort rejects the request, even one never answered.
      const aborted = new Promise((_, reject) => {
        signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      });
      const { status, body, headers } = await Promise.race([this.answer(request.base, request), aborted]);
      return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers });
    };
  }
}

/** A Web Storage kept in a Map. */
export class MemoryStorage {
  items = new Map();
  getItem(key) {
    return this.items.get(key) ?? null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

/** A client on fakes, recording its events. */
export function start(options = {}, lb = new FakeLb(), node = new FakeNode()) {
  const client = new RtcClient({
    routeUrls: ["http://lb-a.test"], user: "u1", WebSocket: node.WebSocket, fetch: lb.fetch,
    minReconnectDelayMs: 5, maxReconnectDelayMs: 50, ...options,
  });
  const seen = { states: [], messages: [], recovered: [], errors: [] };
  client.on("state", (s) => seen.states.push(s));
  client.on("message", (m) => seen.messages.push(m));
  client.on("recovered", (r) => seen.recovered.push(r));
  client.on("error", (e) => seen.errors.push(e));
  client.connect();
  return { client, lb, node, seen };
}

