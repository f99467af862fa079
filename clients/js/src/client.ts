// RtcClient: one user's connection. A single loop owns it: ask a load
// balancer for the route, open the socket, serve the session, and when it
// ends wait (the server's retry_after_ms, or jittered backoff) and go again
// with the resume point. Pure pieces (frames, ids, backoff, cursor) live in
// their own modules and are tested against rtc-core's vectors.

import { Backoff } from "./backoff.js";
import { Cursor } from "./cursor.js";
import { formatMessageId, parseMessageId, parseServerFrame, reconnectsAfter, renderClientFrame } from "./protocol.js";
import { RecentSends } from "./recent.js";

export type State = "disconnected" | "connecting" | "connected" | "closed";

/** A message for the user, delivered once, in id order. */
export interface Message {
  id: string;
  from: string | null;
  body: string;
  ts_ms: number;
}

/** A reconnect resumed after the last id: `recovered` when nothing was missed. */
export interface Recovered {
  recovered: boolean;
  reason: string | null;
}

/** The open session: which node serves the user, at which epoch. */
export interface Session {
  nodeId: string;
  partition: number;
  epoch: number;
}

/**
 * What went wrong. `code` is one of `route_unreachable`, `route_refused`
 * (with `status`), `bad_route`, `auth_failed`, `connect_failed`, `closed`,
 * `send_timeout`, `too_many_sends`, or a server's error code
 * (`rate_limited`, `send_failed`, `bad_frame`, …).
 */
export class RtcError extends Error {
  readonly code: string;
  readonly status: number | undefined;

  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = "RtcError";
    this.code = code;
    this.status = status;
  }
}

export interface RtcEvents {
  state: (state: State) => void;
  message: (message: Message) => void;
  recovered: (recovered: Recovered) => void;
  error: (error: RtcError) => void;
}

/** What `storage` needs: `localStorage` and `sessionStorage` fit. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** The part of the WebSocket API the client uses (the browser's, `ws`, undici's). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface RtcClientOptions {
  /** The load balancers' base URLs (`http(s)://host:port`), tried in turn. */
  routeUrls: string[];
  user: string;
  /** The `Authorization` header for `/v1/route` (e.g. `Bearer <jwt>`), asked for every route. */
  getRouteAuth?: () => string | null | undefined | Promise<string | null | undefined>;
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** Keeps the resume point (and recent sends) across page reloads. */
  storage?: StorageLike;
  /** Where there is no global WebSocket (Node 20). */
  WebSocket?: WebSocketConstructor;
  fetch?: typeof fetch;
  /** A route request, and a socket until its welcome, give up after this. */
  connectTimeoutMs?: number;
  /** A send not acknowledged by then fails with `send_timeout`. */
  sendTimeoutMs?: number;
  /** Uniform in [0, 1): the jitter's source (tests pass their own). */
  random?: () => number;
}

/** Sends waiting for their ack; beyond this, `send` fails at once. */
const MAX_PENDING_SENDS = 1000;
/** After a `disconnect`, how long to wait for the server's close. */
const CLOSE_WAIT_MS = 1000;
/** Recent sends a page keeps in `storage`. */
const STORED_SENDS = 64;
const MAX_ROUTE_ANSWER = 64 * 1024;

interface PendingSend {
  frame: string;
  resolve: (id: string) => void;
  reject: (error: RtcError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Route {
  nodeId: string;
  connectUrl: string;
}

/** Why an attempt failed and how long it asks to wait. */
interface Retry {
  ms: number;
  /** A server's `retry_after_ms`: followed as is; otherwise a lower bound on the backoff. */
  exact: boolean;
}

type End =
  | { kind: "disconnect"; reconnect: boolean; retryAfterMs: number; at: number }
  | { kind: "closed"; code: number; at: number }
  | { kind: "client"; at: number };

type Handlers = { [K in keyof RtcEvents]: Set<RtcEvents[K]> };

export class RtcClient {
  readonly user: string;
  /** The open session, or null. */
  session: Session | null = null;
  /** Sessions that ended and were followed by a reconnect. */
  reconnects = 0;

  readonly #routeUrls: string[];
  readonly #getRouteAuth: RtcClientOptions["getRouteAuth"];
  readonly #storage: StorageLike | undefined;
  readonly #WebSocket: WebSocketConstructor;
  readonly #fetch: typeof fetch;
  readonly #connectTimeoutMs: number;
  readonly #sendTimeoutMs: number;
  readonly #random: () => number;
  readonly #backoff: Backoff;
  readonly #cursor: Cursor;
  readonly #recent: RecentSends;
  readonly #handlers: Handlers = { state: new Set(), message: new Set(), recovered: new Set(), error: new Set() };
  readonly #pending = new Map<string, PendingSend>();
  readonly #sendPrefix: string;
  #sends = 0;
  #state: State = "disconnected";
  #running = false;
  #closing = false;
  #ws: WebSocketLike | null = null;
  #routeIndex = 0;
  /** Cuts the current wait short (close, or a page that came back). */
  #interrupt: ((jitterable: boolean) => void) | null = null;
  #unlisten: (() => void) | null = null;

  constructor(options: RtcClientOptions) {
    if (!options.user) throw new RtcError("bad_options", "user is empty");
    if (!options.routeUrls?.length) throw new RtcError("bad_options", "routeUrls is empty");
    this.#routeUrls = options.routeUrls.map(baseUrl);
    this.user = options.user;
    this.#getRouteAuth = options.getRouteAuth;
    this.#storage = options.storage;
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ws) throw new RtcError("bad_options", "no WebSocket here: pass one as the WebSocket option");
    this.#WebSocket = ws;
    const f = options.fetch ?? globalThis.fetch;
    if (!f) throw new RtcError("bad_options", "no fetch here: pass one as the fetch option");
    this.#fetch = f.bind(globalThis);
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.#sendTimeoutMs = options.sendTimeoutMs ?? 10_000;
    this.#random = options.random ?? Math.random;
    this.#backoff = new Backoff(options.minReconnectDelayMs ?? 500, options.maxReconnectDelayMs ?? 20_000);
    const stored = this.#load();
    this.#cursor = new Cursor(stored.lastId, stored.liveFrom);
    this.#recent = new RecentSends(stored.sends);
    this.#sendPrefix = randomPrefix();
  }

  get state(): State {
    return this.#state;
  }

  /** The last delivered message id, `P:O`. */
  get lastId(): string | null {
    const last = this.#cursor.lastId;
    return last ? formatMessageId(last) : null;
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof RtcEvents>(name: K, handler: RtcEvents[K]): () => void {
    const set = this.#handlers[name] as Set<RtcEvents[K]>;
    set.add(handler);
    return () => set.delete(handler);
  }

  /** Starts connecting (and reconnecting until `close()`). Idempotent. */
  connect(): void {
    if (this.#running || this.#closing) return;
    this.#running = true;
    this.#listenToPage();
    void this.#run();
  }

  /** Resolves when connected (at once if connected now); rejects once closed. */
  ready(): Promise<void> {
    if (this.#state === "connected") return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(new RtcError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const off = this.on("state", (state) => {
        if (state === "connected") resolve();
        else if (state === "closed") reject(new RtcError("closed", "the client is closed"));
        else return;
        off();
      });
    });
  }

  /** Closes for good: the session ends (1000), sends waiting fail with `closed`. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#interrupt?.(false);
    this.#ws?.close(1000, "");
    if (!this.#running) this.#finish();
  }

  /**
   * Sends `body` to user `to`; resolves with the message's id in the
   * recipient's partition once the server acknowledges it. While not
   * connected the send waits for the next session. A session that ends
   * before the ack makes the client send it again, under the same
   * `client_msg_id`: the recipient's client delivers only one copy.
   */
  send(to: string, body: string): Promise<string> {
    if (this.#closing) return Promise.reject(new RtcError("closed", "the client is closed"));
    if (this.#pending.size >= MAX_PENDING_SENDS) {
      return Promise.reject(new RtcError("too_many_sends", `${MAX_PENDING_SENDS} sends wait for their ack`));
    }
    this.#sends += 1;
    const clientMsgId = `${this.#sendPrefix}-${this.#sends}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(clientMsgId);
        reject(new RtcError("send_timeout", `no ack within ${this.#sendTimeoutMs} ms`));
      }, this.#sendTimeoutMs);
      const frame = renderClientFrame({ type: "send", to, body, client_msg_id: clientMsgId });
      this.#pending.set(clientMsgId, { frame, resolve, reject, timer });
      if (this.#state === "connected" && this.#ws) write(this.#ws, frame);
    });
  }

  async #run(): Promise<void> {
    let wait: Retry = { ms: 0, exact: false };
    while (!this.#closing) {
      this.#setState("connecting");
      if (wait.ms > 0 && !(await this.#pause(wait))) break;
      const attempt = await this.#attempt();
      if ("retry" in attempt) {
        const r = attempt.retry;
        const ms = r.exact ? Math.min(r.ms, this.#backoff.maxMs) : Math.max(this.#backoff.next(this.#random()), r.ms);
        wait = { ms, exact: r.exact };
        continue;
      }
      this.#backoff.reset();
      const end = await attempt.ended;
      this.session = null;
      this.#ws = null;
      const delay = this.#reconnectDelay(end);
      if (delay === null || this.#closing) break;
      this.reconnects += 1;
      // retry_after_ms counts from the disconnect frame.
      wait = { ms: Math.max(0, delay.ms - (Date.now() - end.at)), exact: delay.exact };
    }
    this.#finish();
  }

  #finish(): void {
    this.#closing = true;
    this.#unlisten?.();
    this.#unlisten = null;
    for (const [id, send] of this.#pending) {
      clearTimeout(send.timer);
      send.reject(new RtcError("closed", "the client is closed"));
      this.#pending.delete(id);
    }
    this.#setState("closed");
  }

  #reconnectDelay(end: End): Retry | null {
    switch (end.kind) {
      case "client":
        return null;
      case "disconnect":
        return end.reconnect ? { ms: Math.min(end.retryAfterMs, this.#backoff.maxMs), exact: true } : null;
      case "closed":
        return reconnectsAfter(end.code) ? { ms: this.#backoff.next(this.#random()), exact: false } : null;
    }
  }

  /** Waits `wait.ms`; false when the client closes meanwhile. */
  #pause(wait: Retry): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (go: boolean) => {
        clearTimeout(timer);
        this.#interrupt = null;
        resolve(go);
      };
      let timer = setTimeout(() => done(true), wait.ms);
      this.#interrupt = (jitterable) => {
        if (this.#closing) return done(false);
        // The page came back: go now, still jittered so a whole audience
        // does not arrive at once. A server's wait is kept.
        if (jitterable && !wait.exact) {
          clearTimeout(timer);
          timer = setTimeout(() => done(true), this.#random() * this.#backoff.minMs);
        }
      };
    });
  }

  /** Route (each load balancer in turn), then the socket until its welcome. */
  async #attempt(): Promise<{ retry: Retry } | { ended: Promise<End> }> {
    let route: Route | null = null;
    for (let i = 0; i < this.#routeUrls.length && !route; i++) {
      const index = (this.#routeIndex + i) % this.#routeUrls.length;
      const answer = await this.#route(index);
      if (this.#closing) return { retry: { ms: 0, exact: false } };
      if ("nodeId" in answer) {
        this.#routeIndex = index;
        route = answer;
        break;
      }
      this.#emit("error", answer.error);
      if (answer.error.code !== "route_unreachable") {
        // It answered: the others share its assignment and would say the same.
        this.#routeIndex = index;
        return { retry: answer.retry };
      }
    }
    if (!route) return { retry: { ms: 0, exact: false } };
    const opened = await this.#open(route.connectUrl + this.#cursor.query());
    if (!opened) this.#emit("error", new RtcError("connect_failed", `no session at node ${route.nodeId}`));
    return opened ?? { retry: { ms: 0, exact: false } };
  }

  async #route(index: number): Promise<Route | { error: RtcError; retry: Retry }> {
    const base = this.#routeUrls[index] ?? "";
    const url = `${base}/v1/route?user=${encodeURIComponent(this.user)}`;
    const failed = (code: string, message: string, retry: Retry = { ms: 0, exact: false }, status?: number) => ({
      error: new RtcError(code, `${url}: ${message}`, status),
      retry,
    });
    const headers: Record<string, string> = { accept: "application/json" };
    try {
      const auth = await this.#getRouteAuth?.();
      if (auth) headers.authorization = auth;
    } catch (e) {
      return failed("auth_failed", `getRouteAuth failed: ${String(e)}`);
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#connectTimeoutMs);
    let status: number;
    let retryAfter: string | null;
    let text: string;
    try {
      const response = await this.#fetch(url, { headers, signal: abort.signal });
      status = response.status;
      retryAfter = response.headers.get("retry-after");
      text = await response.text();
    } catch (e) {
      return failed("route_unreachable", String(e));
    } finally {
      clearTimeout(timer);
    }
    let json: Record<string, unknown> | null = null;
    try {
      const v: unknown = text.length <= MAX_ROUTE_ANSWER ? JSON.parse(text) : null;
      if (typeof v === "object" && v !== null) json = v as Record<string, unknown>;
    } catch {
      json = null;
    }
    if (status !== 200) {
      const precise = json?.retry_after_ms;
      const seconds = retryAfter !== null && /^\d+$/.test(retryAfter.trim()) ? Number(retryAfter) * 1000 : 0;
      const retry = typeof precise === "number" && precise >= 0 ? { ms: precise, exact: true } : { ms: seconds, exact: false };
      const why = typeof json?.error === "string" ? json.error : text.slice(0, 200);
      return failed("route_refused", `${status} ${why}`, retry, status);
    }
    const { user, node_id: nodeId, url: wsUrl, token } = json ?? {};
    if (user !== this.user || typeof nodeId !== "string" || typeof wsUrl !== "string" || typeof token !== "string") {
      return failed("bad_route", `not a route for ${this.user}: ${text.slice(0, 200)}`);
    }
    const sep = wsUrl.includes("?") ? "&" : "?";
    return { nodeId, connectUrl: `${wsUrl}${sep}token=${encodeURIComponent(token)}` };
  }

  /**
   * Opens a socket and waits for its welcome; null when it fails first.
   * After the welcome, `ended` says how the session ended.
   */
  #open(url: string): Promise<{ ended: Promise<End> } | null> {
    return new Promise((opened) => {
      let ws: WebSocketLike;
      try {
        ws = new this.#WebSocket(url);
      } catch {
        opened(null);
        return;
      }
      this.#ws = ws;
      let welcomed = false;
      let goodbye: End | null = null;
      let closeWait: ReturnType<typeof setTimeout> | undefined;
      let endSession: (end: End) => void = () => {};
      const ended = new Promise<End>((resolve) => {
        endSession = resolve;
      });
      const giveUp = setTimeout(() => {
        ws.close(1000, "");
        fail();
      }, this.#connectTimeoutMs);
      const fail = () => {
        clearTimeout(giveUp);
        ws.onmessage = ws.onclose = ws.onerror = null;
        if (this.#ws === ws) this.#ws = null;
        opened(null);
      };
      const finish = (end: End) => {
        clearTimeout(closeWait);
        ws.onmessage = ws.onclose = ws.onerror = null;
        endSession(end);
      };
      ws.onerror = () => {};
      ws.onclose = (event) => {
        if (!welcomed) return fail();
        const at = Date.now();
        finish(this.#closing ? { kind: "client", at } : (goodbye ?? { kind: "closed", code: event.code, at }));
      };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        const frame = parseServerFrame(event.data);
        if (!frame) return;
        if (!welcomed) {
          if (frame.type !== "welcome") return;
          welcomed = true;
          clearTimeout(giveUp);
          if (this.#closing) {
            ws.close(1000, "");
            return finish({ kind: "client", at: Date.now() });
          }
          const liveFrom = frame.live_from ? parseMessageId(frame.live_from) : null;
          if (liveFrom) this.#cursor.welcomed(liveFrom);
          const resumeFrom = this.#cursor.liveFrom;
          if (resumeFrom) this.#save("live_from", formatMessageId(resumeFrom));
          this.session = { nodeId: frame.node_id, partition: frame.partition, epoch: frame.epoch };
          opened({ ended }); // wrapped: a promise resolved with a promise would wait for it
          this.#setState("connected");
          // Sends waiting (new, or unacknowledged by the last session).
          for (const send of this.#pending.values()) write(ws, send.frame);
          return;
        }
        switch (frame.type) {
          case "message":
            return this.#deliver(frame);
          case "resumed":
            return this.#emit("recovered", { recovered: frame.recovered, reason: frame.reason });
          case "ack":
            return this.#settle(frame.client_msg_id, (send) => send.resolve(frame.id));
          case "error": {
            const error = new RtcError(frame.code, frame.message);
            if (frame.client_msg_id && this.#pending.has(frame.client_msg_id)) {
              return this.#settle(frame.client_msg_id, (send) => send.reject(error));
            }
            return this.#emit("error", error);
          }
          case "disconnect":
            if (goodbye) return;
            goodbye = { kind: "disconnect", reconnect: frame.reconnect, retryAfterMs: frame.retry_after_ms, at: Date.now() };
            this.#setState("connecting");
            // The server closes next; messages before its close still count.
            closeWait = setTimeout(() => {
              ws.close(1000, "");
              if (goodbye) finish(goodbye);
            }, CLOSE_WAIT_MS);
            return;
          case "welcome":
            return;
        }
      };
    });
  }

  #deliver(frame: { id: string; from: string | null; body: string; ts_ms: number; client_msg_id?: string }): void {
    const id = parseMessageId(frame.id);
    if (!id || !this.#cursor.accept(id)) return;
    const first = this.#recent.firstCopy(frame.from, frame.client_msg_id);
    // Only what this message changed: the last id, and the recent sends
    // when it named one.
    this.#save("last_id", frame.id);
    if (first && frame.client_msg_id !== undefined) {
      this.#save("sends", JSON.stringify(this.#recent.newest(STORED_SENDS)));
    }
    if (first) this.#emit("message", { id: frame.id, from: frame.from, body: frame.body, ts_ms: frame.ts_ms });
  }

  #settle(clientMsgId: string, act: (send: PendingSend) => void): void {
    const send = this.#pending.get(clientMsgId);
    if (!send) return;
    this.#pending.delete(clientMsgId);
    clearTimeout(send.timer);
    act(send);
  }

  #setState(state: State): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  #emit<K extends keyof RtcEvents>(name: K, value: Parameters<RtcEvents[K]>[0]): void {
    for (const handler of this.#handlers[name]) {
      try {
        (handler as (v: typeof value) => void)(value);
      } catch (e) {
        // An application's handler failing must not stop the client.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  // In browsers: a page that becomes visible, or a network that comes back,
  // cuts a backoff short.
  #listenToPage(): void {
    const g = globalThis as {
      document?: { visibilityState?: string; addEventListener?: EventTarget["addEventListener"]; removeEventListener?: EventTarget["removeEventListener"] };
      addEventListener?: EventTarget["addEventListener"];
      removeEventListener?: EventTarget["removeEventListener"];
    };
    const doc = g.document;
    if (!doc?.addEventListener || !g.addEventListener) return;
    const wake = () => {
      if (doc.visibilityState !== "hidden") this.#interrupt?.(true);
    };
    doc.addEventListener("visibilitychange", wake);
    g.addEventListener("online", wake);
    this.#unlisten = () => {
      doc.removeEventListener?.("visibilitychange", wake);
      g.removeEventListener?.("online", wake);
    };
  }

  #key(what: string): string {
    return `rtc-client:${this.user}:${what}`;
  }

  #load(): { lastId: ReturnType<typeof parseMessageId>; liveFrom: ReturnType<typeof parseMessageId>; sends: string[] } {
    const empty = { lastId: null, liveFrom: null, sends: [] };
    if (!this.#storage) return empty;
    try {
      const read = (what: string) => this.#storage?.getItem(this.#key(what)) ?? null;
      const lastId = read("last_id");
      const liveFrom = read("live_from");
      const sends: unknown = JSON.parse(read("sends") ?? "[]");
      return {
        lastId: lastId ? parseMessageId(lastId) : null,
        liveFrom: liveFrom ? parseMessageId(liveFrom) : null,
        sends: Array.isArray(sends) ? sends.filter((s): s is string => typeof s === "string") : [],
      };
    } catch {
      return empty;
    }
  }

  #save(what: string, value: string): void {
    try {
      this.#storage?.setItem(this.#key(what), value);
    } catch {
      // A full or refused storage only costs the resume across a reload.
    }
  }
}

/**
 * Writes a frame. A socket that is closing drops it (or throws, in some
 * implementations): the send stays pending and goes again on the next
 * session.
 */
function write(ws: WebSocketLike, frame: string): void {
  try {
    ws.send(frame);
  } catch {
    // Kept pending; see above.
  }
}

function baseUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RtcError("bad_options", `not a URL: ${url}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new RtcError("bad_options", `${url}: use http:// or https://`);
  }
  return url.replace(/\/+$/, "");
}

/** Makes `client_msg_id`s unique per sender across client instances and page loads. */
function randomPrefix(): string {
  const bytes = new Uint8Array(6);
  const crypto = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
