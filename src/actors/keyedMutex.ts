// Exclusive sections keyed by lvol ids: a priority operation holds the lvols it touches while it
// preempts their checksums and does its work, so no new registration slips in between.
//
// An operation on a whole lvstore or node (delete or unload an lvstore, shutdown) takes the whole
// mutex instead: taking 100,000 keys one by one held the event loop for ~50 ms, and such an
// operation is rare enough that holding every key costs nothing.

export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();
  /** Set while a whole-mutex section waits or runs: keyed sections wait for it. */
  private whole: Promise<void> | undefined;

  /**
   * Runs `work` holding every key. All of its keys are taken in one synchronous pass, so two
   * sections never wait on each other in a cycle (the sort only makes the order deterministic).
   * Not to be called from inside a `runWhole` section: it would wait for that section to end.
   */
  async run<T>(keys: Iterable<string>, work: () => Promise<T>): Promise<T> {
    while (this.whole) await this.whole;
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

  /** Runs `work` holding every key there is or will be: it waits for the sections now holding keys. */
  async runWhole<T>(work: () => Promise<T>): Promise<T> {
    while (this.whole) await this.whole;
    let release!: () => void;
    this.whole = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      // Each key's tail settles after every earlier section on it: these are all that hold keys.
      await Promise.all(this.tails.values());
      return await work();
    } finally {
      this.whole = undefined;
      release();
    }
  }
}
