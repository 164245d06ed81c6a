// Goal: the scheduler machine admits walks first come first served up to its cap, and its state
// says whether walks are waiting — tested purely with transition().
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { type SchedulerEvent, schedulerMachine } from '../../src/machines/schedulerMachine.ts';

type Snapshot = ReturnType<typeof initialTransition<typeof schedulerMachine>>[0];

function run(snapshot: Snapshot, ...events: SchedulerEvent[]): Snapshot {
  return events.reduce((current, event) => transition(schedulerMachine, current, event)[0], snapshot);
}

const request = (lvolId: string): SchedulerEvent => ({ type: 'walk.request', lvolId });
const release = (lvolId: string): SchedulerEvent => ({ type: 'walk.release', lvolId });
const initial = (maxConcurrent = 2) => initialTransition(schedulerMachine, { maxConcurrent, rateBytesPerSec: 0 })[0];

describe('schedulerMachine (pure transitions)', () => {
  it('starts idle with nothing queued', () => {
    expect(initial().value).toBe('idle');
    expect(initial().context).toMatchObject({ queue: [], running: [] });
  });

  it('admits up to the cap at once and queues the rest in arrival order', () => {
    const snapshot = run(initial(2), request('a'), request('b'), request('c'), request('d'));
    expect(snapshot.value).toBe('saturated');
    expect(snapshot.context).toMatchObject({ running: ['a', 'b'], queue: ['c', 'd'], admissionCount: 2 });
  });

  it('announces exactly the walks each event admitted', () => {
    const [full, actions] = transition(schedulerMachine, run(initial(1), request('a'), request('b')), release('a'));
    expect(full.context.admitted).toEqual(['b']);
    expect(actions.map((action) => action.type)).toContain('announceAdmitted');
  });

  it('gives a released slot to the head of the queue', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('c'), release('a'));
    expect(snapshot.context).toMatchObject({ running: ['b'], queue: ['c'] });
  });

  it('drops a released walk from the queue without admitting anything in its place', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('c'), release('b'));
    expect(snapshot.context).toMatchObject({ running: ['a'], queue: ['c'] });
  });

  it('ignores a repeated request', () => {
    const snapshot = run(initial(1), request('a'), request('b'), request('a'), request('b'));
    expect(snapshot.context).toMatchObject({ running: ['a'], queue: ['b'] });
  });

  it('admits waiting walks when the cap is raised, and never stops running ones when it is lowered', () => {
    const raised = run(initial(1), request('a'), request('b'), request('c'), { type: 'options.set', maxConcurrent: 3, rateBytesPerSec: 0 });
    expect(raised.value).toBe('running');
    expect(raised.context.running).toEqual(['a', 'b', 'c']);
    const lowered = run(raised, { type: 'options.set', maxConcurrent: 1, rateBytesPerSec: 0 }, request('d'));
    expect(lowered.context).toMatchObject({ running: ['a', 'b', 'c'], queue: ['d'] });
    expect(run(lowered, release('a'), release('b')).context).toMatchObject({ running: ['c'], queue: ['d'] });
    expect(run(lowered, release('a'), release('b'), release('c')).context).toMatchObject({ running: ['d'], queue: [] });
  });

  it('returns to idle when every walk has ended', () => {
    expect(run(initial(), request('a'), release('a')).value).toBe('idle');
  });
});
