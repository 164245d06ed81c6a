// The per-lvol I/O gate: shared holders overlap, exclusive holders run alone, waiting exclusive
// holders are not starved by later shared ones, and the gate is released on failure.
import { describe, expect, it } from 'vitest';
import { IoGate } from '../../src/store/ioGate.ts';

/** A promise with its resolve function exposed. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => undefined;
  const promise = new Promise<void>((settle) => {
    resolve = settle;
  });
  return { promise, resolve };
}

/** Lets every pending promise continuation and one macrotask run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Work that logs its start and end and finishes when the test says so. */
function heldWork(log: string[], name: string) {
  const done = deferred();
  return {
    finish: done.resolve,
    work: async (): Promise<string> => {
      log.push(`${name} start`);
      await done.promise;
      log.push(`${name} end`);
      return name;
    },
  };
}

describe('IoGate', () => {
  it('runs shared holders at the same time', async () => {
    // Goal: data I/O on one lvol is not serialized.
    const gate = new IoGate();
    const log: string[] = [];
    const first = heldWork(log, 'r1');
    const second = heldWork(log, 'r2');
    const results = [gate.withShared(first.work), gate.withShared(second.work)];
    await settle();
    expect(log).toEqual(['r1 start', 'r2 start']);
    second.finish();
    first.finish();
    await expect(Promise.all(results)).resolves.toEqual(['r1', 'r2']);
  });

  it('starts an exclusive holder only after every shared holder in flight finished', async () => {
    // Goal: a snapshot waits for the writes in flight.
    const gate = new IoGate();
    const log: string[] = [];
    const first = heldWork(log, 'w1');
    const second = heldWork(log, 'w2');
    const exclusive = heldWork(log, 'snap');
    const all = [gate.withShared(first.work), gate.withShared(second.work), gate.withExclusive(exclusive.work)];
    await settle();
    first.finish();
    await settle();
    expect(log).not.toContain('snap start');
    second.finish();
    await settle();
    expect(log).toEqual(['w1 start', 'w2 start', 'w1 end', 'w2 end', 'snap start']);
    exclusive.finish();
    await Promise.all(all);
  });

  it('holds back shared arrivals behind a waiting exclusive holder, so I/O cannot starve it', async () => {
    // Goal: writer preference — a stream of writes cannot postpone a snapshot forever.
    const gate = new IoGate();
    const log: string[] = [];
    const early = heldWork(log, 'w1');
    const exclusive = heldWork(log, 'snap');
    const late = heldWork(log, 'w2');
    const all = [gate.withShared(early.work), gate.withExclusive(exclusive.work), gate.withShared(late.work)];
    await settle();
    expect(log).toEqual(['w1 start']);
    early.finish();
    await settle();
    expect(log).toEqual(['w1 start', 'w1 end', 'snap start']);
    exclusive.finish();
    await settle();
    expect(log.at(-1)).toBe('w2 start');
    late.finish();
    await Promise.all(all);
  });

  it('runs exclusive holders one at a time in arrival order, then wakes the shared run together', async () => {
    // Goal: FIFO among waiters; consecutive shared waiters are admitted as one group.
    const gate = new IoGate();
    const log: string[] = [];
    const a = heldWork(log, 'x1');
    const b = heldWork(log, 'x2');
    const r1 = heldWork(log, 'r1');
    const r2 = heldWork(log, 'r2');
    const c = heldWork(log, 'x3');
    const all = [
      gate.withExclusive(a.work),
      gate.withExclusive(b.work),
      gate.withShared(r1.work),
      gate.withShared(r2.work),
      gate.withExclusive(c.work),
    ];
    await settle();
    expect(log).toEqual(['x1 start']);
    a.finish();
    await settle();
    expect(log.at(-1)).toBe('x2 start');
    b.finish();
    await settle();
    expect(log.slice(-2)).toEqual(['r1 start', 'r2 start']);
    r1.finish();
    await settle();
    expect(log).not.toContain('x3 start');
    r2.finish();
    await settle();
    expect(log.at(-1)).toBe('x3 start');
    c.finish();
    await Promise.all(all);
  });

  it('releases the gate when the work fails and passes the error to the caller', async () => {
    // Goal: a failed write or snapshot never leaves the lvol's gate held.
    const gate = new IoGate();
    await expect(gate.withExclusive(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(gate.withShared(async () => Promise.reject(new Error('bang')))).rejects.toThrow('bang');
    await expect(gate.withExclusive(async () => 'after exclusive failure')).resolves.toBe('after exclusive failure');
    // A failure while others wait hands the gate on.
    const log: string[] = [];
    const failing = gate.withShared(async () => {
      await settle();
      throw new Error('late');
    });
    const waiting = gate.withExclusive(async () => {
      log.push('exclusive ran');
    });
    await expect(failing).rejects.toThrow('late');
    await waiting;
    expect(log).toEqual(['exclusive ran']);
  });
});
