// Goal: the scheduler machine admits walks first come first served up to its cap, and its state
// says whether walks are waiting — tested purely with transition(), and against a plain model.
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { type SchedulerEvent, schedulerMachine } from '../../src/machines/schedulerMachine.ts';
import { seededRandom } from '../seededRandom.ts';

type Snapshot = ReturnType<typeof initialTransition<typeof schedulerMachine>>[0];

function run(snapshot: Snapshot, ...events: SchedulerEvent[]): Snapshot {
  return events.reduce((current, event) => transition(schedulerMachine, current, event)[0], snapshot);
}

const request = (lvolId: string): SchedulerEvent => ({ type: 'walk.request', lvolId });
const release = (lvolId: string): SchedulerEvent => ({ type: 'walk.release', lvolId });
/** The context with its queue as a plain array, in line order (the machine keeps a persistent queue). */
const view = (snapshot: Snapshot) => ({ ...snapshot.context, queue: snapshot.context.queue.toArray() });
const initial = (maxConcurrent = 2) => initialTransition(schedulerMachine, { maxConcurrent, rateBytesPerSec: 0 })[0];

describe('schedulerMachine (pure transitions)', () => {
  it('starts idle with nothing queued', () => {
    expect(initial().value).toBe('idle');
    expect(view(initial())).toMatchObject({ queue: [], running: [] });
  });

  it('admits up to the cap at once and queues the rest in arrival order', () => {
    const snapshot = run(initial(2), request('a'), request('b'), request('c'), request('d'));
    expect(snapshot.value).toBe('saturated');
    expect(view(snapshot)).toMatchObject({ running: ['a', 'b'], queue: ['c', 'd'], admissionCount: 2 });
  });

  it('announces exactly the walks each event admitted', () => {
    const [full, actions] = transition(schedulerMachine, run(initial(1), request('a'), request('b')), release('a'));
    expect(full.context.admitted).toEqual(['b']);
    expect(actions.map((action) => action.type)).toContain('announceAdmitted');
  });

  it('gives a released slot to the head of the queue', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('c'), release('a'));
    expect(view(snapshot)).toMatchObject({ running: ['b'], queue: ['c'] });
  });

  it('drops a released walk from the queue without admitting anything in its place', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('c'), release('b'));
    expect(view(snapshot)).toMatchObject({ running: ['a'], queue: ['c'] });
  });

  it('ignores a repeated request', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('a'), request('b'));
    expect(view(snapshot)).toMatchObject({ running: ['a'], queue: ['b'] });
  });

  it('admits waiting walks when the cap is raised, and never stops running ones when it is lowered', () => {
    const raised = run(initial(1), request('a'), request('b'), request('c'), { type: 'options.set', maxConcurrent: 3, rateBytesPerSec: 0 });
    expect(raised.value).toBe('running');
    expect(raised.context.running).toEqual(['a', 'b', 'c']);
    const lowered = run(raised, { type: 'options.set', maxConcurrent: 1, rateBytesPerSec: 0 }, request('d'));
    expect(view(lowered)).toMatchObject({ running: ['a', 'b', 'c'], queue: ['d'] });
    expect(view(run(lowered, release('a'), release('b')))).toMatchObject({ running: ['c'], queue: ['d'] });
    expect(view(run(lowered, release('a'), release('b'), release('c')))).toMatchObject({ running: ['d'], queue: [] });
  });

  it('returns to idle when every walk has ended', () => {
    expect(run(initial(), request('a'), release('a')).value).toBe('idle');
  });
});

/**
 * The scheduler's rules written out plainly, apart from the machine's code: arrival order, at most
 * `cap` running, a repeated ask ignored, a release frees a slot or leaves the line, and lowering the
 * cap stops nobody. Arrays and linear scans are fine here: it is the oracle, never on a hot path.
 */
class PlainScheduler {
  queue: string[] = [];
  running: string[] = [];
  constructor(private cap: number) {}

  request(id: string): string[] {
    if (!this.queue.includes(id) && !this.running.includes(id)) this.queue.push(id);
    return this.fill();
  }

  release(id: string): string[] {
    this.queue = this.queue.filter((waiting) => waiting !== id);
    this.running = this.running.filter((running) => running !== id);
    return this.fill();
  }

  setCap(cap: number): string[] {
    this.cap = cap;
    return this.fill();
  }

  private fill(): string[] {
    const admitted: string[] = [];
    while (this.running.length < this.cap && this.queue.length > 0) {
      const id = this.queue.shift()!;
      this.running.push(id);
      admitted.push(id);
    }
    return admitted;
  }
}

describe('schedulerMachine against a plain model of its rules', () => {
  it('admits in exactly the order walks asked, through any mix of requests, releases and caps', () => {
    // Goal: the persistent queue keeps today's first-come-first-served rules step for step, with
    // the right admissions, line order, positions and state, including walks leaving from the middle.
    for (const seed of [1, 2, 3]) {
      const random = seededRandom(seed);
      const pick = (count: number) => Math.floor(random() * count);
      const ids = Array.from({ length: 40 }, (_, index) => `w${index}`);
      const model = new PlainScheduler(2);
      let snapshot = initial(2);
      for (let step = 0; step < 2000; step++) {
        const roll = random();
        const id = ids[pick(ids.length)]!;
        let event: SchedulerEvent;
        let admitted: string[];
        if (roll < 0.45) [event, admitted] = [request(id), model.request(id)];
        else if (roll < 0.55) [event, admitted] = [release(id), model.release(id)];
        else if (roll < 0.75 && model.running.length > 0) {
          // A running walk ends: its slot goes to the head of the line.
          const ending = model.running[pick(model.running.length)]!;
          [event, admitted] = [release(ending), model.release(ending)];
        } else if (roll < 0.9 && model.queue.length > 0) {
          // A waiting walk leaves from the middle of the line (stopped while queued).
          const leaving = model.queue[pick(model.queue.length)]!;
          [event, admitted] = [release(leaving), model.release(leaving)];
        } else {
          const cap = 1 + pick(4);
          [event, admitted] = [{ type: 'options.set', maxConcurrent: cap, rateBytesPerSec: 0 }, model.setCap(cap)];
        }
        snapshot = transition(schedulerMachine, snapshot, event)[0];
        const { context } = snapshot;
        const actual = {
          admitted: context.admitted,
          running: context.running,
          queue: context.queue.toArray(),
          length: context.queue.length,
          positions: ids.map((each) => context.queue.position(each)),
          value: snapshot.value,
        };
        const expected = {
          admitted,
          running: model.running,
          queue: model.queue,
          length: model.queue.length,
          positions: ids.map((each) => (model.queue.includes(each) ? model.queue.indexOf(each) + 1 : null)),
          value: model.queue.length > 0 ? 'saturated' : model.running.length > 0 ? 'running' : 'idle',
        };
        // One comparison per step (tens of thousands of expects were most of this test's time).
        if (JSON.stringify(actual) !== JSON.stringify(expected)) {
          expect(actual, `seed ${seed}, step ${step}, ${JSON.stringify(event)}`).toEqual(expected);
        }
      }
      expect(snapshot.context.admissionCount).toBeGreaterThan(300);
    }
  });

  it('gives the walks behind a stopped queued walk its place, one step each', () => {
    // Goal: queue_position stays right when a walk leaves from the middle (a user stopped it queued).
    let snapshot = run(initial(1), ...['a', 'b', 'c', 'd', 'e', 'f'].map(request));
    expect(['b', 'c', 'd', 'e', 'f'].map((id) => snapshot.context.queue.position(id))).toEqual([1, 2, 3, 4, 5]);
    snapshot = run(snapshot, release('d'));
    expect(['b', 'c', 'd', 'e', 'f'].map((id) => snapshot.context.queue.position(id))).toEqual([1, 2, null, 3, 4]);
    // The walk that left asks again: it goes to the end of the line, as a new arrival.
    snapshot = run(snapshot, release('b'), request('d'));
    expect(view(snapshot)).toMatchObject({ running: ['a'], queue: ['c', 'e', 'f', 'd'] });
    expect(snapshot.context.queue.position('d')).toBe(4);
    snapshot = run(snapshot, release('a'));
    expect(view(snapshot)).toMatchObject({ running: ['c'], queue: ['e', 'f', 'd'] });
  });

  it('leaves earlier snapshots as they were: a change makes a new queue', () => {
    // Goal: pure transitions (and inspection records of past snapshots) never see a later queue.
    const before = run(initial(1), request('a'), request('b'), request('c'));
    const after = run(before, release('b'), request('d'));
    expect(view(before)).toMatchObject({ running: ['a'], queue: ['b', 'c'] });
    expect(view(after)).toMatchObject({ running: ['a'], queue: ['c', 'd'] });
    expect(before.context.queue.position('b')).toBe(1);
  });

  it('shows the queue in inspection as its length and the head of the line, not every id', () => {
    const snapshot = run(initial(1), ...Array.from({ length: 50 }, (_, index) => request(`w${index}`)));
    expect(JSON.parse(JSON.stringify(snapshot.context.queue))).toEqual({ length: 49, head: ['w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7', 'w8'] });
    expect(Object.keys(snapshot.context.queue)).toEqual(['length', 'head']);
  });
});
