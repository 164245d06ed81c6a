// Goal: the scheduler's persistent queue keeps arrival order and positions through any changes,
// never changes a queue it was made from, and stays a balanced tree (O(log n) per change) even in
// the pattern a FIFO makes: every arrival at one end, every departure at the other.
import { describe, expect, it } from 'vitest';
import { WalkQueue } from '../../src/machines/walkQueue.ts';
import { seededRandom } from '../seededRandom.ts';

/** The height a weight-balanced tree (delta 3) may reach at `size` nodes: log base 4/3 of the size, plus one. */
function heightBound(size: number): number {
  return Math.ceil(Math.log(size + 1) / Math.log(4 / 3)) + 1;
}

describe('WalkQueue', () => {
  it('stays balanced when walks join at the end and leave from the front, 16,000 at a time', () => {
    // An unbalanced search tree would degenerate into a list here (height = length).
    let queue = WalkQueue.empty;
    for (let index = 0; index < 16_000; index++) queue = queue.push(`walk-${index}`);
    expect(queue.length).toBe(16_000);
    expect(queue.height()).toBeLessThanOrEqual(heightBound(16_000));
    expect(queue.height()).toBeLessThan(40);
    for (let round = 0; round < 8_000; round++) {
      const { taken, rest } = queue.takeFirst(1);
      expect(taken).toEqual([`walk-${round}`]);
      queue = rest.push(`late-${round}`);
    }
    expect(queue.height()).toBeLessThanOrEqual(heightBound(queue.length));
    expect(queue.position('walk-8000')).toBe(1);
    expect(queue.position('late-0')).toBe(8_001);
    expect(queue.position('walk-0')).toBeNull();
  });

  it('keeps order and positions when walks leave from anywhere, and never changes an older queue', () => {
    const random = seededRandom(21);
    let queue = WalkQueue.empty;
    let model: string[] = [];
    const kept: Array<[WalkQueue, string[]]> = [];
    for (let step = 0; step < 4000; step++) {
      const id = `w${Math.floor(random() * 300)}`;
      if (model.includes(id)) {
        queue = queue.remove(id);
        model = model.filter((each) => each !== id);
      } else {
        queue = queue.push(id);
        model.push(id);
      }
      if (step % 500 === 0) kept.push([queue, [...model]]);
      expect(queue.length).toBe(model.length);
    }
    expect(queue.toArray()).toEqual(model);
    for (const [index, id] of model.entries()) expect(queue.position(id)).toBe(index + 1);
    expect(queue.height()).toBeLessThanOrEqual(heightBound(queue.length));
    for (const [old, ids] of kept) expect(old.toArray()).toEqual(ids);
  });

  it('takes the first walks in line, fewer when fewer wait', () => {
    const queue = ['a', 'b', 'c'].reduce((each, id) => each.push(id), WalkQueue.empty);
    expect(queue.takeFirst(2).taken).toEqual(['a', 'b']);
    expect(queue.takeFirst(2).rest.toArray()).toEqual(['c']);
    expect(queue.takeFirst(5).taken).toEqual(['a', 'b', 'c']);
    expect(queue.takeFirst(5).rest.length).toBe(0);
    expect(queue.remove('x')).toBe(queue);
    expect(queue.first(2)).toEqual(['a', 'b']);
  });

  it('refuses a walk that is already in line (a programmer error: the machine checks first)', () => {
    expect(() => WalkQueue.empty.push('a').push('a')).toThrow('key inserted twice');
  });
});
