// `lvnode status`: the exact summary for a small node, from the listing RPCs' results alone.
import { describe, expect, it } from 'vitest';
import { checksumCell, chainOrder, renderErrors, renderStatus } from '../../src/cli/status.ts';
import { baseChecksum, checksums, statusFixture } from './statusFixture.ts';

const expected = `\
 lvstore: lvs0
    uuid: aaaaaaaa-0000-4000-8000-000000000000
    base: disk0
 cluster: 4.00 MiB
capacity: 1008 MiB, 880 MiB free (12.7% used)
   state: ONLINE

    NAME       STATE   SIZE      ALLOC     TYPE   MODE  CHECKSUM
    base       ONLINE  64.0 MiB  64.0 MiB  thick  ro    done 0xfedcba9876543210
      snap     ONLINE  64.0 MiB  16.0 MiB  thick  ro    computing 25.0% 50.0 MiB/s ETA 2 min 05 s
        clone  ONLINE  64.0 MiB  4.00 MiB  thin   rw    -
    vol        ONLINE  16.0 MiB  16.0 MiB  thick  rw    -

 lvstore: pool
    uuid: bbbbbbbb-0000-4000-8000-000000000000
    base: disk1
 cluster: 1.00 MiB
capacity: 100 MiB, 90.0 MiB free (10.0% used)
   state: DAMAGED: journal write failed: EIO (changes are refused; reads go on)

    NAME                               STATE     SIZE      ALLOC  TYPE  MODE  CHECKSUM
    ghost (external snapshot Malloc3)  DEGRADED  10.0 MiB  0 B    thin  rw    -

errors: no known data errors

checksums running:
    lvs0/snap  [######------------------]  25.0%  4/16 clusters  50.0 MiB/s  ETA 2 min 05 s

copies:
    shallow copy 1 → lvs0/dst  copying

node: event-loop delay p99 1.25 ms, 2 connections, up 1 h 02 min
background: 1 running, 0 queued (at most 2 at once, no rate cap); checksums read 50.0 MiB/s
`;

describe('renderStatus', () => {
  it('shows the verify policy, overdue snapshots first, or that it is off', () => {
    const node = { ...statusFixture.stats, verify_policy: { state: 'inWindow', enabled: true, running: 1, due: 3, overdue: 2, snapshots_with_checksums: 9 } };
    expect(renderStatus({ ...statusFixture, stats: node })).toContain('verify policy: OVERDUE 2, 3 due, 1 verifying, 9 snapshots with checksums (inWindow)\n');
    const off = { ...statusFixture.stats, verify_policy: { state: 'disabled', enabled: false, running: 0, due: 0, overdue: 0, snapshots_with_checksums: 9 } };
    expect(renderStatus({ ...statusFixture, stats: off })).toContain('verify policy: off (node_set_verify_policy)\n');
    const failing = { ...node.verify_policy, overdue: 0, backing_off: 2, next_retry_at: '2026-12-07T09:00:00.000Z' };
    expect(renderStatus({ ...statusFixture, stats: { ...node, verify_policy: failing } })).toContain(
      'verify policy: 2 backing off after read errors (next retry 2026-12-07T09:00:00.000Z), 3 due, 1 verifying, 9 snapshots with checksums (inWindow)\n',
    );
  });

  it('draws each lvstore with its lvols as snapshot chains, checksums, copies and the node line', () => {
    expect(renderStatus(statusFixture)).toBe(expected);
  });

  it('prints a stored checksum above 2^53 exactly, in hex', () => {
    expect(baseChecksum > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
    expect(checksumCell(checksums[0]!)).toBe('done 0xfedcba9876543210');
    // The same value as a decimal string (how some clients carry it) gives the same text.
    expect(checksumCell({ ...checksums[0]!, checksum: baseChecksum.toString() })).toBe('done 0xfedcba9876543210');
  });

  it('says when there is nothing: no lvstores, no lvols, no running checksums', () => {
    const text = renderStatus({ lvstores: [], lvols: [], checksums: [], stats: {}, copies: [] });
    expect(text).toBe('no lvstores\n\nerrors: no known data errors\n\nchecksums running: none\n\nnode: no figures\n');
    const empty = renderStatus({ ...statusFixture, lvols: [], checksums: [], copies: [] });
    expect(empty).toContain('   state: ONLINE\n\n    no lvols\n');
    expect(empty).not.toContain('copies:');
  });

  it('lists each corrupt snapshot and its bad clusters as zpool status -v lists damaged files', () => {
    const text = renderErrors([
      {
        alias: 'lvs0/snap',
        verified_at: '2026-12-07T07:00:00.000Z',
        result: 'corrupt',
        bad_cluster_count: 2,
        bad_clusters: [
          { cluster_index: 3, offset_bytes: 12582912, expected: 0xfedcba9876543210n, actual: 1n },
          { cluster_index: 9, offset_bytes: 37748736, expected: 2n, actual: 3n },
        ],
        whole: null,
        registration_conflict: null,
      },
    ]);
    expect(text).toBe(`\
errors: 1 snapshot with corrupt clusters:
    lvs0/snap  corrupt, verified 2026-12-07T07:00:00.000Z, 2 bad clusters
        cluster 3 (bytes 12582912..): stored 0xfedcba9876543210, read 0x0000000000000001
        cluster 9 (bytes 37748736..): stored 0x0000000000000002, read 0x0000000000000003
`);
    const [row] = renderStatus({ ...statusFixture, lvols: statusFixture.lvols.filter((lvol) => lvol.name === 'vol').map((lvol) => ({ ...lvol, verification: { corrupt: true, result: 'corrupt', verified_at: null, bad_cluster_count: 1, registration_conflict: false } })) })
      .split('\n')
      .filter((line) => line.includes(' vol '));
    expect(row).toMatch(/ CORRUPT$/);
  });

  it('orders lvols depth first, parents before their clones, siblings by name', () => {
    const order = chainOrder(statusFixture.lvols.filter((lvol) => lvol.lvs.name === 'lvs0'));
    expect(order.map(({ lvol, depth }) => `${depth}:${lvol.name}`)).toEqual(['0:base', '1:snap', '2:clone', '0:vol']);
  });
});
