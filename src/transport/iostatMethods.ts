// SPDK's bdev QoS and statistics RPCs (lib/bdev/bdev_rpc.c; issue 23): bdev_set_qos_limit, the
// rebuild rate Longhorn sets, and bdev_get_iostat, which longhorn-spdk-engine reads. Both act on
// the per-bdev state of src/bdev/bdevIo.ts, which every consumer's I/O passes.
import { z } from 'zod';
import type { StorageNode } from '../actors/node.ts';
import { type BdevIoState, type BdevQosLimits } from '../bdev/bdevIo.ts';
import { mibBytes, qosIosPerSecMax, qosIosPerSecStep, qosMibPerSecMax } from '../constants.ts';
import { fail } from '../errors.ts';
import { type RpcMethod, defineMethod } from './methodTable.ts';
import { name, ok } from './schemas.ts';

const mibPerSec = z.number().int().min(0).max(qosMibPerSecMax).optional().describe('MiB/s; 0: no limit; omitted: unchanged');
const iosPerSec = z.number().int().min(0).max(qosIosPerSecMax).optional().describe(`I/Os a second, rounded up to a multiple of ${qosIosPerSecStep}; 0: no limit; omitted: unchanged`);

const iostatRow = z.object({
  name: z.string(),
  bytes_read: z.number(),
  num_read_ops: z.number(),
  bytes_written: z.number(),
  num_write_ops: z.number(),
  bytes_unmapped: z.number(),
  num_unmap_ops: z.number(),
  bytes_copied: z.number(),
  num_copy_ops: z.number(),
  read_latency_ticks: z.number(),
  max_read_latency_ticks: z.number(),
  min_read_latency_ticks: z.number(),
  write_latency_ticks: z.number(),
  max_write_latency_ticks: z.number(),
  min_write_latency_ticks: z.number(),
  unmap_latency_ticks: z.number(),
  max_unmap_latency_ticks: z.number(),
  min_unmap_latency_ticks: z.number(),
  copy_latency_ticks: z.number(),
  max_copy_latency_ticks: z.number(),
  min_copy_latency_ticks: z.number(),
  /** lvnode: requests in flight now, and requests that failed (SPDK's io_error, not by status). */
  queue_depth: z.number(),
  io_errors: z.number(),
});
type IostatRow = z.output<typeof iostatRow>;

const zeroIfNone = (ticks: number): number => (Number.isFinite(ticks) ? ticks : 0);

function iostatView(name: string, io: BdevIoState | undefined): IostatRow {
  return {
    name,
    bytes_read: io?.bytesRead ?? 0,
    num_read_ops: io?.numReadOps ?? 0,
    bytes_written: io?.bytesWritten ?? 0,
    num_write_ops: io?.numWriteOps ?? 0,
    bytes_unmapped: io?.bytesUnmapped ?? 0,
    num_unmap_ops: io?.numUnmapOps ?? 0,
    bytes_copied: 0,
    num_copy_ops: 0,
    read_latency_ticks: io?.readLatencyTicks ?? 0,
    max_read_latency_ticks: io?.maxReadLatencyTicks ?? 0,
    min_read_latency_ticks: zeroIfNone(io?.minReadLatencyTicks ?? 0),
    write_latency_ticks: io?.writeLatencyTicks ?? 0,
    max_write_latency_ticks: io?.maxWriteLatencyTicks ?? 0,
    min_write_latency_ticks: zeroIfNone(io?.minWriteLatencyTicks ?? 0),
    unmap_latency_ticks: io?.unmapLatencyTicks ?? 0,
    max_unmap_latency_ticks: io?.maxUnmapLatencyTicks ?? 0,
    min_unmap_latency_ticks: zeroIfNone(io?.minUnmapLatencyTicks ?? 0),
    copy_latency_ticks: 0,
    max_copy_latency_ticks: 0,
    min_copy_latency_ticks: 0,
    queue_depth: io?.queueDepth ?? 0,
    io_errors: io?.ioErrors ?? 0,
  };
}

/** SPDK's rule: an omitted limit stays as it is, 0 lifts it, an I/O limit rounds up to its step. */
function nextLimits(current: BdevQosLimits, p: { rw_ios_per_sec?: number | undefined; rw_mbytes_per_sec?: number | undefined; r_mbytes_per_sec?: number | undefined; w_mbytes_per_sec?: number | undefined }): BdevQosLimits {
  return {
    rwIosPerSec: p.rw_ios_per_sec === undefined ? current.rwIosPerSec : Math.ceil(p.rw_ios_per_sec / qosIosPerSecStep) * qosIosPerSecStep,
    rwBytesPerSec: p.rw_mbytes_per_sec === undefined ? current.rwBytesPerSec : p.rw_mbytes_per_sec * mibBytes,
    rBytesPerSec: p.r_mbytes_per_sec === undefined ? current.rBytesPerSec : p.r_mbytes_per_sec * mibBytes,
    wBytesPerSec: p.w_mbytes_per_sec === undefined ? current.wBytesPerSec : p.w_mbytes_per_sec * mibBytes,
  };
}

export function iostatMethods(node: StorageNode): Record<string, RpcMethod> {
  const io = node.registry.io;
  return {
    bdev_set_qos_limit: defineMethod({
      description:
        'Set a bdev’s rate limits (SPDK): rw_ios_per_sec, rw_mbytes_per_sec, r_mbytes_per_sec, w_mbytes_per_sec; 0 lifts a limit, an omitted one is unchanged. Every consumer’s I/O (NBD, NVMe-oF, copies to it, RPC I/O) waits its turn; bdev_get_bdevs shows them as assigned_rate_limits.',
      priority: 'foreground',
      params: z.strictObject({ name, rw_ios_per_sec: iosPerSec, rw_mbytes_per_sec: mibPerSec, r_mbytes_per_sec: mibPerSec, w_mbytes_per_sec: mibPerSec }),
      result: ok,
      handler: async (p) => {
        const bdev = node.registry.findBdev(p.name);
        if (p.rw_ios_per_sec === undefined && p.rw_mbytes_per_sec === undefined && p.r_mbytes_per_sec === undefined && p.w_mbytes_per_sec === undefined) {
          fail('EINVAL', 'No rate limits specified');
        }
        const state = io.of(bdev);
        state.setLimits(nextLimits(state.limits, p));
        return true as const;
      },
    }),
    bdev_get_iostat: defineMethod({
      description:
        'I/O statistics of one bdev (by name or alias) or of every base and NVMe bdev and every lvol a consumer has opened or limited (SPDK’s shape; latencies in ticks of tick_rate a second). Counted where consumers’ I/O passes: an lvstore’s own I/O on its base bdev is not.',
      priority: 'foreground',
      params: z.strictObject({ name: name.optional(), per_channel: z.literal(false).optional().describe('lvnode has one channel per bdev: only false') }),
      result: z.object({ tick_rate: z.number(), ticks: z.number(), bdevs: z.array(iostatRow) }),
      handler: async (p) => {
        const { tickRate } = io.clock;
        const ticks = io.clock.ticks();
        if (p.name !== undefined) {
          const bdev = node.registry.findBdev(p.name);
          return { tick_rate: tickRate, ticks, bdevs: [iostatView(bdev.name, io.peek(bdev))] };
        }
        io.prune((bdevName, uuid) => node.registry.bdevExists(bdevName, uuid));
        const rows: IostatRow[] = [];
        for (const bdev of node.registry.bdevs.values()) rows.push(iostatView(bdev.name, io.peek(bdev)));
        for (const bdev of node.registry.moduleBdevs.values()) rows.push(iostatView(bdev.name, io.peek(bdev)));
        for (const [bdevName, state] of io.entries()) {
          if (!node.registry.bdevs.has(bdevName) && !node.registry.moduleBdevs.has(bdevName)) rows.push(iostatView(bdevName, state));
        }
        return { tick_rate: tickRate, ticks, bdevs: rows };
      },
    }),
  };
}
