// A per-lvol gate: data I/O shares it, operations that move clusters (snapshot, resize, delete) hold it alone.

export class IoGate {
  private sharedCount = 0;
  private exclusiveHeld = false;
  private readonly waiters: Array<{ exclusive: boolean; wake: () => void }> = [];

  async withShared<T>(work: () => Promise<T>): Promise<T> {
    // Writers (exclusive holders) waiting go first, so a stream of I/O cannot starve a snapshot.
    if (this.exclusiveHeld || this.waiters.length > 0) await this.wait(false);
    else this.sharedCount++;
    try {
      return await work();
    } finally {
      this.sharedCount--;
      this.wakeNext();
    }
  }

  async withExclusive<T>(work: () => Promise<T>): Promise<T> {
    if (this.exclusiveHeld || this.sharedCount > 0 || this.waiters.length > 0) await this.wait(true);
    else this.exclusiveHeld = true;
    try {
      return await work();
    } finally {
      this.exclusiveHeld = false;
      this.wakeNext();
    }
  }

  private wait(exclusive: boolean): Promise<void> {
    return new Promise((wake) => this.waiters.push({ exclusive, wake }));
  }

  // Grants the gate to the next waiter(s): one exclusive holder, or every shared waiter in a row.
  private wakeNext(): void {
    if (this.exclusiveHeld || this.sharedCount > 0) return;
    const first = this.waiters[0];
    if (!first) return;
    if (first.exclusive) {
      this.waiters.shift();
      this.exclusiveHeld = true;
      first.wake();
      return;
    }
    while (this.waiters[0] && !this.waiters[0].exclusive) {
      this.sharedCount++;
      this.waiters.shift()!.wake();
    }
  }
}
