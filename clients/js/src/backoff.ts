// When to reconnect: capped exponential backoff with full jitter, as
// centrifuge-js does it. Pure: the random number comes in, so it is tested.

export class Backoff {
  readonly minMs: number;
  readonly maxMs: number;
  #step = 0;

  /** `maxMs` below `minMs` is raised to it. */
  constructor(minMs: number, maxMs: number) {
    this.minMs = Math.max(0, minMs);
    this.maxMs = Math.max(this.minMs, maxMs);
  }

  /**
   * The delay after `step` failures in a row for `unit` uniform in [0, 1):
   * `min(max, min + unit · min(max, min · 2^step))`.
   */
  delay(step: number, unit: number): number {
    const u = Number.isFinite(unit) ? Math.min(Math.max(unit, 0), 1) : 0;
    const span = Math.min(this.minMs * 2 ** Math.min(step, 31), this.maxMs);
    return Math.min(this.minMs + span * u, this.maxMs);
  }

  /** The delay before the next attempt; counts one more failure. */
  next(unit: number = Math.random()): number {
    const d = this.delay(this.#step, unit);
    this.#step += 1;
    return d;
  }

  /** Failures in a row since the last session opened. */
  get step(): number {
    return this.#step;
  }

  /** A session opened: the next failure starts from `min` again. */
  reset(): void {
    this.#step = 0;
  }
}
