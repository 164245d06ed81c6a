// A sparse array of a virtual length: memory and traversal cost follow the non-zero entries, not
// the length (SPEC §10: a thin lvol of 2^40 clusters costs what it owns).
//
// Entries live in fixed-size pages created on the first non-zero write; a page whose entries all
// return to zero is dropped. Pages are kept in a Map, with their indices sorted on demand for
// ordered walks. The only page that may be shorter than `pageEntries` is the one holding the
// last index, so a small lvol costs a small array (an idle 100-cluster lvol: 400 bytes).
//
// Two instances: the cluster map (Uint32Array pages, physical cluster per logical cluster, 0 =
// not owned) and per-cluster range checksums (BigUint64Array pages, 0 = none).

/** Entries per page: 2 KiB of cluster map, a small cost per isolated allocation. */
export const pageEntries = 512;

type Page<T> = { values: T; count: number; epoch: number };

// Pages are shared between an array and its snapshots (copy on write): a page may be changed in
// place only by the array whose epoch it carries.
let nextEpoch = 1;

abstract class SparseArray<T extends Uint32Array | BigUint64Array, V extends number | bigint> {
  private pages = new Map<number, Page<T>>();
  private sortedPages: number[] | null = [];
  private nonZero = 0;
  private epoch = nextEpoch++;

  protected constructor(
    /** Virtual length: indices 0..length-1 are valid, all zero until set. */
    readonly length: number,
  ) {
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`bad sparse array length ${length}`);
  }

  protected abstract makePage(entries: number): T;
  protected abstract readonly zero: V;
  protected abstract empty(length: number): this;

  /** Entries that are not zero. */
  get count(): number {
    return this.nonZero;
  }

  get(index: number): V {
    const page = this.pages.get(Math.floor(index / pageEntries));
    if (!page) return this.zero;
    return page.values[index % pageEntries] as V;
  }

  set(index: number, value: V): void {
    if (!(index >= 0 && index < this.length && Number.isInteger(index))) throw new RangeError(`index ${index} outside 0..${this.length - 1}`);
    const pageIndex = Math.floor(index / pageEntries);
    const slot = index % pageEntries;
    let page = this.pages.get(pageIndex);
    if (!page) {
      if (value === this.zero) return;
      const pageStart = pageIndex * pageEntries;
      page = { values: this.makePage(Math.min(pageEntries, this.length - pageStart)), count: 0, epoch: this.epoch };
      this.pages.set(pageIndex, page);
      this.sortedPages = null;
    } else if (page.epoch !== this.epoch) {
      if (page.values[slot] === value) return;
      page = { values: page.values.slice() as T, count: page.count, epoch: this.epoch };
      this.pages.set(pageIndex, page);
    }
    const before = page.values[slot] as V;
    if (before === value) return;
    page.values[slot] = value as never;
    if (before === this.zero) {
      page.count++;
      this.nonZero++;
    } else if (value === this.zero) {
      page.count--;
      this.nonZero--;
      if (page.count === 0) {
        this.pages.delete(pageIndex);
        this.sortedPages = null;
      }
    }
  }

  private orderedPages(): number[] {
    if (this.sortedPages === null) this.sortedPages = [...this.pages.keys()].sort((a, b) => a - b);
    return this.sortedPages;
  }

  /** The first index ≥ `from` holding a non-zero entry, or -1. */
  nextNonZero(from: number): number {
    if (from >= this.length || this.nonZero === 0) return -1;
    const start = Math.max(0, Math.ceil(from));
    const order = this.orderedPages();
    // First page whose index is ≥ start's page (binary search).
    let low = 0;
    let high = order.length;
    const startPage = Math.floor(start / pageEntries);
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (order[middle]! < startPage) low = middle + 1;
      else high = middle;
    }
    for (let position = low; position < order.length; position++) {
      const pageIndex = order[position]!;
      const values = this.pages.get(pageIndex)!.values;
      const base = pageIndex * pageEntries;
      for (let slot = pageIndex === startPage ? start - base : 0; slot < values.length; slot++) {
        if (values[slot] !== this.zero) return base + slot;
      }
    }
    return -1;
  }

  /** Non-zero entries in index order, from `from` (inclusive) up to `to` (exclusive). */
  *entries(from = 0, to = this.length): Generator<[index: number, value: V]> {
    for (let index = this.nextNonZero(from); index !== -1 && index < to; index = this.nextNonZero(index + 1)) {
      yield [index, this.get(index)];
    }
  }

  /** Calls `visit` for every non-zero entry in index order: the fast path for whole-array walks. */
  forEachNonZero(visit: (index: number, value: V) => void): void {
    for (const pageIndex of this.orderedPages()) {
      const values = this.pages.get(pageIndex)!.values;
      const base = pageIndex * pageEntries;
      for (let slot = 0; slot < values.length; slot++) if (values[slot] !== this.zero) visit(base + slot, values[slot] as V);
    }
  }

  /** A copy of another length: entries past the new end are dropped (the caller frees them). */
  resized(length: number): this {
    const out = this.empty(length);
    this.forEachNonZero((index, value) => {
      if (index < length) out.set(index, value);
    });
    return out;
  }

  /** Every entry as one typed array: for small arrays (tests, diagnostics) only. */
  dense(): T {
    if (this.length > 2 ** 24) throw new RangeError(`a sparse array of ${this.length} entries is too long to make dense`);
    const out = this.makePage(this.length);
    this.forEachNonZero((index, value) => (out[index] = value as never));
    return out;
  }

  /**
   * A read-only view of the entries as they are now, at O(pages) cost: later sets on either side
   * copy the page they change first. Checkpoints encode from snapshots while the event loop runs.
   */
  snapshot(): this {
    const out = this.empty(this.length);
    out.pages = new Map(this.pages);
    out.sortedPages = this.sortedPages;
    out.nonZero = this.nonZero;
    // Both sides now treat every existing page as shared.
    this.epoch = nextEpoch++;
    return out;
  }

  copy(): this {
    return this.resized(this.length);
  }
}

/** Physical cluster per logical cluster of an lvol; 0 = not owned (cluster 0 holds metadata). */
export class ClusterMap extends SparseArray<Uint32Array, number> {
  protected readonly zero = 0;

  constructor(length: number) {
    super(length);
  }

  protected makePage(entries: number): Uint32Array {
    return new Uint32Array(entries);
  }

  protected empty(length: number): this {
    return new ClusterMap(length) as this;
  }

  static fromDense(values: Uint32Array): ClusterMap {
    const map = new ClusterMap(values.length);
    for (let index = 0; index < values.length; index++) if (values[index] !== 0) map.set(index, values[index]!);
    return map;
  }
}

/** Per logical cluster CRC-64 of a snapshot's range registration; 0 = none (not owned). */
export class ClusterChecksums extends SparseArray<BigUint64Array, bigint> {
  protected readonly zero = 0n;

  constructor(length: number) {
    super(length);
  }

  protected makePage(entries: number): BigUint64Array {
    return new BigUint64Array(entries);
  }

  protected empty(length: number): this {
    return new ClusterChecksums(length) as this;
  }

  static fromDense(values: BigUint64Array): ClusterChecksums {
    const array = new ClusterChecksums(values.length);
    for (let index = 0; index < values.length; index++) if (values[index] !== 0n) array.set(index, values[index]!);
    return array;
  }
}
