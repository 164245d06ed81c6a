// Goal: payload memory is reserved before it is allocated; what does not fit waits, in order.
import { describe, expect, it } from 'vitest';
import { ByteBudget } from '../../src/transport/byteBudget.ts';

describe('ByteBudget', () => {
  it('grants at once within the capacity and makes later requests wait, first come first served', async () => {
    const budget = new ByteBudget(100);
    const first = await budget.reserve(60);
    const order: string[] = [];
    const second = budget.reserve(50).then((release) => (order.push('second'), release));
    const third = budget.reserve(10).then((release) => (order.push('third'), release));
    await new Promise((resolve) => setImmediate(resolve));
    // The small third request fits, but does not overtake the waiting second one.
    expect(order).toEqual([]);
    expect(budget.inUseBytes).toBe(60);
    first();
    (await second)();
    (await third)();
    expect(order).toEqual(['second', 'third']);
    expect(budget.inUseBytes).toBe(0);
  });

  it('releases once, however often release is called', async () => {
    const budget = new ByteBudget(10);
    const release = await budget.reserve(10);
    release();
    release();
    expect(budget.inUseBytes).toBe(0);
  });

  it('tryReserve grants only what fits with nobody waiting, and counts the peak', async () => {
    const budget = new ByteBudget(100);
    const first = budget.tryReserve(70);
    expect(first).toBeDefined();
    expect(budget.tryReserve(40)).toBeUndefined();
    const waiting = budget.reserve(40);
    // 20 bytes would fit, but a waiter is ahead: no overtaking through the fast path either.
    expect(budget.tryReserve(20)).toBeUndefined();
    first!();
    (await waiting)();
    expect(budget.inUseBytes).toBe(0);
    expect(budget.peakBytes).toBe(70);
  });
});
