// Zod schemas that several method groups share (src/transport/methods.ts, observeMethods.ts).
import { z } from 'zod';
import { checksumRateMibPerSecMax, nameLengthMax, verifyIntervalSecMax, verifyIntervalSecMin, verifyWindowsMax } from '../constants.ts';
import { u64 } from './json64.ts';

/** An existing object's name: a bdev, an lvstore, `lvs/lvol` or a UUID. */
export const name = z.string().min(1).max(2 * nameLengthMax + 1);
export const ok = z.literal(true);
export const checksumValue = u64.describe('CRC-64/GO-ISO as an exact unsigned 64-bit JSON integer');
export const checksumStatus = z.object({
  state: z.enum(['idle', 'queued', 'computing', 'stopping', 'storing', 'aborted', 'done', 'failed']),
  mode: z.enum(['whole', 'range', 'verify']).nullable(),
  clusters_done: z.number(),
  clusters_total: z.number(),
  bytes_done: z.number(),
  rate_bytes_per_sec: z.number(),
  eta_sec: z.number().nullable(),
  queue_position: z.number().nullable(),
  will_resume: z.boolean(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
  reason: z.string().optional(),
  error: z.string().optional(),
  resumable: z.boolean(),
});

/** A cluster whose CRC differs from the stored one (lvnode, SPEC §6.10). */
export const badCluster = z.object({
  cluster_index: z.number(),
  /** Where the cluster starts in the lvol, in bytes. */
  offset_bytes: z.number(),
  expected: checksumValue,
  actual: checksumValue,
});
const wholeMismatch = z.object({ expected: checksumValue, actual: checksumValue }).nullable();

/** What the last verification of a snapshot found, in full (bdev_lvol_verify_snapshot, bdev_lvol_get_verification). */
export const verification = z.object({
  verified_at: z.string().nullable(),
  result: z.enum(['clean', 'corrupt', 'incomplete']).nullable(),
  errors_only: z.boolean(),
  clusters_checked: z.number(),
  clusters_total: z.number(),
  bad_cluster_count: z.number(),
  bad_clusters: z.array(badCluster),
  whole: wholeMismatch,
  registration_conflict: z
    .object({ at: z.string(), whole: wholeMismatch, cluster_count: z.number(), clusters: z.array(badCluster) })
    .nullable(),
});

/** The flag listings carry (bdev_lvol_get_lvols, bdev_get_bdevs driver_specific.lvol). */
export const verificationSummary = z.object({
  /** A verify found bad clusters, or a re-registration found other values than those stored. */
  corrupt: z.boolean(),
  result: z.enum(['clean', 'corrupt', 'incomplete']).nullable(),
  verified_at: z.string().nullable(),
  bad_cluster_count: z.number(),
  registration_conflict: z.boolean(),
});

/** A verification window: hours [start_hour, end_hour) UTC on the given weekdays (0 = Sunday). */
export const verifyWindow = z
  .strictObject({
    days: z.array(z.number().int().min(0).max(6)).min(1).max(7),
    start_hour: z.number().int().min(0).max(23),
    end_hour: z.number().int().min(1).max(24),
  })
  .refine((window) => window.start_hour < window.end_hour, { message: 'start_hour must be before end_hour (split a window across midnight in two)', path: ['end_hour'] });

/** The verification policy (node_get_verify_policy; issue 21 item 4). */
export const verifyPolicy = z
  .strictObject({
    enabled: z.boolean(),
    interval_sec: z.number().int().min(verifyIntervalSecMin).max(verifyIntervalSecMax),
    jitter_sec: z.number().int().min(0).max(verifyIntervalSecMax),
    grace_sec: z.number().int().min(0).max(verifyIntervalSecMax),
    windows: z.array(verifyWindow).max(verifyWindowsMax).describe('empty: always open; times are UTC'),
    verify_after_register: z.boolean(),
    rate_mib_per_sec: z
      .number()
      .min(0)
      .max(checksumRateMibPerSecMax)
      .describe('cap on the reads of the verifies the policy starts (on top of checksum_rate_mib_per_sec); 0: none of its own'),
  })
  .refine((policy) => policy.jitter_sec <= policy.interval_sec, { message: 'jitter_sec must not exceed interval_sec', path: ['jitter_sec'] });
