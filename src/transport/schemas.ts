// Zod schemas that several method groups share (src/transport/methods.ts, observeMethods.ts).
import { z } from 'zod';
import { nameLengthMax } from '../constants.ts';
import { u64 } from './json64.ts';

/** An existing object's name: a bdev, an lvstore, `lvs/lvol` or a UUID. */
export const name = z.string().min(1).max(2 * nameLengthMax + 1);
export const ok = z.literal(true);
export const checksumValue = u64.describe('CRC-64/GO-ISO as an exact unsigned 64-bit JSON integer');
export const checksumStatus = z.object({
  state: z.enum(['idle', 'queued', 'computing', 'stopping', 'storing', 'aborted', 'done', 'failed']),
  mode: z.enum(['whole', 'range']).nullable(),
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
