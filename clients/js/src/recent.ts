// Drops the second copy of a retried send. A client whose session ends
// before a send's ack sends it again under the same `client_msg_id`; if the
// first copy had reached the log, the recipient gets both under two ids.
// The pair (sender, client_msg_id) names the send: only its first copy is
// delivered. rtc-core's `RecentSends` is the same rule.

/** Pairs remembered; a retry follows its first copy within seconds. */
export const RECENT_SENDS = 1024;

export class RecentSends {
  readonly #seen = new Set<string>();
  readonly #limit: number;

  constructor(pairs: Iterable<string> = [], limit = RECENT_SENDS) {
    this.#limit = Math.max(1, limit);
    for (const pair of pairs) this.#remember(pair);
  }

  /** Whether a message is the first copy of its send; remembers it. */
  firstCopy(from: string | null, clientMsgId: string | undefined): boolean {
    if (from === null || clientMsgId === undefined) return true;
    const pair = `${from}\n${clientMsgId}`;
    if (this.#seen.has(pair)) return false;
    this.#remember(pair);
    return true;
  }

  /** The newest `n` pairs, oldest first (what a page keeps across a reload). */
  newest(n: number): string[] {
    const all = [...this.#seen];
    return all.slice(Math.max(0, all.length - n));
  }

  #remember(pair: string): void {
    this.#seen.add(pair);
    // A Set iterates in insertion order: the first is the oldest.
    while (this.#seen.size > this.#limit) {
      const oldest = this.#seen.values().next().value;
      if (oldest === undefined) break;
      this.#seen.delete(oldest);
    }
  }
}
