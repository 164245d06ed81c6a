// What the dashboard reads from the node: the JSON-RPC results it uses, as the method table
// publishes them (docs/rpc.md). Integers beyond 2^53 arrive as bigint (see rpc.ts). Types the
// node declares are imported from it (type-only: nothing of the node is bundled).
import type { ChecksumState, ChecksumStatus } from '../actors/lvolActor.ts';
import type { InspectionRecord } from '../actors/inspector.ts';

export type { ChecksumState, ChecksumStatus, InspectionRecord };

export interface BdevInfo {
  name: string;
  aliases: string[];
  product_name: string;
  block_size: number;
  num_blocks: number | bigint;
  uuid: string;
  claimed: boolean;
}

export interface LvstoreInfo {
  uuid: string;
  name: string;
  base_bdev: string;
  total_data_clusters: number;
  free_clusters: number;
  block_size: number;
  cluster_size: number;
  metadata_error?: string;
}

export interface LvolInfo {
  alias: string;
  uuid: string;
  name: string;
  creation_time: string;
  is_thin_provisioned: boolean;
  is_snapshot: boolean;
  is_clone: boolean;
  is_esnap_clone: boolean;
  is_degraded: boolean;
  num_allocated_clusters: number;
  num_clusters: number;
  read_only: boolean;
  /** The parent snapshot's UUID (or an external snapshot's id), null for none. */
  parent: string | null;
  lvs: { name: string; uuid: string };
  /** Present once verified (SPEC §6.10): `corrupt` turns the row red. */
  verification?: { corrupt: boolean; result: string | null; verified_at: string | null; bad_cluster_count: number; registration_conflict: boolean };
}

/** A node_get_checksums row, or a checksum notification's params (then `checksum` is absent). */
export interface ChecksumRow extends ChecksumStatus {
  uuid: string;
  alias?: string;
  checksum?: bigint | number | null;
}

export interface MethodStats {
  calls: number;
  errors: number;
  latency_ms_p50: number;
  latency_ms_p99: number;
}

export interface NodeStats {
  uptime_sec?: number;
  requests?: Record<string, MethodStats>;
  event_loop_utilization?: number;
  event_loop_delay_ms?: { p50: number; p99: number; max: number };
  connections?: number;
  checksums: { by_state: Record<string, number>; rate_bytes_per_sec: number };
  background: { running: number; queued: number; bytes_per_sec: number };
  inspect_subscribers?: number;
  /** The verification policy's counts (issue 21): overdue snapshots are what needs attention. */
  verify_policy?: { state: string; enabled: boolean; running: number; due: number; overdue: number; snapshots_with_checksums: number };
}

export interface InspectionBatch {
  events: InspectionRecord[];
  dropped: number;
}

/** node_get_unloaded_lvstores: a bdev whose lvstore was not loaded, and why. */
export interface UnloadedLvstore {
  bdev_name: string;
  reason: 'damaged' | 'conflict';
  detail: string;
}
