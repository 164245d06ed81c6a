// Goal: the inspection hub streams each actor's events in order, filters by lvol, and when a
// subscriber falls behind it drops and counts events instead of buffering them without bound.
import { describe, expect, it } from 'vitest';
import { createActor, createMachine } from 'xstate';
import { type InspectionRecord, InspectionHub, toJsonSafe } from '../../src/actors/inspector.ts';

const toggle = createMachine({ id: 'toggle', initial: 'off', states: { off: { on: { flip: 'on' } }, on: { on: { flip: 'off' } } } });
const macrotask = () => new Promise((resolve) => setImmediate(resolve));

function startToggle(hub: InspectionHub, lvolId: string) {
  const actor = createActor(toggle, { id: lvolId, inspect: hub.observerFor(lvolId) });
  actor.start();
  return actor;
}

describe('InspectionHub', () => {
  it('delivers actor, event and snapshot records of one lvol in order, in batches', async () => {
    const hub = new InspectionHub();
    const batches: Array<{ events: InspectionRecord[]; dropped: number }> = [];
    hub.subscribe('a', (batch) => (batches.push(batch), true));
    const a = startToggle(hub, 'a');
    const b = startToggle(hub, 'b');
    a.send({ type: 'flip' });
    b.send({ type: 'flip' });
    a.send({ type: 'flip' });
    await macrotask();
    const events = batches.flatMap((batch) => batch.events);
    expect(events.every((event) => event.actor_id === 'a')).toBe(true);
    const values = events.filter((event) => event.type === 'snapshot').map((event) => (event.snapshot as { value: string }).value);
    expect(values).toEqual(['off', 'on', 'off']);
    expect(events.map((event) => event.seq)).toEqual([...events.map((event) => event.seq)].sort((x, y) => x - y));
  });

  it('drops and counts events beyond its queue and reports the count with the batch', async () => {
    const hub = new InspectionHub(4);
    const batches: Array<{ events: InspectionRecord[]; dropped: number }> = [];
    hub.subscribe(undefined, (batch) => (batches.push(batch), true));
    const actor = startToggle(hub, 'x');
    for (let index = 0; index < 10; index++) actor.send({ type: 'flip' });
    await macrotask();
    expect(batches[0]!.events).toHaveLength(4);
    // The actor record, the init event and snapshot, then an event and a snapshot per flip: 23.
    expect(batches[0]!.dropped).toBe(23 - 4);
    actor.send({ type: 'flip' });
    await macrotask();
    expect(batches[1]!.dropped).toBe(0);
  });

  it('counts a whole batch as dropped when the client is falling behind', async () => {
    const hub = new InspectionHub();
    let accept = false;
    const seen: Array<{ events: InspectionRecord[]; dropped: number }> = [];
    hub.subscribe(undefined, (batch) => {
      seen.push(batch);
      return accept;
    });
    const actor = startToggle(hub, 'y');
    actor.send({ type: 'flip' });
    await macrotask();
    const firstSize = seen[0]!.events.length;
    accept = true;
    actor.send({ type: 'flip' });
    await macrotask();
    expect(seen[1]!.dropped).toBe(firstSize);
  });

  it('costs nothing without subscribers and stops delivering after unsubscribe', async () => {
    const hub = new InspectionHub();
    const batches: unknown[] = [];
    const cancel = hub.subscribe(undefined, (batch) => (batches.push(batch), true));
    cancel();
    startToggle(hub, 'z').send({ type: 'flip' });
    await macrotask();
    expect(batches).toEqual([]);
    expect(hub.subscriberCount).toBe(0);
  });

  it('observes a tracked actor only while someone watches it: attached by a later subscription, detached after the last', async () => {
    // Goal: 100,000 idle lvols cost XState no inspection events, yet any of them can be inspected at once.
    const hub = new InspectionHub();
    const { actor, untrack } = hub.track('t', (inspect) => createActor(toggle, { id: 't', ...(inspect ? { inspect } : {}) }));
    actor.start();
    expect(hub.attachedCount).toBe(0);
    const batches: Array<{ events: InspectionRecord[] }> = [];
    const cancelOne = hub.subscribe('t', (batch) => (batches.push(batch), true));
    const cancelOther = hub.subscribe('other', () => true);
    expect(hub.attachedCount).toBe(1);
    actor.send({ type: 'flip' });
    await macrotask();
    const values = batches.flatMap((batch) => batch.events).filter((event) => event.type === 'snapshot').map((event) => (event.snapshot as { value: string }).value);
    expect(values).toEqual(['on']);
    cancelOne();
    expect(hub.attachedCount).toBe(0);
    const all: InspectionRecord[] = [];
    const cancelAll = hub.subscribe(undefined, (batch) => (all.push(...batch.events), true));
    expect(hub.attachedCount).toBe(1);
    cancelAll();
    cancelAll(); // twice is harmless
    cancelOther();
    expect(hub.attachedCount).toBe(0);
    actor.send({ type: 'flip' });
    await macrotask();
    expect(all).toEqual([]);
    untrack();
    hub.subscribe(undefined, () => true);
    expect(hub.attachedCount).toBe(0); // forgotten: a stopped actor is never attached again
  });

  it('attaches and detaches many tracked actors in slices, and ends as the last change says', async () => {
    // Goal: subscribing to every actor at 100,000 lvols never holds the event loop for the whole pass.
    const hub = new InspectionHub();
    const count = 6000;
    for (let index = 0; index < count; index++) hub.track(`m${index}`, (inspect) => createActor(toggle, { id: `m${index}`, ...(inspect ? { inspect } : {}) })).actor.start();
    const settled = async (expected: number) => {
      for (let turn = 0; turn < 1000 && hub.attachedCount !== expected; turn++) await macrotask();
      return hub.attachedCount;
    };
    const cancel = hub.subscribe(undefined, () => true);
    expect(hub.attachedCount).toBeGreaterThan(0);
    expect(await settled(count)).toBe(count);
    // Unsubscribe, then subscribe again before the detaching pass is over: all attached at the end.
    cancel();
    const again = hub.subscribe(undefined, () => true);
    expect(await settled(count)).toBe(count);
    again();
    expect(await settled(0)).toBe(0);
  });

  it('creates a tracked actor observed from birth while it is watched, its actor record included', async () => {
    // Goal: an inspector open while lvols are created sees each from its first event, as before.
    const hub = new InspectionHub();
    const events: InspectionRecord[] = [];
    hub.subscribe(undefined, (batch) => (events.push(...batch.events), true));
    const { actor } = hub.track('born', (inspect) => createActor(toggle, { id: 'born', ...(inspect ? { inspect } : {}) }));
    actor.start();
    await macrotask();
    expect(events[0]).toMatchObject({ type: 'actor', actor_id: 'born' });
    const raw: string[] = [];
    hub.addObserver((event) => raw.push(event.type));
    const late = hub.track('late', (inspect) => createActor(toggle, { id: 'late', ...(inspect ? { inspect } : {}) }));
    late.actor.start();
    expect(raw[0]).toBe('@xstate.actor');
  });

  it('summarises contexts: bigints stay exact, maps and typed arrays become sizes', () => {
    expect(toJsonSafe({ crc: 2n ** 64n - 1n, map: new Map([[1, 2n]]), typed: new Uint32Array(9), list: Array.from({ length: 40 }, (_, i) => i) })).toEqual({
      crc: 2n ** 64n - 1n,
      map: { size: 1 },
      typed: { length: 9 },
      list: [...Array.from({ length: 32 }, (_, i) => i), '… 8 more'],
    });
  });
});
