// Clock, randomness and ids, injected so tests can run on a simulated clock with a fixed seed.
import { randomUUID } from 'node:crypto';

export interface Runtime {
  nowMs(): number;
  uuid(): string;
  /** Resolves after a macrotask: real I/O or an explicit yield, never a microtask. */
  yieldMacrotask(): Promise<void>;
}

export const systemRuntime: Runtime = {
  nowMs: () => Date.now(),
  uuid: () => randomUUID(),
  yieldMacrotask: () => new Promise((resolve) => setImmediate(resolve)),
};

/** A deterministic runtime for tests: a counter clock and seeded ids. */
export function seededRuntime(seed: number, startMs = 1_700_000_000_000): Runtime {
  let state = seed >>> 0 || 1;
  let nowMs = startMs;
  const next = (): number => {
    // xorshift32: small, fast and good enough for ids in tests.
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const hex = (count: number): string => {
    let out = '';
    while (out.length < count) out += next().toString(16).padStart(8, '0');
    return out.slice(0, count);
  };
  return {
    nowMs: () => (nowMs += 1),
    uuid: () => `${hex(8)}-${hex(4)}-4${hex(3)}-8${hex(3)}-${hex(12)}`,
    yieldMacrotask: () => new Promise((resolve) => setImmediate(resolve)),
  };
}
