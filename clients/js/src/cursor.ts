// Where the client is in its user's messages: the last id it delivered
// (dedupe is one comparison) and the first welcome's `live_from`; together
// they name the resume point of the next connect.

import { formatMessageId, isNew, type MessageId, resumePoint } from "./protocol.js";

export class Cursor {
  #last: MessageId | null;
  #liveFrom: MessageId | null = null;

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
    const fresh = isNew(this.#last, id);
    if (fresh) this.#last = id;
    return fresh;
  }

  /** Notes a welcome's `live_from`; only the first counts. */
  welcomed(liveFrom: MessageId): void {
    this.#liveFrom ??= liveFrom;
  }

  /** What the connect URL adds after the token: `&last_id=P:O`, `&from_id=P:O` or nothing. */
  query(): string {
    const point = resumePoint(this.#last, this.#liveFrom);
    return point ? `&${point[0]}=${formatMessageId(point[1])}` : "";
  }
}
