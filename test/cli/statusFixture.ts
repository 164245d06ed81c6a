// A small node as the listing RPCs describe it: a chain base → snap → clone, a done checksum
// above 2^53, a computing one, a degraded esnap clone on a damaged lvstore, and a copy.
import type { ChecksumEntryView, LvolView, StatusInput } from '../../src/cli/status.ts';

const mib = 1024 * 1024;
const lvs0 = { name: 'lvs0', uuid: 'aaaaaaaa-0000-4000-8000-000000000000' };
const pool = { name: 'pool', uuid: 'bbbbbbbb-0000-4000-8000-000000000000' };

function lvol(fields: Partial<LvolView> & Pick<LvolView, 'name' | 'uuid' | 'lvs'>): LvolView {
  return {
    alias: `${fields.lvs.name}/${fields.name}`,
    is_thin_provisioned: false,
    is_snapshot: false,
    is_esnap_clone: false,
    is_degraded: false,
    num_allocated_clusters: 16,
    num_clusters: 16,
    read_only: false,
    parent: null,
    ...fields,
  };
}

/** The stored checksum of `base`: above 2^53, so a double would print it wrong. */
export const baseChecksum = 0xfedcba9876543210n;

const idleStatus = { mode: 'whole' as const, rate_bytes_per_sec: 0, eta_sec: null, queue_position: null, will_resume: false };

export const checksums: ChecksumEntryView[] = [
  { ...idleStatus, uuid: 'base-uuid', alias: 'lvs0/base', state: 'done', clusters_done: 16, clusters_total: 16, checksum: baseChecksum },
  {
    ...idleStatus,
    uuid: 'snap-uuid',
    alias: 'lvs0/snap',
    state: 'computing',
    clusters_done: 4,
    clusters_total: 16,
    rate_bytes_per_sec: 50 * mib,
    eta_sec: 125,
    checksum: null,
  },
];

export const statusFixture: StatusInput = {
  lvstores: [
    { uuid: pool.uuid, name: 'pool', base_bdev: 'disk1', total_data_clusters: 100, free_clusters: 90, cluster_size: mib, metadata_error: 'journal write failed: EIO' },
    { uuid: lvs0.uuid, name: 'lvs0', base_bdev: 'disk0', total_data_clusters: 252, free_clusters: 220, cluster_size: 4 * mib },
  ],
  lvols: [
    lvol({ name: 'clone', uuid: 'clone-uuid', lvs: lvs0, parent: 'snap-uuid', is_thin_provisioned: true, num_allocated_clusters: 1 }),
    lvol({ name: 'snap', uuid: 'snap-uuid', lvs: lvs0, parent: 'base-uuid', is_snapshot: true, read_only: true, num_allocated_clusters: 4 }),
    lvol({ name: 'base', uuid: 'base-uuid', lvs: lvs0, is_snapshot: true, read_only: true }),
    lvol({ name: 'vol', uuid: 'vol-uuid', lvs: lvs0, num_clusters: 4, num_allocated_clusters: 4 }),
    lvol({ name: 'ghost', uuid: 'ghost-uuid', lvs: pool, parent: 'Malloc3', is_esnap_clone: true, is_degraded: true, is_thin_provisioned: true, num_allocated_clusters: 0, num_clusters: 10 }),
  ],
  checksums,
  stats: {
    uptime_sec: 3725,
    connections: 2,
    event_loop_delay_ms: { p99: 1.25 },
    checksums: { rate_bytes_per_sec: 50 * mib },
    background: { running: 1, queued: 0, max_concurrent_checksums: 2, checksum_rate_mib_per_sec: 0 },
  },
  copies: [{ label: 'shallow copy 1 → lvs0/dst', state: 'copying' }],
};
