// RtcClient: one user's connection. A single loop owns it: ask a load
// balancer for the route, open the socket, serve the session, and when it
// ends wait (the server's retry_after_ms, or jittered backoff) and go again
// with the resume point. Pure pieces (frames, ids, backoff, cursor) live in
// their own modules and are tested against rtc-core's vectors.

import { Backoff } from "./backoff.js";
import { Cursor } from "./cursor.js";
import {
  formatMessageId,
  isNew,
  type MessageId,
  parseMessageId,
  parseServerFrame,
  reconnectsAfter,
  renderClientFrame,
} from "./protocol.js";
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
 * `send_timeout`, `too_many_sends`, `duplicate_send`, or a server's error
 * code (`send_failed`, `bad_frame`, …). A failed send's error names its
 * `clientMsgId`: sending again under it is delivered at most once.
 */
export class RtcError extends Error {
  readonly code: string;
  readonly status: number | undefined;
  readonly clientMsgId: string | undefined;

  constructor(code: string, message: string, details: { status?: number; clientMsgId?: string } = {}) {
    super(message);
    this.name = "RtcError";
    this.code = code;
    this.status = details.status;
    this.clientMsgId = details.clientMsgId;
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

/**
 * The part of the WebSocket API the client uses (the browser's, `ws`,
 * undici's). The handlers' events are `any` so that each of those classes,
 * with its own event types, fits (`test/types` checks it); the client reads
 * `data` of a message and `code` of a close.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
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
  /** A send not acknowledged this long after it first went out fails with `send_timeout`. */
  sendTimeoutMs?: number;
  /** Uniform in [0, 1): the jitter's source (tests pass their own). */
  random?: () => number;
}

/** Sends waiting for their ack; beyond this, `send` fails at once. */
const MAX_PENDING_SENDS = 1000;
/**
 * Sends written and not yet acknowledged. The rest wait: a session's first
 * moments (every send queued during an outage) stay well under the node's
 * burst (`RTC_SEND_RATE`, 100 by default).
 */
const SEND_WINDOW = 32;
/** After the node said `rate_limited`, writing sends waits this long (its bucket refills in 1 s). */
const RATE_LIMIT_PAUSE_MS = 1000;
/** After a `disconnect`, how long to wait for the server's close. */
const CLOSE_WAIT_MS = 1000;
/** Recent sends a page keeps in `storage`. */
const STORED_SENDS = 64;
const MAX_ROUTE_ANSWER = 64 * 1024;

interface PendingSend {
  frame: string;
  resolve: (id: string) => void;
  reject: (error: RtcError) => void;
  /** Runs from the first write: time spent disconnected is not the server's. */
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Written on the current session, not yet acknowledged. */
  written: boolean;
  /** Written on some session before. */
  wentOut: boolean;
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
  /** Sends written again: after a session lost before their ack, or a `rate_limited` refusal. */
  resends = 0;
  /** Second copies of a retried send that reached the log twice, not delivered. */
  duplicatesDropped = 0;

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
  /** The socket of the session open now (welcomed), where sends go. */
  #live: WebSocketLike | null = null;
  #inFlight = 0;
  #sendsPausedUntil = 0;
  #pumpTimer: ReturnType<typeof setTimeout> | undefined;
  /** Aborts the route request (and `getRouteAuth`) under way. */
  #routeAbort: AbortController | null = null;
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
    this.#routeAbort?.abort();
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
  send(to: string, body: string, options: { clientMsgId?: string } = {}): Promise<string> {
    let clientMsgId = options.clientMsgId;
    const refuse = (code: string, message: string) => Promise.reject(new RtcError(code, message, { clientMsgId }));
    if (this.#closing) return refuse("closed", "the client is closed");
    if (this.#pending.size >= MAX_PENDING_SENDS) return refuse("too_many_sends", `${MAX_PENDING_SENDS} sends wait for their ack`);
    if (clientMsgId === undefined) {
      this.#sends += 1;
      clientMsgId = `${this.#sendPrefix}-${this.#sends}`;
    } else if (!clientMsgId || this.#pending.has(clientMsgId)) {
      return refuse("duplicate_send", `client_msg_id ${JSON.stringify(clientMsgId)} is empty or already waiting`);
    }
    const id = clientMsgId;
    return new Promise((resolve, reject) => {
      const frame = renderClientFrame({ type: "send", to, body, client_msg_id: id });
      this.#pending.set(id, { frame, resolve, reject, timer: undefined, written: false, wentOut: false });
      this.#pump();
    });
  }

  /**
   * Writes waiting sends, oldest first, while the session is open, the
   * window has room and the node has not just said `rate_limited`.
   */
  #pump(): void {
    const ws = this.#live;
    if (!ws) return;
    const wait = this.#sendsPausedUntil - Date.now();
    if (wait > 0) {
      this.#pumpTimer ??= setTimeout(() => {
        this.#pumpTimer = undefined;
        this.#pump();
      }, wait);
      return;
    }
    for (const [id, send] of this.#pending) {
      if (this.#inFlight >= SEND_WINDOW) return;
      if (send.written) continue;
      send.written = true;
      this.#inFlight += 1;
      if (send.wentOut) this.resends += 1;
      send.wentOut = true;
      send.timer ??= setTimeout(() => {
        this.#settle(id, (s) => s.reject(new RtcError("send_timeout", `no ack within ${this.#sendTimeoutMs} ms`, { clientMsgId: id })));
      }, this.#sendTimeoutMs);
      write(ws, send.frame);
    }
  }

  /** The session ended: what it had written and not acknowledged goes again on the next. */
  #sessionEnded(): void {
    this.#live = null;
    this.#inFlight = 0;
    for (const send of this.#pending.values()) send.written = false;
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
      this.#sessionEnded();
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
    clearTimeout(this.#pumpTimer);
    this.#sessionEnded();
    for (const [id, send] of this.#pending) {
      clearTimeout(send.timer);
      send.reject(new RtcError("closed", "the client is closed", { clientMsgId: id }));
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
    let atLeast = 0;
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
      if (answer.final) {
        // It answered for the fleet (an exact wait) or about this client
        // (4xx): the others share its assignment and would say the same.
        this.#routeIndex = index;
        return { retry: answer.retry };
      }
      // Unreachable, a 5xx without a wait, not a route: maybe only this
      // load balancer (or a proxy before it) is in trouble.
      atLeast = Math.max(atLeast, answer.retry.ms);
    }
    if (!route) return { retry: { ms: atLeast, exact: false } };
    const opened = await this.#open(route.connectUrl + this.#cursor.query());
    if (!opened && !this.#closing) this.#emit("error", new RtcError("connect_failed", `no session at node ${route.nodeId}`));
    return opened ?? { retry: { ms: 0, exact: false } };
  }

  /**
   * Asks one load balancer for the route. `final` on a refusal that the
   * other load balancers would repeat.
   */
  async #route(index: number): Promise<Route | { error: RtcError; retry: Retry; final: boolean }> {
    const base = this.#routeUrls[index] ?? "";
    const url = `${base}/v1/route?user=${encodeURIComponent(this.user)}`;
    const failed = (code: string, message: string, retry: Retry = { ms: 0, exact: false }, status?: number) => ({
      error: new RtcError(code, `${url}: ${message}`, { status }),
      retry,
      final: retry.exact || (status !== undefined && status >= 400 && status < 500),
    });
    // One deadline for getRouteAuth and the request; close() aborts both.
    const abort = new AbortController();
    this.#routeAbort = abort;
    const timer = setTimeout(() => abort.abort(), this.#connectTimeoutMs);
    const aborted = new Promise<never>((_, reject) => {
      abort.signal.addEventListener("abort", () => reject(new Error("aborted (timeout or close)")));
    });
    aborted.catch(() => {});
    const headers: Record<string, string> = { accept: "application/json" };
    let status: number;
    let retryAfter: string | null;
    let text: string;
    try {
      try {
        const auth = await Promise.race([Promise.resolve().then(() => this.#getRouteAuth?.()), aborted]);
        if (auth) headers.authorization = auth;
      } catch (e) {
        return failed("auth_failed", `getRouteAuth failed: ${String(e)}`);
      }
      try {
        const response = await Promise.race([this.#fetch(url, { headers, signal: abort.signal }), aborted]);
        status = response.status;
        retryAfter = response.headers.get("retry-after");
        text = await Promise.race([response.text(), aborted]);
      } catch (e) {
        return failed("route_unreachable", String(e));
      }
    } finally {
      clearTimeout(timer);
      this.#routeAbort = null;
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
        closeQuietly(ws);
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
      // Browsers follow an error with a close. Node 20's WebSocket (undici)
      // reports a refused connection with an error alone and stays
      // CONNECTING: waiting for the close would wait for the connect timeout.
      ws.onerror = () => {
        if (!welcomed) {
          closeQuietly(ws);
          return fail();
        }
        closeWait ??= setTimeout(() => {
          closeQuietly(ws);
          finish(goodbye ?? { kind: "closed", code: 1006, at: Date.now() });
        }, CLOSE_WAIT_MS);
      };
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
          this.#cursor.welcomed(frame.live_from ? parseMessageId(frame.live_from) : null);
          this.#saveCursor();
          this.session = { nodeId: frame.node_id, partition: frame.partition, epoch: frame.epoch };
          opened({ ended }); // wrapped: a promise resolved with a promise would wait for it
          // Sends waiting (new, or unacknowledged by the last session) go
          // before the state event, so one sent from its handler goes once.
          this.#live = ws;
          this.#pump();
          this.#setState("connected");
          return;
        }
        switch (frame.type) {
          case "message":
            return this.#deliver(frame);
          case "resumed":
            this.#cursor.resumed(frame.recovered);
            this.#saveCursor();
            return this.#emit("recovered", { recovered: frame.recovered, reason: frame.reason });
          case "ack":
            return this.#settle(frame.client_msg_id, (send) => send.resolve(frame.id));
          case "error": {
            const id = frame.client_msg_id;
            const send = id === undefined ? undefined : this.#pending.get(id);
            if (send && frame.code === "rate_limited") return this.#rateLimited(send);
            const error = new RtcError(frame.code, frame.message, { clientMsgId: id });
            if (send && id !== undefined) return this.#settle(id, (s) => s.reject(error));
            return this.#emit("error", error);
          }
          case "disconnect":
            if (goodbye) return;
            this.#cursor.disconnected(frame.through ? parseMessageId(frame.through) : null);
            goodbye = { kind: "disconnect", reconnect: frame.reconnect, retryAfterMs: frame.retry_after_ms, at: Date.now() };
            // Sends wait for the next session: this one is ending.
            this.#live = null;
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
    this.#saveLastId(id);
    if (first && frame.client_msg_id !== undefined) {
      this.#save("sends", JSON.stringify(this.#recent.newest(STORED_SENDS)));
    }
    if (!first) this.duplicatesDropped += 1;
    if (first) this.#emit("message", { id: frame.id, from: frame.from, body: frame.body, ts_ms: frame.ts_ms });
  }

  #settle(clientMsgId: string, act: (send: PendingSend) => void): void {
    const send = this.#pending.get(clientMsgId);
    if (!send) return;
    this.#pending.delete(clientMsgId);
    clearTimeout(send.timer);
    if (send.written) this.#inFlight -= 1;
    act(send);
    this.#pump();
  }

  /**
   * The node refused a send for its rate: it was not produced, so it is
   * written again, under its id, once the node's bucket has refilled. Failing
   * it instead would make the application send again under a new id, and a
   * first copy that did reach the log (an earlier session's) would then be
   * delivered twice.
   */
  #rateLimited(send: PendingSend): void {
    if (send.written) {
      send.written = false;
      this.#inFlight -= 1;
    }
    this.#sendsPausedUntil = Date.now() + RATE_LIMIT_PAUSE_MS;
    this.#pump();
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

  #load(): { lastId: MessageId | null; liveFrom: MessageId | null; sends: string[] } {
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

  /** The resume point after a welcome or `resumed`. */
  #saveCursor(): void {
    const liveFrom = this.#cursor.liveFrom;
    if (liveFrom) this.#save("live_from", formatMessageId(liveFrom));
    // A resume that could not recover gave up the last id.
    if (this.#cursor.lastId === null && this.#storage?.getItem(this.#key("last_id"))) this.#save("last_id", "");
  }

  /**
   * Stores a delivered id unless the stored one is newer: tabs of one user
   * share `localStorage`, and one behind must not move the others back.
   */
  #saveLastId(id: MessageId): void {
    let stored: MessageId | null = null;
    try {
      const text = this.#storage?.getItem(this.#key("last_id"));
      stored = text ? parseMessageId(text) : null;
    } catch {
      stored = null;
    }
    if (stored && !isNew(stored, id)) return;
    this.#save("last_id", formatMessageId(id));
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

/** Closes a socket that may be failing already (some implementations throw then). */
function closeQuietly(ws: WebSocketLike): void {
  try {
    ws.close(1000, "");
  } catch {
    // It is closed or failing: nothing to do.
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
