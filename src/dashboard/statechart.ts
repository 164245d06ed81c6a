// Lays out a machine definition (inspect_get_machine) as a statechart: pure geometry, no DOM.
//
// Compound states are boxes holding their children in columns by distance from the initial
// state (breadth-first over the transitions between siblings), so the usual flow reads left to
// right; parallel states stack their regions, drawn with dashed borders. Transitions become
// curves between boxes, labelled with their event (and guard). It is deliberately simple: the
// machines here have tens of states, and every box and arrow comes from the definition itself.
import type { MachineNode, MachineTransition } from '../actors/machineShape.ts';

export type { MachineNode, MachineTransition };

export interface ChartBox {
  readonly id: string;
  readonly label: string;
  readonly type: MachineNode['type'];
  /** A region of a parallel state (drawn dashed). */
  readonly region: boolean;
  /** The initial child of its parent (drawn with an entry dot). */
  readonly initial: boolean;
  readonly notes: string[];
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
  readonly depth: number;
}

/** One arrow per source → target pair: transitions between the same two states share it. */
export interface ChartEdge {
  readonly key: string;
  readonly source: string;
  readonly target: string;
  /** The event types of every transition drawn by this arrow. */
  readonly events: string[];
  readonly label: string;
  /** SVG path data. */
  readonly path: string;
  readonly labelX: number;
  readonly labelY: number;
}

export interface Chart {
  readonly width: number;
  readonly height: number;
  readonly boxes: ChartBox[];
  readonly edges: ChartEdge[];
}

const atomicHeight = 34;
const noteHeight = 14;
const charWidth = 7.2;
const headerHeight = 26;
const padding = 16;
const rowGap = 40;
const columnGap = 150;
const regionGap = 14;
const laneTop = 14;
const laneGap = 12;

interface Measured {
  readonly node: MachineNode;
  readonly width: number;
  readonly height: number;
  readonly region: boolean;
  readonly initial: boolean;
  readonly notes: string[];
  /** Children with their offsets inside this box. */
  readonly children: Array<{ child: Measured; dx: number; dy: number }>;
}

/** Short text for an event type: XState's internal names made readable. */
export function eventLabel(event: string): string {
  if (event === 'always') return 'always';
  const done = /^xstate\.done\.actor\.(.+)$/.exec(event);
  if (done) return `done: ${done[1]}`;
  const error = /^xstate\.error\.actor\.(.+)$/.exec(event);
  if (error) return `error: ${error[1]}`;
  const after = /^xstate\.after\.(\d+)\./.exec(event);
  if (after) return `after ${after[1]} ms`;
  return event;
}

function transitionLabel(transition: MachineTransition): string {
  const base = eventLabel(transition.event);
  return transition.guard ? `${base} [${transition.guard}]` : base;
}

function notesOf(node: MachineNode): string[] {
  const notes: string[] = [];
  if (node.entry.length > 0) notes.push(`entry / ${node.entry.join(', ')}`);
  if (node.invoke.length > 0) notes.push(`invoke ${node.invoke.join(', ')}`);
  return notes;
}

/**
 * The column of each child: the longest path to it from the initial child over the transitions
 * between siblings, once the transitions that go back (to a state still on the depth-first path,
 * such as a restart from `aborted` to `queued`) are set aside. The usual run then reads left to
 * right — idle, queued, computing, stopping or storing, then aborted, done or failed — and only
 * restarts arc back. Eventless (`always`) transitions are followed last.
 */
export function childRanks(parent: MachineNode): Map<string, number> {
  const owner = (id: string): MachineNode | undefined => {
    for (const child of parent.states) if (id === child.id || id.startsWith(`${child.id}.`)) return child;
    return undefined;
  };
  const next = new Map<string, string[]>();
  for (const child of parent.states) {
    const transitions = allTransitions(child);
    const ordered = [...transitions.filter((transition) => transition.event !== 'always'), ...transitions.filter((transition) => transition.event === 'always')];
    const targets: string[] = [];
    for (const transition of ordered) {
      for (const target of transition.targets) {
        const sibling = owner(target);
        if (sibling && sibling.id !== child.id && !targets.includes(sibling.id)) targets.push(sibling.id);
      }
    }
    next.set(child.id, targets);
  }
  const ranks = new Map<string, number>();
  const start = parent.states.find((child) => child.key === parent.initial) ?? parent.states[0];
  if (!start) return ranks;
  // Depth-first from the initial child (iteratively): edges to a state on the path are back edges.
  const onPath = new Set<string>();
  const finished: string[] = [];
  const forward = new Map<string, string[]>();
  const stack: Array<{ id: string; index: number }> = [{ id: start.id, index: 0 }];
  onPath.add(start.id);
  const seen = new Set<string>([start.id]);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const targets = next.get(top.id) ?? [];
    if (top.index >= targets.length) {
      stack.pop();
      onPath.delete(top.id);
      finished.push(top.id);
      continue;
    }
    const target = targets[top.index++]!;
    if (onPath.has(target)) continue; // a back edge: drawn, but not ranked on
    (forward.get(top.id) ?? forward.set(top.id, []).get(top.id)!).push(target);
    if (!seen.has(target)) {
      seen.add(target);
      onPath.add(target);
      stack.push({ id: target, index: 0 });
    }
  }
  // Longest path over what is left (a DAG), in topological order (reverse finishing order).
  ranks.set(start.id, 0);
  for (const id of finished.reverse()) {
    const rank = ranks.get(id) ?? 0;
    for (const target of forward.get(id) ?? []) ranks.set(target, Math.max(ranks.get(target) ?? 0, rank + 1));
  }
  let last = Math.max(0, ...ranks.values());
  for (const child of parent.states) if (!ranks.has(child.id)) ranks.set(child.id, ++last);
  return ranks;
}

/** A state's own transitions and those of its descendants (they leave it too). */
function allTransitions(node: MachineNode): MachineTransition[] {
  return [...node.transitions, ...node.states.flatMap(allTransitions)];
}

/** The sibling of `parent` that holds state `id` (the state itself or an ancestor of it). */
function siblingOf(parent: MachineNode, id: string): MachineNode | undefined {
  for (const child of parent.states) if (id === child.id || id.startsWith(`${child.id}.`)) return child;
  return undefined;
}

/**
 * The children's source → target pairs drawn in lanes below them: those that do not go to the
 * next column (they would cross the boxes between), shortest first (the innermost lane).
 */
export function laneEdges(parent: MachineNode, ranks: ReadonlyMap<string, number>): Array<{ source: string; target: string }> {
  const pairs: Array<{ source: string; target: string; span: number }> = [];
  for (const child of parent.states) {
    for (const transition of allTransitions(child)) {
      for (const id of transition.targets) {
        const target = siblingOf(parent, id);
        if (!target || target.id === child.id) continue;
        const span = ranks.get(target.id)! - ranks.get(child.id)!;
        if (span === 1) continue;
        if (!pairs.some((pair) => pair.source === child.id && pair.target === target.id)) pairs.push({ source: child.id, target: target.id, span: Math.abs(span) });
      }
    }
  }
  return pairs.sort((a, b) => a.span - b.span).map(({ source, target }) => ({ source, target }));
}

function measure(node: MachineNode, region: boolean, initial: boolean): Measured {
  const notes = notesOf(node);
  const labelWidth = Math.max(node.key.length * charWidth + 28, ...notes.map((note) => note.length * 6.8 + 24));
  if (node.states.length === 0) {
    return { node, width: Math.max(92, labelWidth), height: atomicHeight + notes.length * noteHeight, region, initial, notes, children: [] };
  }
  const children: Measured['children'] = [];
  const top = headerHeight + notes.length * noteHeight;
  if (node.type === 'parallel') {
    const measured = node.states.map((child) => measure(child, true, false));
    const width = Math.max(labelWidth, ...measured.map((child) => child.width)) + 2 * padding;
    let y = top;
    for (const child of measured) {
      children.push({ child, dx: padding, dy: y });
      y += child.height + regionGap;
    }
    return { node, width, height: y - regionGap + padding, region, initial, notes, children };
  }
  const ranks = childRanks(node);
  const columns: Measured[][] = [];
  for (const child of node.states) {
    const rank = ranks.get(child.id)!;
    (columns[rank] ??= []).push(measure(child, false, child.key === node.initial));
  }
  let x = padding + 14; // room for the initial-state dot
  let contentHeight = 0;
  for (const column of columns.filter(Boolean)) {
    const columnWidth = Math.max(...column.map((child) => child.width));
    let y = top + padding / 2;
    for (const child of column) {
      children.push({ child, dx: x + (columnWidth - child.width) / 2, dy: y });
      y += child.height + rowGap;
    }
    contentHeight = Math.max(contentHeight, y - rowGap);
    x += columnWidth + columnGap;
  }
  const width = Math.max(labelWidth, x - columnGap + padding);
  // Room below the children for the arrows that skip a column or go back (see laneEdges).
  const lanes = laneEdges(node, ranks).length;
  const laneRoom = lanes > 0 ? laneTop + lanes * laneGap : 0;
  return { node, width, height: contentHeight + laneRoom + padding + 18, region, initial, notes, children };
}

function place(measured: Measured, x: number, y: number, depth: number, out: ChartBox[]): void {
  out.push({
    id: measured.node.id,
    label: measured.node.key,
    type: measured.node.type,
    region: measured.region,
    initial: measured.initial,
    notes: measured.notes,
    x,
    y,
    width: measured.width,
    height: measured.height,
    depth,
  });
  for (const { child, dx, dy } of measured.children) place(child, x + dx, y + dy, depth + 1, out);
}

/** The whole chart: boxes in drawing order (parents first) and one edge per transition target. */
export function layoutMachine(machine: MachineNode): Chart {
  const measured = measure(machine, false, false);
  const boxes: ChartBox[] = [];
  place(measured, 0, 0, 0, boxes);
  const byId = new Map(boxes.map((box) => [box.id, box]));
  const pairs = new Map<string, { source: ChartBox; target: ChartBox; events: string[]; labels: string[] }>();
  const visit = (node: MachineNode): void => {
    for (const transition of node.transitions) {
      for (const target of transition.targets) {
        const from = byId.get(node.id);
        const to = byId.get(target);
        if (!from || !to) continue;
        const key = `${from.id}->${to.id}`;
        let pair = pairs.get(key);
        if (!pair) pairs.set(key, (pair = { source: from, target: to, events: [], labels: [] }));
        pair.events.push(transition.event);
        const label = transitionLabel(transition);
        if (!pair.labels.includes(label)) pair.labels.push(label);
      }
    }
    node.states.forEach(visit);
  };
  visit(machine);
  // Arrows that skip a column or go back run in lanes below their siblings, so they cross no box.
  const lanes = new Map<string, { laneY: number; index: number }>();
  const nodesById = new Map<string, MachineNode>();
  const index = (node: MachineNode): void => {
    nodesById.set(node.id, node);
    node.states.forEach(index);
  };
  index(machine);
  for (const node of nodesById.values()) {
    if (node.states.length === 0 || node.type === 'parallel') continue;
    const childBottom = Math.max(...node.states.map((child) => byId.get(child.id)!.y + byId.get(child.id)!.height));
    laneEdges(node, childRanks(node)).forEach((pair, lane) => {
      lanes.set(`${pair.source}->${pair.target}`, { laneY: childBottom + laneTop + lane * laneGap, index: lane });
    });
  }
  const edges: ChartEdge[] = [];
  for (const [key, pair] of pairs) {
    const lane = lanes.get(key);
    // A pair drawn in both directions is bent apart, so the two arrows and labels do not overlap.
    const reverse = pairs.has(`${pair.target.id}->${pair.source.id}`) && pair.source.id !== pair.target.id;
    const geometry = lane ? laneRoute(pair.source, pair.target, lane.laneY, lane.index) : route(pair.source, pair.target, reverse ? 1 : 0);
    edges.push({ key, source: pair.source.id, target: pair.target.id, events: pair.events, label: pair.labels.join(' / '), ...geometry });
  }
  return { width: measured.width + 2, height: measured.height + 2, boxes, edges };
}

/** A curve from `from` to `to`; `nth` > 0 bends it further (the arrow back of a pair drawn both ways). */
function route(from: ChartBox, to: ChartBox, nth: number): { path: string; labelX: number; labelY: number } {
  const bend = nth * 16;
  if (from.id === to.id) {
    // A self-transition: a loop over the box's top right corner.
    const x = from.x + from.width - 18;
    const y = from.y;
    const lift = 22 + bend;
    return { path: `M ${x - 10} ${y} C ${x - 14} ${y - lift}, ${x + 22} ${y - lift}, ${x + 12} ${y}`, labelX: x + 4, labelY: y - lift - 2 };
  }
  const forward = to.x >= from.x + from.width - 1;
  const backward = to.x + to.width <= from.x + 1;
  if (forward || backward) {
    const sx = forward ? from.x + from.width : from.x;
    const tx = forward ? to.x : to.x + to.width;
    const sy = from.y + from.height / 2 + (forward ? -6 : 6);
    const ty = to.y + to.height / 2 + (forward ? -6 : 6);
    const dx = (tx - sx) / 2;
    // Backward edges dip below the row so they do not cover the forward ones.
    const dip = backward ? 28 + bend : -bend;
    const c1 = `${sx + dx} ${sy + dip}`;
    const c2 = `${tx - dx} ${ty + dip}`;
    return { path: `M ${sx} ${sy} C ${c1}, ${c2}, ${tx} ${ty}`, ...midpoint(sx, sy, sx + dx, sy + dip, tx - dx, ty + dip, tx, ty) };
  }
  // Same column: out of the right side and back in.
  const sx = from.x + from.width;
  const tx = to.x + to.width;
  const sy = from.y + from.height / 2;
  const ty = to.y + to.height / 2;
  const out = 34 + bend;
  return { path: `M ${sx} ${sy} C ${sx + out} ${sy}, ${tx + out} ${ty}, ${tx} ${ty}`, ...midpoint(sx, sy, sx + out, sy, tx + out, ty, tx, ty) };
}

/** Down from the source's bottom to a lane, along it, and up into the target's bottom. */
function laneRoute(from: ChartBox, to: ChartBox, laneY: number, index: number): { path: string; labelX: number; labelY: number } {
  // Arrows leaving or entering the same box spread along its bottom edge.
  const spread = ((index % 5) - 2) * 9;
  const sx = from.x + from.width / 2 + spread;
  const tx = to.x + to.width / 2 - spread;
  const sy = from.y + from.height;
  const ty = to.y + to.height;
  const r = 6;
  const toward = tx > sx ? 1 : -1;
  const path = [
    `M ${sx} ${sy}`,
    `L ${sx} ${laneY - r}`,
    `Q ${sx} ${laneY} ${sx + toward * r} ${laneY}`,
    `L ${tx - toward * r} ${laneY}`,
    `Q ${tx} ${laneY} ${tx} ${laneY - r}`,
    `L ${tx} ${ty}`,
  ].join(' ');
  return { path, labelX: (sx + tx) / 2, labelY: laneY - 3 };
}

/** The point at t = 0.5 of a cubic Bézier, where the label goes. */
function midpoint(x0: number, y0: number, x1: number, y1: number, x2: number, y2: number, x3: number, y3: number): { labelX: number; labelY: number } {
  return { labelX: (x0 + 3 * x1 + 3 * x2 + x3) / 8, labelY: (y0 + 3 * y1 + 3 * y2 + y3) / 8 - 4 };
}

/**
 * The ids of the active states for a snapshot value: `{checksum: 'computing', io: 'idle'}` of
 * machine `lvol` is lvol, lvol.checksum, lvol.checksum.computing, lvol.io, lvol.io.idle.
 */
export function activeStateIds(machine: MachineNode, value: unknown): Set<string> {
  const active = new Set<string>([machine.id]);
  const walk = (node: MachineNode, part: unknown): void => {
    if (typeof part === 'string') {
      const child = node.states.find((state) => state.key === part);
      if (child) active.add(child.id);
      return;
    }
    if (part && typeof part === 'object') {
      for (const [key, sub] of Object.entries(part as Record<string, unknown>)) {
        const child = node.states.find((state) => state.key === key);
        if (!child) continue;
        active.add(child.id);
        walk(child, sub);
      }
    }
  };
  walk(machine, value);
  return active;
}

/** The edges an event of `eventType` may have taken from the states active before it. */
export function takenEdges(chart: Chart, activeBefore: ReadonlySet<string>, eventType: string): Set<string> {
  const taken = new Set<string>();
  for (const edge of chart.edges) if (edge.events.includes(eventType) && activeBefore.has(edge.source)) taken.add(edge.key);
  return taken;
}
