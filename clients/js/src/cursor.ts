// Where the client is in its user's messages: the last id it delivered
// (dedupe is one comparison), a welcome's `live_from` and a move's
// `through`; together they name the resume point of the next connect. The
// same rules as rtc-core's `protocol::Cursor`, checked by the same vectors.

import { formatMessageId, isNew, type MessageId, resumePoint } from "./protocol.js";

export class Cursor {
  #last: MessageId | null;
  #liveFrom: MessageId | null;
  #sessionLiveFrom: MessageId | null = null;
  #through: MessageId | null = null;

  /**
   * Starts after `last` (an id the application processed before), or from
   * `liveFrom` (a welcome seen before any message, e.g. before a reload),
   * or from nothing.
   */
  constructor(last: MessageId | null = null, liveFrom: MessageId | null = null) {
    this.#last = last;
    this.#liveFrom = liveFrom;
  }

  get lastId(): MessageId | null {
    return this.#last;
  }

  get liveFrom(): MessageId | null {
    return this.#liveFrom;
  }

  /** Whether `id` is new; a new id becomes the last one. */
  accept(id: MessageId): boolean {
    this.#dropThroughOutside(id.partition);
    const fresh = isNew(this.#last, id);
    if (fresh) this.#last = id;
    return fresh;
  }

  /**
   * A session's welcome and its `live_from`. Until the session's `resumed`,
   * the records before it that the resume asked for are not all delivered:
   * an earlier live start is kept.
   */
  welcomed(liveFrom: MessageId | null): void {
    if (liveFrom) this.#dropThroughOutside(liveFrom.partition);
    this.#sessionLiveFrom = liveFrom;
    this.#liveFrom ??= liveFrom;
  }

  /**
   * The session's `resumed`: the replay is over. Without a delivered
   * message, or when it could not recover (the gap is given up), this
   * session's live start becomes the resume point; the old one would scan
   * further back each time, or be refused on every connect.
   */
  resumed(recovered: boolean): void {
    if (!recovered) this.#last = null;
    if (this.#last === null && this.#sessionLiveFrom) this.#liveFrom = this.#sessionLiveFrom;
  }

  /**
   * A `disconnect` frame's `through`: every message below it was sent
   * before the frame. An absent one changes nothing (an earlier one holds).
   */
  disconnected(through: MessageId | null): void {
    if (through) this.#through = through;
  }

  /**
   * A `through` of another partition than the user's now is stale (the
   * partition count changed): resuming from it would be refused as
   * `wrong_partition` on every connect, each time giving up the last id.
   */
  #dropThroughOutside(partition: number): void {
    if (this.#through && this.#through.partition !== partition) this.#through = null;
  }

  /** What the connect URL adds after the token: `&last_id=P:O`, `&from_id=P:O` or nothing. */
  query(): string {
    const point = resumePoint(this.#last, this.#liveFrom, this.#through);
    return point ? `&${point[0]}=${formatMessageId(point[1])}` : "";
  }
}
