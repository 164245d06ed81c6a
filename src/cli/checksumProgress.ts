// `lvnode rpc bdev_lvol_register_snapshot_*` on a TTY: follows the walk through checksum
// notifications on the call's own connection and draws them as a progress line on stderr.
import { type ChecksumStatusView, type ProgressLine, renderChecksumLine } from './progress.ts';
import { RpcCallError, type RpcClient } from './rpcClient.ts';

/** The calls that wait for a checksum walk, and so get a progress line. */
export const checksumRegisterMethods: ReadonlySet<string> = new Set([
  'bdev_lvol_register_snapshot_checksum',
  'bdev_lvol_register_snapshot_range_checksums',
]);

const watchedTypes = ['checksum_state', 'checksum_progress'];

interface ChecksumNotification extends ChecksumStatusView {
  type: string;
  uuid: string;
}

export interface ChecksumWatch {
  /** Ends the watch after the call answered: erases the line, or leaves the stop reason on it. */
  end(error?: unknown): void;
}

/**
 * Subscribes to checksum notifications and resolves the lvol's UUID (they carry it), both before
 * the call is sent. When either fails (no such lvol, an older node), nothing is drawn: the call
 * itself reports the error exactly as without a TTY.
 */
export async function watchChecksum(client: RpcClient, name: string, line: ProgressLine): Promise<ChecksumWatch> {
  let uuid: string | null = null;
  let label = name;
  let last: ChecksumStatusView | null = null;
  let ended = false;
  const removeHandler = client.on('notify', (params) => {
    const event = params as ChecksumNotification;
    if (ended || uuid === null || event.uuid !== uuid || !watchedTypes.includes(event.type)) return;
    last = event;
    line.update(renderChecksumLine(label, event));
  });
  try {
    const [, bdevs] = await Promise.all([
      client.call('notify_subscribe', { types: watchedTypes }),
      client.call<Array<{ uuid: string; aliases?: string[] }>>('bdev_get_bdevs', { name }),
    ]);
    const bdev = bdevs[0];
    if (bdev === undefined) throw new Error(`no bdev ${name}`);
    uuid = bdev.uuid;
    label = bdev.aliases?.[0] ?? name;
  } catch {
    removeHandler();
    return { end: () => undefined };
  }
  line.update(`${label}  starting`);
  return {
    end: (error?: unknown) => {
      ended = true;
      removeHandler();
      const stopped = stoppedStatus(last, error);
      if (stopped) line.finish(renderChecksumLine(label, stopped));
      else line.clear();
    },
  };
}

/** The walk's final status when the call failed because it was stopped or preempted, else null. */
function stoppedStatus(last: ChecksumStatusView | null, error: unknown): ChecksumStatusView | null {
  if (!(error instanceof RpcCallError)) return null;
  const data = (error.data ?? {}) as { reason?: unknown; clusters_done?: unknown; clusters_total?: unknown };
  if (typeof data.reason !== 'string') return last?.state === 'aborted' || last?.state === 'failed' ? last : null;
  return {
    ...(last ?? { rate_bytes_per_sec: 0, eta_sec: null, queue_position: null }),
    state: 'aborted',
    reason: data.reason,
    clusters_done: typeof data.clusters_done === 'number' ? data.clusters_done : (last?.clusters_done ?? 0),
    clusters_total: typeof data.clusters_total === 'number' ? data.clusters_total : (last?.clusters_total ?? 0),
  };
}
