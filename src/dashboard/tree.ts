// The storage tree the dashboard draws, built from RPC results (pure: unit-tested without a DOM).
//
// Base bdevs carry lvstores; each lvstore's lvols are drawn as their snapshot chains: a root is an
// lvol without a parent in its lvstore, a snapshot's children are its clones. Built in one pass
// over each list (maps by UUID), so 1,000 lvols cost a few milliseconds.
import type { BdevInfo, ChecksumRow, LvolInfo, LvstoreInfo } from './types.ts';

export interface LvolNode {
  readonly lvol: LvolInfo;
  readonly sizeBytes: number;
  readonly allocatedBytes: number;
  /** Parent UUID that is not an lvol of this lvstore (an external snapshot), else null. */
  readonly externalParent: string | null;
  readonly children: LvolNode[];
}

export interface LvstoreNode {
  readonly lvstore: LvstoreInfo;
  readonly roots: LvolNode[];
  readonly lvolCount: number;
}

export interface BdevNode {
  readonly name: string;
  readonly productName: string;
  readonly sizeBytes: number;
  /** Set when this "bdev" is an lvol carrying a nested lvstore. */
  readonly lvolAlias: string | null;
  readonly lvstores: LvstoreNode[];
}

export interface StorageTree {
  readonly bdevs: BdevNode[];
  readonly lvolCount: number;
}

const byName = <T extends { name: string }>(a: T, b: T): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** Builds the tree; lvols of unknown lvstores are ignored (a listing taken mid-change). */
export function buildTree(bdevs: readonly BdevInfo[], lvstores: readonly LvstoreInfo[], lvols: readonly LvolInfo[]): StorageTree {
  const lvolsByStore = new Map<string, LvolInfo[]>();
  for (const lvol of lvols) {
    const list = lvolsByStore.get(lvol.lvs.uuid);
    if (list) list.push(lvol);
    else lvolsByStore.set(lvol.lvs.uuid, [lvol]);
  }
  const aliasByUuid = new Map<string, string>();
  for (const lvol of lvols) aliasByUuid.set(lvol.uuid, lvol.alias);

  const storesByBdev = new Map<string, LvstoreNode[]>();
  for (const lvstore of lvstores) {
    const node = buildLvstore(lvstore, lvolsByStore.get(lvstore.uuid) ?? []);
    const list = storesByBdev.get(lvstore.base_bdev);
    if (list) list.push(node);
    else storesByBdev.set(lvstore.base_bdev, [node]);
  }

  const out: BdevNode[] = [];
  const shown = new Set<string>();
  for (const bdev of bdevs) {
    const isLvol = bdev.product_name === 'Logical Volume';
    const stores = storesByBdev.get(bdev.name) ?? [];
    // Lvol bdevs appear in the tree as lvols; only those carrying a nested lvstore get a bdev row.
    if (isLvol && stores.length === 0) continue;
    shown.add(bdev.name);
    out.push({
      name: bdev.name,
      productName: bdev.product_name,
      sizeBytes: Number(bdev.num_blocks) * bdev.block_size,
      lvolAlias: isLvol ? (bdev.aliases[0] ?? aliasByUuid.get(bdev.uuid) ?? null) : null,
      lvstores: stores.sort((a, b) => byName(a.lvstore, b.lvstore)),
    });
  }
  // An lvstore whose base bdev is missing from the bdev listing still shows.
  for (const [bdevName, stores] of storesByBdev) {
    if (shown.has(bdevName)) continue;
    out.push({ name: bdevName, productName: 'unknown', sizeBytes: 0, lvolAlias: aliasByUuid.get(bdevName) ?? null, lvstores: stores });
  }
  // Base bdevs first (by name), then nested lvstores' lvol bdevs.
  out.sort((a, b) => (a.lvolAlias === null) !== (b.lvolAlias === null) ? (a.lvolAlias === null ? -1 : 1) : byName(a, b));
  return { bdevs: out, lvolCount: lvols.length };
}

function buildLvstore(lvstore: LvstoreInfo, lvols: readonly LvolInfo[]): LvstoreNode {
  const nodes = new Map<string, LvolNode>();
  for (const lvol of lvols) {
    nodes.set(lvol.uuid, {
      lvol,
      sizeBytes: lvol.num_clusters * lvstore.cluster_size,
      allocatedBytes: lvol.num_allocated_clusters * lvstore.cluster_size,
      externalParent: null,
      children: [],
    });
  }
  const roots: LvolNode[] = [];
  for (const node of nodes.values()) {
    const parent = node.lvol.parent === null ? undefined : nodes.get(node.lvol.parent);
    if (parent) parent.children.push(node);
    else if (node.lvol.parent !== null) roots.push({ ...node, externalParent: node.lvol.parent });
    else roots.push(node);
  }
  const sortDeep = (list: LvolNode[]): void => {
    list.sort((a, b) => byName(a.lvol, b.lvol));
    for (const node of list) if (node.children.length > 1) sortDeep(node.children);
  };
  sortDeep(roots);
  return { lvstore, roots, lvolCount: lvols.length };
}

export interface LvolRow {
  readonly node: LvolNode;
  readonly depth: number;
  /** Last child of its parent (for drawing └ instead of ├). */
  readonly last: boolean;
}

/**
 * Depth-first rows of one lvstore's chains, skipping the children of collapsed lvols. Iterative,
 * so a chain thousands of snapshots deep cannot overflow the stack.
 */
export function lvolRows(store: LvstoreNode, collapsed: ReadonlySet<string> = new Set()): LvolRow[] {
  const rows: LvolRow[] = [];
  const stack: LvolRow[] = [];
  for (let index = store.roots.length - 1; index >= 0; index--) stack.push({ node: store.roots[index]!, depth: 0, last: index === store.roots.length - 1 });
  while (stack.length > 0) {
    const row = stack.pop()!;
    rows.push(row);
    if (collapsed.has(row.node.lvol.uuid)) continue;
    const children = row.node.children;
    for (let index = children.length - 1; index >= 0; index--) {
      stack.push({ node: children[index]!, depth: row.depth + 1, last: index === children.length - 1 });
    }
  }
  return rows;
}

/** Which checksum buttons a snapshot row offers, from its status (SPEC §6). */
export function checksumActions(row: Pick<ChecksumRow, 'state' | 'resumable'> | undefined): Array<'start' | 'stop' | 'resume'> {
  const state = row?.state ?? 'idle';
  switch (state) {
    case 'queued':
    case 'computing':
      return ['stop'];
    case 'stopping':
    case 'storing':
      return [];
    case 'aborted':
      return row?.resumable ? ['resume', 'start'] : ['start'];
    default:
      return ['start'];
  }
}

/**
 * Merges a checksum notification (or a fetched row) into the map by UUID. A notification has no
 * stored value: one already known is kept only while the lvol stays `done` (a new run that ends
 * `done` has a new value, which `needsValue` then asks the page to fetch).
 */
export function mergeChecksum(map: ReadonlyMap<string, ChecksumRow>, row: ChecksumRow): Map<string, ChecksumRow> {
  const next = new Map(map);
  const previous = map.get(row.uuid);
  const keepValue = row.checksum === undefined && previous?.state === 'done' && row.state === 'done' && previous.checksum !== undefined;
  next.set(row.uuid, keepValue ? { ...row, checksum: previous.checksum } : row);
  return next;
}

/** A done row whose stored value is not known yet (fetch it with bdev_lvol_get_snapshot_checksum). */
export function needsValue(row: ChecksumRow | undefined): boolean {
  return row?.state === 'done' && (row.checksum === undefined || row.checksum === null);
}
