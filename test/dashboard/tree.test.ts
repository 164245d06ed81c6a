import { describe, expect, it } from 'vitest';
import { buildTree, checksumActions, lvolRows, mergeChecksum, needsValue } from '../../src/dashboard/tree.ts';
import type { BdevInfo, ChecksumRow, LvolInfo, LvstoreInfo } from '../../src/dashboard/types.ts';

const store: LvstoreInfo = { uuid: 'S1', name: 'lvs0', base_bdev: 'disk0', total_data_clusters: 100, free_clusters: 90, block_size: 512, cluster_size: 4 << 20 };

function lvol(name: string, uuid: string, parent: string | null, extra: Partial<LvolInfo> = {}): LvolInfo {
  return {
    alias: `lvs0/${name}`,
    uuid,
    name,
    creation_time: '2026-12-01T00:00:00Z',
    is_thin_provisioned: true,
    is_snapshot: false,
    is_clone: parent !== null,
    is_esnap_clone: false,
    is_degraded: false,
    num_allocated_clusters: 1,
    num_clusters: 16,
    read_only: false,
    parent,
    lvs: { name: 'lvs0', uuid: 'S1' },
    ...extra,
  };
}

const bdevs: BdevInfo[] = [
  { name: 'disk0', aliases: [], product_name: 'AIO disk', block_size: 512, num_blocks: 2_097_152, uuid: 'B0', claimed: true },
  { name: 'L-base', aliases: ['lvs0/base'], product_name: 'Logical Volume', block_size: 512, num_blocks: 131_072, uuid: 'L-base', claimed: false },
];

describe('buildTree', () => {
  const lvols = [
    lvol('zeta', 'L-z', null),
    lvol('clone2', 'L-c2', 'L-snap'),
    lvol('snap', 'L-snap', null, { is_snapshot: true, read_only: true }),
    lvol('base', 'L-base', 'L-snap'),
    lvol('top', 'L-top', 'L-base-snap2'),
    lvol('esnap', 'L-e', 'EXT-UUID', { is_esnap_clone: true }),
  ];

  it('puts lvstores under their base bdev and draws chains: snapshot, then its clones by name', () => {
    const tree = buildTree(bdevs, [store], lvols);
    expect(tree.lvolCount).toBe(6);
    // Lvol bdevs without a nested lvstore are not bdev rows.
    expect(tree.bdevs.map((bdev) => bdev.name)).toEqual(['disk0']);
    expect(tree.bdevs[0]!.sizeBytes).toBe(2_097_152 * 512);
    const lvs = tree.bdevs[0]!.lvstores[0]!;
    const rows = lvolRows(lvs).map((row) => [row.node.lvol.name, row.depth, row.last]);
    expect(rows).toEqual([
      ['esnap', 0, false],
      ['snap', 0, false],
      ['base', 1, false],
      ['clone2', 1, true],
      ['top', 0, false],
      ['zeta', 0, true],
    ]);
    const snapNode = lvs.roots.find((node) => node.lvol.name === 'snap')!;
    expect(snapNode.sizeBytes).toBe(16 * (4 << 20));
    expect(snapNode.allocatedBytes).toBe(4 << 20);
    // A parent outside the lvstore (an external snapshot, or one listed later) is named, not lost.
    expect(lvs.roots.find((node) => node.lvol.name === 'esnap')!.externalParent).toBe('EXT-UUID');
  });

  it('skips the children of collapsed lvols', () => {
    const lvs = buildTree(bdevs, [store], lvols).bdevs[0]!.lvstores[0]!;
    expect(lvolRows(lvs, new Set(['L-snap'])).map((row) => row.node.lvol.name)).toEqual(['esnap', 'snap', 'top', 'zeta']);
  });

  it('shows a nested lvstore under the lvol that carries it, and a store whose bdev is not listed', () => {
    const nested: LvstoreInfo = { ...store, uuid: 'S2', name: 'inner', base_bdev: 'L-base' };
    const orphan: LvstoreInfo = { ...store, uuid: 'S3', name: 'orphan', base_bdev: 'gone' };
    const tree = buildTree(bdevs, [store, nested, orphan], lvols);
    expect(tree.bdevs.map((bdev) => [bdev.name, bdev.lvolAlias, bdev.lvstores.map((lvs) => lvs.lvstore.name)])).toEqual([
      ['disk0', null, ['lvs0']],
      ['gone', null, ['orphan']],
      ['L-base', 'lvs0/base', ['inner']],
    ]);
  });

  it('draws a chain 20,000 snapshots deep without recursion limits', () => {
    const deep: LvolInfo[] = [];
    for (let index = 0; index < 20_000; index++) deep.push(lvol(`v${index}`, `U${index}`, index === 0 ? null : `U${index - 1}`));
    const lvs = buildTree(bdevs, [store], deep).bdevs[0]!.lvstores[0]!;
    const rows = lvolRows(lvs);
    expect(rows).toHaveLength(20_000);
    expect(rows[19_999]!.depth).toBe(19_999);
  });
});

describe('checksum rows', () => {
  const status = (state: ChecksumRow['state'], extra: Partial<ChecksumRow> = {}): ChecksumRow => ({
    uuid: 'L1',
    state,
    mode: 'whole',
    clusters_done: 0,
    clusters_total: 16,
    bytes_done: 0,
    rate_bytes_per_sec: 0,
    eta_sec: null,
    queue_position: null,
    will_resume: false,
    started_at: null,
    finished_at: null,
    resumable: false,
    ...extra,
  });

  it('offers the buttons the state allows', () => {
    expect(checksumActions(undefined)).toEqual(['start']);
    expect(checksumActions(status('computing'))).toEqual(['stop']);
    expect(checksumActions(status('queued'))).toEqual(['stop']);
    expect(checksumActions(status('stopping'))).toEqual([]);
    expect(checksumActions(status('aborted', { resumable: true }))).toEqual(['resume', 'start']);
    expect(checksumActions(status('aborted'))).toEqual(['start']);
    expect(checksumActions(status('done'))).toEqual(['start']);
    expect(checksumActions(status('failed'))).toEqual(['start']);
  });

  it('keeps a stored value only while the lvol stays done; a new run asks for the new value', () => {
    let map = new Map<string, ChecksumRow>([['L1', status('done', { checksum: 0xfedcba9876543210n })]]);
    map = mergeChecksum(map, status('done'));
    expect(map.get('L1')!.checksum).toBe(0xfedcba9876543210n);
    expect(needsValue(map.get('L1'))).toBe(false);
    map = mergeChecksum(map, status('computing', { clusters_done: 3 }));
    expect(map.get('L1')!.checksum).toBeUndefined();
    map = mergeChecksum(map, status('done'));
    expect(needsValue(map.get('L1'))).toBe(true);
  });
});
