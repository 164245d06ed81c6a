// The scheduler's waiting line: distinct ids in arrival order, persistent, O(log n) per change.
//
// The scheduler machine keeps its queue in its context, and a context is never changed in place
// (pure `transition()`, inspection records of earlier snapshots): a change makes a new queue that
// shares all but O(log n) nodes with the old one. Two weight-balanced trees (Adams; the
// parameters of Hirai and Yamamoto's proof, as Haskell's Data.Map) hold it: arrival number → id,
// whose subtree sizes give an id's place in line, and id → arrival number, to find an id that
// leaves from the middle. They replace arrays copied at every request and release (O(n) each).

interface TreeNode<K, V> {
  readonly key: K;
  readonly value: V;
  /** Nodes in this subtree: the balance criterion, and what ranks are counted with. */
  readonly size: number;
  readonly left: Tree<K, V>;
  readonly right: Tree<K, V>;
}
type Tree<K, V> = TreeNode<K, V> | null;
type Compare<K> = (a: K, b: K) => number;

/** A broken invariant is a programmer error: thrown, never caught to recover. */
function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

// A subtree may outweigh its sibling at most `delta` times; a double rotation is used when the
// inner grandchild is at least `ratio` times the outer one.
const delta = 3;
const ratio = 2;

function sizeOf<K, V>(tree: Tree<K, V>): number {
  return tree === null ? 0 : tree.size;
}

function makeNode<K, V>(key: K, value: V, left: Tree<K, V>, right: Tree<K, V>): TreeNode<K, V> {
  return { key, value, size: sizeOf(left) + sizeOf(right) + 1, left, right };
}

/** A node over `left` and `right`, rotated back into balance after one insertion or deletion below. */
function balance<K, V>(key: K, value: V, left: Tree<K, V>, right: Tree<K, V>): TreeNode<K, V> {
  const leftSize = sizeOf(left);
  const rightSize = sizeOf(right);
  if (leftSize + rightSize <= 1) return makeNode(key, value, left, right);
  if (rightSize > delta * leftSize) {
    const heavy = right!;
    if (sizeOf(heavy.left) < ratio * sizeOf(heavy.right)) {
      return makeNode(heavy.key, heavy.value, makeNode(key, value, left, heavy.left), heavy.right);
    }
    const inner = heavy.left!;
    return makeNode(inner.key, inner.value, makeNode(key, value, left, inner.left), makeNode(heavy.key, heavy.value, inner.right, heavy.right));
  }
  if (leftSize > delta * rightSize) {
    const heavy = left!;
    if (sizeOf(heavy.right) < ratio * sizeOf(heavy.left)) {
      return makeNode(heavy.key, heavy.value, heavy.left, makeNode(key, value, heavy.right, right));
    }
    const inner = heavy.right!;
    return makeNode(inner.key, inner.value, makeNode(heavy.key, heavy.value, heavy.left, inner.left), makeNode(key, value, inner.right, right));
  }
  return makeNode(key, value, left, right);
}

function insert<K, V>(tree: Tree<K, V>, key: K, value: V, compare: Compare<K>): TreeNode<K, V> {
  if (tree === null) return makeNode(key, value, null, null);
  const order = compare(key, tree.key);
  assert(order !== 0, 'walk queue: key inserted twice');
  return order < 0
    ? balance(tree.key, tree.value, insert(tree.left, key, value, compare), tree.right)
    : balance(tree.key, tree.value, tree.left, insert(tree.right, key, value, compare));
}

function remove<K, V>(tree: Tree<K, V>, key: K, compare: Compare<K>): Tree<K, V> {
  assert(tree !== null, 'walk queue: removed a key it does not hold');
  const order = compare(key, tree.key);
  if (order < 0) return balance(tree.key, tree.value, remove(tree.left, key, compare), tree.right);
  if (order > 0) return balance(tree.key, tree.value, tree.left, remove(tree.right, key, compare));
  return glue(tree.left, tree.right);
}

/** Joins two balanced siblings whose parent went: the heavier side gives up its extreme node. */
function glue<K, V>(left: Tree<K, V>, right: Tree<K, V>): Tree<K, V> {
  if (left === null) return right;
  if (right === null) return left;
  if (left.size > right.size) {
    const { key, value, rest } = withoutMax(left);
    return balance(key, value, rest, right);
  }
  const { key, value, rest } = withoutMin(right);
  return balance(key, value, left, rest);
}

function withoutMin<K, V>(tree: TreeNode<K, V>): { key: K; value: V; rest: Tree<K, V> } {
  if (tree.left === null) return { key: tree.key, value: tree.value, rest: tree.right };
  const min = withoutMin(tree.left);
  return { key: min.key, value: min.value, rest: balance(tree.key, tree.value, min.rest, tree.right) };
}

function withoutMax<K, V>(tree: TreeNode<K, V>): { key: K; value: V; rest: Tree<K, V> } {
  if (tree.right === null) return { key: tree.key, value: tree.value, rest: tree.left };
  const max = withoutMax(tree.right);
  return { key: max.key, value: max.value, rest: balance(tree.key, tree.value, tree.left, max.rest) };
}

function lookup<K, V>(tree: Tree<K, V>, key: K, compare: Compare<K>): V | undefined {
  for (let node = tree; node !== null; ) {
    const order = compare(key, node.key);
    if (order === 0) return node.value;
    node = order < 0 ? node.left : node.right;
  }
  return undefined;
}

/** How many keys of `tree` are smaller than `key`. */
function rankOf<K, V>(tree: Tree<K, V>, key: K, compare: Compare<K>): number {
  let rank = 0;
  for (let node = tree; node !== null; ) {
    const order = compare(key, node.key);
    if (order <= 0) {
      if (order === 0) return rank + sizeOf(node.left);
      node = node.left;
    } else {
      rank += sizeOf(node.left) + 1;
      node = node.right;
    }
  }
  return rank;
}

function heightOf<K, V>(tree: Tree<K, V>): number {
  return tree === null ? 0 : 1 + Math.max(heightOf(tree.left), heightOf(tree.right));
}

/** Calls `visit` on values in key order until it returns false. */
function forEachInOrder<K, V>(tree: Tree<K, V>, visit: (value: V) => boolean): boolean {
  if (tree === null) return true;
  return forEachInOrder(tree.left, visit) && visit(tree.value) && forEachInOrder(tree.right, visit);
}

const compareNumbers: Compare<number> = (a, b) => a - b;
const compareStrings: Compare<string> = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** Ids of the front of the line an inspection record shows (the length says how many wait). */
export const walkQueueHeadShown = 8;

/**
 * Distinct ids in arrival order. Every change returns a new queue and leaves this one as it was:
 * `push`, `remove` and `position` cost O(log n), `takeFirst(k)` O(k log n), `length` O(1).
 */
export class WalkQueue {
  static readonly empty = new WalkQueue(null, null, 0);

  /** Ids waiting. */
  readonly length: number;
  /** The first few ids in line: what an inspection record of the machine's context shows. */
  readonly head: readonly string[];
  // Private fields are neither enumerable nor serialized: inspection shows `length` and `head`.
  readonly #byArrival: Tree<number, string>;
  readonly #byId: Tree<string, number>;
  readonly #nextArrival: number;

  private constructor(byArrival: Tree<number, string>, byId: Tree<string, number>, nextArrival: number) {
    this.#byArrival = byArrival;
    this.#byId = byId;
    this.#nextArrival = nextArrival;
    this.length = sizeOf(byArrival);
    assert(sizeOf(byId) === this.length, 'walk queue: its two indexes disagree');
    this.head = this.first(walkQueueHeadShown);
  }

  has(id: string): boolean {
    return lookup(this.#byId, id, compareStrings) !== undefined;
  }

  /** The queue with `id` at the end; `id` must not be waiting already. */
  push(id: string): WalkQueue {
    const arrival = this.#nextArrival;
    return new WalkQueue(insert(this.#byArrival, arrival, id, compareNumbers), insert(this.#byId, id, arrival, compareStrings), arrival + 1);
  }

  /** The queue without `id`, wherever it waits; this queue itself when `id` is not in it. */
  remove(id: string): WalkQueue {
    const arrival = lookup(this.#byId, id, compareStrings);
    if (arrival === undefined) return this;
    return new WalkQueue(remove(this.#byArrival, arrival, compareNumbers), remove(this.#byId, id, compareStrings), this.#nextArrival);
  }

  /** The first `count` ids in line (fewer if fewer wait) and the queue without them. */
  takeFirst(count: number): { taken: string[]; rest: WalkQueue } {
    const taken = this.first(count);
    if (taken.length === 0) return { taken, rest: this };
    let byArrival = this.#byArrival;
    let byId = this.#byId;
    for (const id of taken) {
      byArrival = withoutMin(byArrival!).rest;
      byId = remove(byId, id, compareStrings);
    }
    return { taken, rest: new WalkQueue(byArrival, byId, this.#nextArrival) };
  }

  /** 1-based place of `id` in line, or null when it is not waiting. */
  position(id: string): number | null {
    const arrival = lookup(this.#byId, id, compareStrings);
    return arrival === undefined ? null : rankOf(this.#byArrival, arrival, compareNumbers) + 1;
  }

  /** The first `count` ids in line, O(count + log n). */
  first(count: number): string[] {
    const ids: string[] = [];
    if (count > 0) forEachInOrder(this.#byArrival, (id) => ids.push(id) < count);
    return ids;
  }

  /** Every id in line, O(n): for tests and on-demand views, never per event. */
  toArray(): string[] {
    return this.first(this.length);
  }

  /** The taller of the two trees, O(n): tests check that it stays O(log n) whatever the order of changes. */
  height(): number {
    return Math.max(heightOf(this.#byArrival), heightOf(this.#byId));
  }

  toJSON(): { length: number; head: readonly string[] } {
    return { length: this.length, head: this.head };
  }
}
