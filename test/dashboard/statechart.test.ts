// The statechart layout, from the machines the node really runs (described as inspect_get_machine does).
import { describe, expect, it } from 'vitest';
import { describeMachine } from '../../src/actors/inspectable.ts';
import { activeStateIds, childRanks, eventLabel, layoutMachine, takenEdges } from '../../src/dashboard/statechart.ts';
import { copyMachine } from '../../src/machines/copyMachine.ts';
import { lvolMachine } from '../../src/machines/lvolMachine.ts';
import { schedulerMachine } from '../../src/machines/schedulerMachine.ts';

const lvol = describeMachine(lvolMachine);

function inside(inner: { x: number; y: number; width: number; height: number }, outer: typeof inner): boolean {
  return inner.x >= outer.x && inner.y >= outer.y && inner.x + inner.width <= outer.x + outer.width && inner.y + inner.height <= outer.y + outer.height;
}

function overlap(a: { x: number; y: number; width: number; height: number }, b: typeof a): boolean {
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

describe('layoutMachine', () => {
  const chart = layoutMachine(lvol);
  const box = (id: string) => chart.boxes.find((candidate) => candidate.id === id)!;

  it('draws one box per state of the definition, each inside its parent, siblings apart', () => {
    const ids = (node: typeof lvol): string[] => [node.id, ...node.states.flatMap(ids)];
    expect(chart.boxes.map((candidate) => candidate.id).sort()).toEqual(ids(lvol).sort());
    for (const candidate of chart.boxes) {
      const parentId = candidate.id.slice(0, candidate.id.lastIndexOf('.'));
      if (candidate.id === 'lvol') continue;
      expect(inside(candidate, box(parentId)), `${candidate.id} inside ${parentId}`).toBe(true);
    }
    const siblings = chart.boxes.filter((candidate) => candidate.id.startsWith('lvol.checksum.'));
    for (const a of siblings) for (const b of siblings) if (a !== b) expect(overlap(a, b), `${a.id} / ${b.id}`).toBe(false);
  });

  it('marks parallel regions and initial states, and notes entry actions and invokes', () => {
    expect(box('lvol').type).toBe('parallel');
    expect(box('lvol.checksum').region).toBe(true);
    expect(box('lvol.io').region).toBe(true);
    expect(box('lvol.checksum.idle').initial).toBe(true);
    expect(box('lvol.checksum.queued').initial).toBe(false);
    expect(box('lvol.checksum.computing').notes).toEqual(['entry / requestStep']);
    expect(box('lvol.io.reading').notes).toEqual(['invoke clusterStep']);
    // Regions stack: io below checksum.
    expect(box('lvol.io').y).toBeGreaterThanOrEqual(box('lvol.checksum').y + box('lvol.checksum').height);
  });

  it('orders columns along the run, so the walk reads left to right and only restarts arc back', () => {
    const ranks = childRanks(lvol.states[0]!);
    const rank = (key: string) => ranks.get(`lvol.checksum.${key}`);
    expect([rank('idle'), rank('queued'), rank('computing'), rank('stopping'), rank('storing')]).toEqual([0, 1, 2, 3, 3]);
    expect([rank('aborted'), rank('done'), rank('failed')]).toEqual([4, 4, 4]);
    expect(childRanks(lvol.states[1]!).get('lvol.io.reading')).toBe(1);
    expect(box('lvol.checksum.idle').x).toBeLessThan(box('lvol.checksum.queued').x);
    expect(box('lvol.checksum.queued').x).toBeLessThan(box('lvol.checksum.computing').x);
    expect(box('lvol.checksum.computing').x).toBeLessThan(box('lvol.checksum.stopping').x);
  });

  it('draws one arrow per state pair, carrying every event between them', () => {
    const stop = chart.edges.find((edge) => edge.source === 'lvol.checksum.computing' && edge.target === 'lvol.checksum.stopping')!;
    expect(stop.events.sort()).toEqual(['checksum.stop', 'lvol.preempt']);
    expect(stop.label).toBe('checksum.stop / lvol.preempt');
    const self = chart.edges.find((edge) => edge.source === 'lvol.checksum.computing' && edge.target === 'lvol.checksum.computing')!;
    expect(self.events).toEqual(['cluster.done']);
    const guarded = chart.edges.find((edge) => edge.source === 'lvol.checksum.idle' && edge.target === 'lvol.checksum.done')!;
    expect(guarded.label).toBe('always [checksumStored]');
    const done = chart.edges.find((edge) => edge.source === 'lvol.io.reading' && edge.target === 'lvol.io.idle')!;
    expect(done.label).toBe('done: clusterStep / error: clusterStep');
    // Every transition target of the definition is drawn by some arrow.
    const pairs = new Set(chart.edges.map((edge) => `${edge.source}->${edge.target}`));
    const walk = (node: typeof lvol): void => {
      for (const transition of node.transitions) for (const target of transition.targets) expect(pairs.has(`${node.id}->${target}`)).toBe(true);
      node.states.forEach(walk);
    };
    walk(lvol);
    for (const edge of chart.edges) expect(edge.path).toMatch(/^M [-\d.]+ [-\d.]+ [CL] /);
  });

  it('runs arrows that skip a column or go back in lanes below the boxes, inside the region', () => {
    const region = box('lvol.checksum');
    const children = chart.boxes.filter((candidate) => candidate.id.startsWith('lvol.checksum.'));
    const bottom = Math.max(...children.map((candidate) => candidate.y + candidate.height));
    const back = chart.edges.find((edge) => edge.source === 'lvol.checksum.aborted' && edge.target === 'lvol.checksum.queued')!;
    const laneY = Number(/L [-\d.]+ ([-\d.]+) Q/.exec(back.path)![1]) + 6;
    expect(laneY).toBeGreaterThan(bottom);
    expect(laneY).toBeLessThan(region.y + region.height);
    // Each lane is used once: no two lane arrows share a horizontal line.
    const laneYs = chart.edges.filter((edge) => edge.path.includes(' Q ')).map((edge) => /L [-\d.]+ ([-\d.]+) Q/.exec(edge.path)![1]);
    expect(new Set(laneYs).size).toBe(laneYs.length);
    // Arrows to the next column stay direct curves.
    expect(chart.edges.find((edge) => edge.source === 'lvol.checksum.queued' && edge.target === 'lvol.checksum.computing')!.path).toContain(' C ');
  });

  it('lays out the other machines of the node too', () => {
    for (const machine of [schedulerMachine, copyMachine]) {
      const other = layoutMachine(describeMachine(machine));
      expect(other.boxes.length).toBeGreaterThan(1);
      expect(other.width).toBeGreaterThan(0);
    }
  });
});

describe('active states', () => {
  it('maps a parallel state value to the ids to highlight', () => {
    expect([...activeStateIds(lvol, { checksum: 'computing', io: 'reading' })].sort()).toEqual([
      'lvol',
      'lvol.checksum',
      'lvol.checksum.computing',
      'lvol.io',
      'lvol.io.reading',
    ]);
    expect([...activeStateIds(lvol, { checksum: 'nonsense' })].sort()).toEqual(['lvol', 'lvol.checksum']);
    expect([...activeStateIds(lvol, null)]).toEqual(['lvol']);
  });

  it('finds the arrow an event took from the states active before it', () => {
    const chart = layoutMachine(lvol);
    const before = activeStateIds(lvol, { checksum: 'computing', io: 'reading' });
    expect([...takenEdges(chart, before, 'checksum.stop')]).toEqual(['lvol.checksum.computing->lvol.checksum.stopping']);
    expect([...takenEdges(chart, activeStateIds(lvol, { checksum: 'idle', io: 'idle' }), 'checksum.stop')]).toEqual([]);
  });

  it('names XState internal events readably', () => {
    expect(eventLabel('xstate.done.actor.clusterStep')).toBe('done: clusterStep');
    expect(eventLabel('xstate.error.actor.storeChecksum')).toBe('error: storeChecksum');
    expect(eventLabel('xstate.after.100.scheduler.pacing')).toBe('after 100 ms');
    expect(eventLabel('checksum.start')).toBe('checksum.start');
  });
});
