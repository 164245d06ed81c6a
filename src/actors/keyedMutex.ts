// Exclusive sections keyed by lvol ids: a priority operation holds the lvols it touches while it
// preempts their checksums and does its work, so no new registration slips in between.

export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `work` holding every key; keys are taken in sorted order, so two sections never deadlock. */
  async run<T>(keys: Iterable<string>, work: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const waits: Promise<void>[] = [];
    for (const key of sorted) {
      const previous = this.tails.get(key);
      if (previous) waits.push(previous);
      this.tails.set(key, held);
    }
    try {
      await Promise.all(waits);
      return await work();
    } finally {
      release();
      for (const key of sorted) if (this.tails.get(key) === held) this.tails.delete(key);
    }
  }
}
