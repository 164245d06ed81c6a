// Goal: a device's I/O queue sends client I/O first: background reads start only when no
// foreground I/O is in flight, one at a time, never starve for good, and can be called off.
import { describe, expect, it } from 'vitest';
import { IoAbortedError, IoQueue } from '../../src/device/ioQueue.ts';

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('IoQueue', () => {
  it('starts background work synchronously when the device is free', () => {
    const queue = new IoQueue();
    let started = false;
    void queue.run('background', async () => {
      started = true;
    });
    expect(started).toBe(true);
  });

  it('holds background work while foreground I/O is in flight, then runs it', async () => {
    const queue = new IoQueue(1, 10_000);
    const foreground = gate();
    const order: string[] = [];
    const fg = queue.run('foreground', async () => {
      await foreground.promise;
      order.push('foreground');
    });
    const bg = queue.run('background', async () => void order.push('background'));
    await tick();
    expect(order).toEqual([]);
    expect(queue.stats()).toMatchObject({ foreground_in_flight: 1, background_waiting: 1 });
    foreground.open();
    await Promise.all([fg, bg]);
    expect(order).toEqual(['foreground', 'background']);
  });

  it('lets at most one background read run at a time, and foreground never waits for the queue', async () => {
    const queue = new IoQueue(1, 10_000);
    const first = gate();
    let running = 0;
    let most = 0;
    const work = async () => {
      running++;
      most = Math.max(most, running);
      await first.promise;
      running--;
    };
    const jobs = [queue.run('background', work), queue.run('background', work), queue.run('background', work)];
    let foregroundRan = false;
    await queue.run('foreground', async () => void (foregroundRan = true));
    expect(foregroundRan).toBe(true);
    first.open();
    await Promise.all(jobs);
    expect(most).toBe(1);
  });

  it('admits a background read that waited past the starvation bound under a steady foreground stream', async () => {
    const queue = new IoQueue(1, 20);
    const endless = gate();
    const fg = queue.run('foreground', () => endless.promise);
    let ran = false;
    await queue.run('background', async () => void (ran = true));
    expect(ran).toBe(true);
    endless.open();
    await fg;
  });

  it('calls off a waiting background read when its signal fires: it never runs', async () => {
    const queue = new IoQueue(1, 10_000);
    const foreground = gate();
    const fg = queue.run('foreground', () => foreground.promise);
    const abort = new AbortController();
    let ran = false;
    const bg = queue.run('background', async () => void (ran = true), abort.signal);
    abort.abort();
    await expect(bg).rejects.toBeInstanceOf(IoAbortedError);
    foreground.open();
    await fg;
    expect(ran).toBe(false);
    expect(queue.stats()).toMatchObject({ background_waiting: 0, background_in_flight: 0 });
  });

  it('gives the slot back when background work fails', async () => {
    const queue = new IoQueue();
    await expect(queue.run('background', async () => Promise.reject(new Error('EIO')))).rejects.toThrow('EIO');
    expect(queue.stats().background_in_flight).toBe(0);
    await expect(queue.run('background', async () => 7)).resolves.toBe(7);
  });
});
