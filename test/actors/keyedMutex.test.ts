// The priority router's locks: keyed sections, and the whole-mutex section an lvstore's delete,
// unload and shutdown take instead of 100,000 keys (issue 11).
import { describe, expect, it } from 'vitest';
import { KeyedMutex } from '../../src/actors/keyedMutex.ts';

function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

describe('KeyedMutex', () => {
  it('runs sections on the same key one after another, and on other keys at once', async () => {
    const mutex = new KeyedMutex();
    const order: string[] = [];
    const first = gate();
    const a = mutex.run(['x'], async () => {
      order.push('a in');
      await first.opened;
      order.push('a out');
    });
    const b = mutex.run(['x', 'y'], async () => void order.push('b'));
    const c = mutex.run(['z'], async () => void order.push('c'));
    await c;
    expect(order).toEqual(['a in', 'c']);
    first.open();
    await Promise.all([a, b]);
    expect(order).toEqual(['a in', 'c', 'a out', 'b']);
  });

  it('runs a whole section after the keyed ones holding keys, and keyed ones asked meanwhile after it', async () => {
    const mutex = new KeyedMutex();
    const order: string[] = [];
    const holder = gate();
    const whole = gate();
    const keyed = mutex.run(['x'], async () => {
      order.push('keyed in');
      await holder.opened;
      order.push('keyed out');
    });
    const all = mutex.runWhole(async () => {
      order.push('whole in');
      await whole.opened;
      order.push('whole out');
      return 7;
    });
    const later = mutex.run(['y'], async () => void order.push('later (other key)'));
    const laterWhole = mutex.runWhole(async () => void order.push('second whole'));
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual(['keyed in']);
    holder.open();
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual(['keyed in', 'keyed out', 'whole in']);
    whole.open();
    expect(await all).toBe(7);
    await Promise.all([keyed, later, laterWhole]);
    expect(order.slice(0, 4)).toEqual(['keyed in', 'keyed out', 'whole in', 'whole out']);
    expect(order.slice(4).sort()).toEqual(['later (other key)', 'second whole']);
  });

  it('releases the whole mutex when its section throws', async () => {
    const mutex = new KeyedMutex();
    await expect(mutex.runWhole(async () => Promise.reject(new Error('refused')))).rejects.toThrow('refused');
    expect(await mutex.run(['x'], async () => 'free')).toBe('free');
    expect(await mutex.runWhole(async () => 'free too')).toBe('free too');
  });
});
