// The wire protocol of rtc's socket nodes, as a client sees it. The Rust
// definitions (rtc-core's `protocol` module) are the source; the test
// vectors in `core/protocol-vectors.json` check that both agree.

/** A message id: `<partition>:<offset>`, increasing per user. */
export interface MessageId {
  partition: number;
  offset: number;
}

const ID = /^(0|[1-9][0-9]*):(0|[1-9][0-9]*)$/;

/** Parses `P:O`; `null` for anything else (offsets above 2^53 too). */
export function parseMessageId(text: string): MessageId | null {
  const m = ID.exec(text);
  if (!m) return null;
  const partition = Number(m[1]);
  const offset = Number(m[2]);
  if (!Number.isSafeInteger(partition) || !Number.isSafeInteger(offset) || partition > 0xffffffff) return null;
  return { partition, offset };
}

export function formatMessageId(id: MessageId): string {
  return `${id.partition}:${id.offset}`;
}

/**
 * Whether `id` is new after `last`: ids only grow within a partition, so
 * the whole dedupe is one comparison. Another partition (the topic's
 * partition count changed) starts over.
 */
export function isNew(last: MessageId | null, id: MessageId): boolean {
  return last === null || last.partition !== id.partition || id.offset > last.offset;
}

/**
 * What a connect URL carries to resume: the last id, else a welcome's
 * `live_from`; but a disconnect's `through` when that is further on (or in
 * another partition: the newer session's).
 */
export function resumePoint(
  last: MessageId | null,
  liveFrom: MessageId | null,
  through: MessageId | null = null,
): ["last_id" | "from_id", MessageId] | null {
  const base: ["last_id" | "from_id", MessageId] | null = last
    ? ["last_id", last]
    : liveFrom
      ? ["from_id", liveFrom]
      : null;
  if (!through) return base;
  if (!base || base[1].partition !== through.partition) return ["from_id", through];
  const start = base[0] === "last_id" ? base[1].offset + 1 : base[1].offset;
  return through.offset > start ? ["from_id", through] : base;
}

/**
 * Whether a WebSocket close code means "come back": 1000–2999 and
 * 4000–4499 do; 4500 and above (and 3000–3999) are final.
 */
export function reconnectsAfter(code: number): boolean {
  return (code >= 1000 && code < 3000) || (code >= 4000 && code < 4500);
}

export type CloseReason = "rebalance" | "drain" | "shutdown" | "slow" | "idle" | "unavailable";

export type ServerFrame =
  | { type: "welcome"; node_id: string; user: string; partition: number; epoch: number; live_from?: string }
  | { type: "message"; id: string; from: string | null; body: string; ts_ms: number; client_msg_id?: string }
  | { type: "resumed"; recovered: boolean; replayed: number; last_id?: string; from_id?: string; reason: string | null }
  | { type: "ack"; client_msg_id: string; id: string }
  | { type: "disconnect"; reason: CloseReason; reconnect: boolean; retry_after_ms: number; through?: string }
  | { type: "error"; code: string; message: string; client_msg_id?: string };

export type ClientFrame =
  | { type: "send"; to: string; body: string; client_msg_id?: string }
  | { type: "resume"; last_id?: string };

const isString = (v: unknown): v is string => typeof v === "string";
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/**
 * Parses one server text frame; `null` when it is not one this client
 * understands (unknown types and fields are ignored, as the protocol says).
 */
export function parseServerFrame(text: string): ServerFrame | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null) return null;
  const f = v as Record<string, unknown>;
  switch (f.type) {
    case "welcome":
      if (!isString(f.node_id) || !isString(f.user) || !isCount(f.partition) || !isCount(f.epoch)) return null;
      if (f.live_from !== undefined && !isString(f.live_from)) return null;
      return {
        type: "welcome", node_id: f.node_id, user: f.user, partition: f.partition, epoch: f.epoch,
        ...(isString(f.live_from) ? { live_from: f.live_from } : {}),
      };
    case "message":
      // `from` is null (or absent) for records produced without the
      // rtc-from header.
      if (!isString(f.id) || !isString(f.body) || !isCount(f.ts_ms)) return null;
      if (f.from !== undefined && f.from !== null && !isString(f.from)) return null;
      if (f.client_msg_id !== undefined && !isString(f.client_msg_id)) return null;
      return {
        type: "message", id: f.id, from: isString(f.from) ? f.from : null, body: f.body, ts_ms: f.ts_ms,
        ...(isString(f.client_msg_id) ? { client_msg_id: f.client_msg_id } : {}),
      };
    case "resumed":
      if (typeof f.recovered !== "boolean" || !isCount(f.replayed)) return null;
      return {
        type: "resumed", recovered: f.recovered, replayed: f.replayed,
        ...(isString(f.last_id) ? { last_id: f.last_id } : {}),
        ...(isString(f.from_id) ? { from_id: f.from_id } : {}),
        reason: isString(f.reason) ? f.reason : null,
      };
    case "ack":
      if (!isString(f.client_msg_id) || !isString(f.id)) return null;
      return { type: "ack", client_msg_id: f.client_msg_id, id: f.id };
    case "disconnect":
      if (!isString(f.reason) || typeof f.reconnect !== "boolean" || !isCount(f.retry_after_ms)) return null;
      if (f.through !== undefined && !isString(f.through)) return null;
      return {
        type: "disconnect", reason: f.reason as CloseReason, reconnect: f.reconnect, retry_after_ms: f.retry_after_ms,
        ...(isString(f.through) ? { through: f.through } : {}),
      };
    case "error":
      if (!isString(f.code) || !isString(f.message)) return null;
      return {
        type: "error", code: f.code, message: f.message,
        ...(isString(f.client_msg_id) ? { client_msg_id: f.client_msg_id } : {}),
      };
    default:
      return null;
  }
}

export function renderClientFrame(frame: ClientFrame): string {
  return JSON.stringify(frame);
}
