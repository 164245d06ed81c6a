// `lvnode status`: a `zpool status`-like summary of the node, rendered by a pure function from
// the results of five listing RPCs (no call per lvol, so it stays linear in the lvol count).
import { formatBytes, formatEta, formatPercent, formatRate, formatU64 } from '../dashboard/format.ts';
import { type ChecksumStatusView, renderChecksumLine } from './progress.ts';
import type { RpcClient } from './rpcClient.ts';

/** An element of `bdev_lvol_get_lvstores`. */
export interface LvstoreView {
  uuid: string;
  name: string;
  base_bdev: string;
  total_data_clusters: number;
  free_clusters: number;
  cluster_size: number;
  metadata_error?: string;
}

/** An element of `bdev_lvol_get_lvols`. */
export interface LvolView {
  alias: string;
  uuid: string;
  name: string;
  is_thin_provisioned: boolean;
  is_snapshot: boolean;
  is_esnap_clone: boolean;
  is_degraded: boolean;
  num_allocated_clusters: number | bigint;
  num_clusters: number | bigint;
  read_only: boolean;
  parent: string | null;
  lvs: { name: string; uuid: string };
  /** Present once verified or a re-registration conflicted (SPEC §6.10). */
  verification?: { corrupt: boolean; result: string | null; verified_at: string | null; bad_cluster_count: number; registration_conflict: boolean };
}

/** A bad cluster as `bdev_lvol_get_verification` lists it. */
interface BadClusterView {
  cluster_index: number;
  offset_bytes: number;
  expected: bigint | number;
  actual: bigint | number;
}

/** `bdev_lvol_get_verification` of a snapshot flagged corrupt, for the errors section. */
export interface DamagedView {
  alias: string;
  verified_at: string | null;
  result: string | null;
  bad_cluster_count: number;
  bad_clusters: BadClusterView[];
  whole: { expected: bigint | number; actual: bigint | number } | null;
  registration_conflict: { at: string; cluster_count: number; clusters: BadClusterView[]; whole: { expected: bigint | number; actual: bigint | number } | null } | null;
}

/** An element of `node_get_checksums`: status, lvol and the stored value (exact, bigint beyond 2^53). */
export interface ChecksumEntryView extends ChecksumStatusView {
  uuid: string;
  alias: string;
  checksum: bigint | number | string | null;
}

/** The parts of `node_get_stats` shown. */
export interface NodeStatsView {
  uptime_sec?: number;
  connections?: number;
  event_loop_delay_ms?: { p99: number };
  checksums?: { rate_bytes_per_sec: number };
  background?: { running: number; queued: number; max_concurrent_checksums?: number; checksum_rate_mib_per_sec?: number };
  verify_policy?: {
    state: string;
    enabled: boolean;
    running: number;
    due: number;
    overdue: number;
    snapshots_with_checksums: number;
    /** Snapshots whose policy verifies failed on read errors, waiting out their back-off (older nodes: absent). */
    backing_off?: number;
    next_retry_at?: string | null;
  };
}

/** A copy as `inspect_get_actors` lists it: its label and machine state. */
export interface CopyView {
  label: string;
  state: string;
}

export interface StatusInput {
  lvstores: LvstoreView[];
  lvols: LvolView[];
  checksums: ChecksumEntryView[];
  stats: NodeStatsView;
  copies: CopyView[];
  /** Bdevs whose lvstore the node did not load (damaged metadata, or a name/UUID clash). */
  unloaded?: Array<{ bdev_name: string; reason: string; detail: string }>;
  /** Snapshots flagged corrupt, with what their verification found (`zpool status -v`'s errors). */
  damaged?: DamagedView[];
}

/** Fetches what `renderStatus` draws: a fixed number of calls, whatever the lvol count. */
export async function collectStatus(client: RpcClient): Promise<StatusInput> {
  const [lvstores, lvols, checksums, stats, actors, unloaded] = await Promise.all([
    client.call<LvstoreView[]>('bdev_lvol_get_lvstores'),
    client.call<LvolView[]>('bdev_lvol_get_lvols'),
    client.call<ChecksumEntryView[]>('node_get_checksums'),
    client.call<NodeStatsView>('node_get_stats'),
    // Copies are listed among the inspectable actors (limit 0: no lvols). Without them (an older
    // node) the summary still shows everything else.
    client.call<{ actors: Array<{ kind: string; label: string; value: unknown }> }>('inspect_get_actors', { limit: 0 }).catch(() => ({ actors: [] })),
    client.call<NonNullable<StatusInput['unloaded']>>('node_get_unloaded_lvstores').catch(() => []),
  ]);
  const copies = actors.actors.filter((actor) => actor.kind === 'copy').map((actor) => ({ label: actor.label, state: stateText(actor.value) }));
  // One call per snapshot flagged corrupt: few on a healthy node, and each names its bad clusters.
  const flagged = lvols.filter((lvol) => lvol.verification?.corrupt);
  const damaged = await Promise.all(
    flagged.map(async (lvol) => ({ alias: lvol.alias, ...(await client.call<Omit<DamagedView, 'alias'>>('bdev_lvol_get_verification', { name: lvol.uuid })) })),
  );
  return { lvstores, lvols, checksums, stats, copies, unloaded, damaged };
}

/** An XState state value as text: "copying", or "a.b" for nested ones. */
function stateText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object') {
    return Object.entries(value)
      .map(([key, inner]) => `${key}.${stateText(inner)}`)
      .join(', ');
  }
  return String(value);
}

const indent = '    ';
const treeIndent = '  ';
const runningStates: ReadonlySet<string> = new Set(['queued', 'computing', 'stopping', 'storing']);

/** The whole summary, ending with a newline. */
export function renderStatus(input: StatusInput): string {
  const checksumByUuid = new Map(input.checksums.map((entry) => [entry.uuid, entry]));
  const lvolsByStore = new Map<string, LvolView[]>();
  for (const lvol of input.lvols) {
    const list = lvolsByStore.get(lvol.lvs.uuid) ?? [];
    list.push(lvol);
    lvolsByStore.set(lvol.lvs.uuid, list);
  }
  const sections: string[] = [];
  const stores = [...input.lvstores].sort((a, b) => a.name.localeCompare(b.name));
  if (stores.length === 0) sections.push('no lvstores\n');
  for (const store of stores) sections.push(renderLvstore(store, lvolsByStore.get(store.uuid) ?? [], checksumByUuid));
  for (const entry of input.unloaded ?? []) {
    sections.push(field('bdev', entry.bdev_name) + field('state', `NOT LOADED (${entry.reason === 'damaged' ? 'DAMAGED' : 'CONFLICT'}): ${entry.detail}`));
  }
  sections.push(renderErrors(input.damaged ?? []));
  sections.push(renderRunning(input.checksums));
  if (input.copies.length > 0) sections.push(renderCopies(input.copies));
  sections.push(renderNode(input.stats));
  return sections.join('\n');
}

function field(label: string, value: string): string {
  return `${label.padStart(8)}: ${value}\n`;
}

function renderLvstore(store: LvstoreView, lvols: LvolView[], checksumByUuid: Map<string, ChecksumEntryView>): string {
  const degraded = lvols.filter((lvol) => lvol.is_degraded).length;
  const state =
    store.metadata_error !== undefined
      ? `DAMAGED: ${store.metadata_error} (changes are refused; reads go on)`
      : degraded > 0
        ? `DEGRADED (${degraded} lvol${degraded === 1 ? '' : 's'} without ${degraded === 1 ? 'its' : 'their'} external snapshot)`
        : 'ONLINE';
  const totalBytes = store.total_data_clusters * store.cluster_size;
  const freeBytes = store.free_clusters * store.cluster_size;
  const usedPercent = formatPercent(store.total_data_clusters - store.free_clusters, store.total_data_clusters);
  const header =
    field('lvstore', store.name) +
    field('uuid', store.uuid) +
    field('base', store.base_bdev) +
    field('cluster', formatBytes(store.cluster_size)) +
    field('capacity', `${formatBytes(totalBytes)}, ${formatBytes(freeBytes)} free (${usedPercent} used)`) +
    field('state', state);
  if (lvols.length === 0) return `${header}\n${indent}no lvols\n`;
  const rows = [['NAME', 'STATE', 'SIZE', 'ALLOC', 'TYPE', 'MODE', 'CHECKSUM']];
  for (const { lvol, depth } of chainOrder(lvols)) rows.push(lvolRow(lvol, depth, store, checksumByUuid.get(lvol.uuid)));
  return `${header}\n${renderTable(rows)}`;
}

/**
 * The lvols in tree order, snapshot → clones, depth first: roots are lvols without a parent in
 * this lvstore (plain lvols, bottom snapshots, clones of an external snapshot). Iterative, so a
 * chain of any length draws.
 */
export function chainOrder(lvols: LvolView[]): Array<{ lvol: LvolView; depth: number }> {
  const byUuid = new Map(lvols.map((lvol) => [lvol.uuid, lvol]));
  const children = new Map<string, LvolView[]>();
  const roots: LvolView[] = [];
  for (const lvol of lvols) {
    if (lvol.parent !== null && byUuid.has(lvol.parent)) {
      const list = children.get(lvol.parent) ?? [];
      list.push(lvol);
      children.set(lvol.parent, list);
    } else roots.push(lvol);
  }
  const byName = (a: LvolView, b: LvolView) => b.name.localeCompare(a.name); // reversed: popped from a stack
  const stack = roots.sort(byName).map((lvol) => ({ lvol, depth: 0 }));
  const order: Array<{ lvol: LvolView; depth: number }> = [];
  while (stack.length > 0) {
    const next = stack.pop()!;
    order.push(next);
    for (const child of (children.get(next.lvol.uuid) ?? []).sort(byName)) stack.push({ lvol: child, depth: next.depth + 1 });
  }
  return order;
}

function lvolRow(lvol: LvolView, depth: number, store: LvstoreView, checksum: ChecksumEntryView | undefined): string[] {
  const external = lvol.is_esnap_clone && lvol.parent !== null ? ` (external snapshot ${lvol.parent})` : '';
  return [
    `${treeIndent.repeat(depth)}${lvol.name}${external}`,
    lvol.is_degraded ? 'DEGRADED' : 'ONLINE',
    formatBytes(Number(lvol.num_clusters) * store.cluster_size),
    formatBytes(Number(lvol.num_allocated_clusters) * store.cluster_size),
    lvol.is_thin_provisioned ? 'thin' : 'thick',
    lvol.read_only ? 'ro' : 'rw',
    (checksum === undefined ? '-' : checksumCell(checksum)) + (lvol.verification?.corrupt ? ' CORRUPT' : ''),
  ];
}

/** The CHECKSUM column: the value in hex when done, progress while running, the reason when stopped. */
export function checksumCell(entry: ChecksumEntryView): string {
  const percent = formatPercent(entry.clusters_done, entry.clusters_total);
  const range = entry.mode === 'range' ? ' (range)' : '';
  switch (entry.state) {
    case 'done':
      return entry.checksum === null ? `done${range}` : `done ${formatU64(entry.checksum).hex}${range}`;
    case 'computing':
      return `computing ${percent} ${formatRate(entry.rate_bytes_per_sec)} ETA ${formatEta(entry.eta_sec)}${range}`;
    case 'queued':
      return `queued${entry.queue_position === null ? '' : ` (position ${entry.queue_position})`}${range}`;
    case 'stopping':
    case 'storing':
      return `${entry.state} ${percent}${range}`;
    case 'aborted':
      return `aborted at ${percent}: ${entry.reason ?? 'stopped'}${entry.will_resume ? ' (will resume)' : ''}`;
    case 'failed':
      return `failed: ${entry.error ?? 'unknown error'}`;
    case 'idle':
      return '-';
  }
}

/** Columns padded to their widest cell, two spaces apart; the last one is not padded. */
function renderTable(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, column) => (widths[column] = Math.max(widths[column] ?? 0, cell.length)));
  return rows
    .map((row) => `${indent}${row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')}`.trimEnd())
    .join('\n')
    .concat('\n');
}

/**
 * As `zpool status -v` lists damaged files: each snapshot a verify found corrupt, and each bad
 * cluster with where it lies in the lvol and the stored and read CRCs.
 */
export function renderErrors(damaged: DamagedView[]): string {
  if (damaged.length === 0) return 'errors: no known data errors\n';
  const lines = [`errors: ${damaged.length} snapshot${damaged.length === 1 ? '' : 's'} with corrupt clusters:`];
  const hex = (value: bigint | number) => formatU64(value).hex;
  const clusterLine = (bad: BadClusterView, read: string) =>
    `${indent}${indent}cluster ${bad.cluster_index} (bytes ${bad.offset_bytes}..): stored ${hex(bad.expected)}, ${read} ${hex(bad.actual)}`;
  for (const entry of [...damaged].sort((a, b) => a.alias.localeCompare(b.alias))) {
    const when = entry.verified_at ? `verified ${entry.verified_at}` : 'not verified';
    lines.push(`${indent}${entry.alias}  ${entry.result ?? 'conflict'}, ${when}, ${entry.bad_cluster_count} bad cluster${entry.bad_cluster_count === 1 ? '' : 's'}`);
    for (const bad of entry.bad_clusters) lines.push(clusterLine(bad, 'read'));
    if (entry.bad_clusters.length < entry.bad_cluster_count) lines.push(`${indent}${indent}(${entry.bad_cluster_count - entry.bad_clusters.length} more not kept)`);
    if (entry.whole) lines.push(`${indent}${indent}whole checksum: stored ${hex(entry.whole.expected)}, read ${hex(entry.whole.actual)}`);
    const conflict = entry.registration_conflict;
    if (conflict) {
      lines.push(`${indent}${indent}re-registered ${conflict.at} with other values (old kept as evidence):`);
      for (const bad of conflict.clusters) lines.push(`${indent}${clusterLine(bad, 'now')}`);
      if (conflict.whole) lines.push(`${indent}${indent}${indent}whole checksum: was ${hex(conflict.whole.expected)}, now ${hex(conflict.whole.actual)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function renderRunning(checksums: ChecksumEntryView[]): string {
  const running = checksums.filter((entry) => runningStates.has(entry.state)).sort((a, b) => a.alias.localeCompare(b.alias));
  if (running.length === 0) return 'checksums running: none\n';
  return `checksums running:\n${running.map((entry) => `${indent}${renderChecksumLine(entry.alias, entry)}\n`).join('')}`;
}

function renderCopies(copies: CopyView[]): string {
  return `copies:\n${copies.map((copy) => `${indent}${copy.label}  ${copy.state}\n`).join('')}`;
}

function renderNode(stats: NodeStatsView): string {
  const parts: string[] = [];
  if (stats.event_loop_delay_ms) parts.push(`event-loop delay p99 ${stats.event_loop_delay_ms.p99} ms`);
  if (stats.connections !== undefined) parts.push(`${stats.connections} connection${stats.connections === 1 ? '' : 's'}`);
  if (stats.uptime_sec !== undefined) parts.push(`up ${formatEta(stats.uptime_sec)}`);
  let text = `node: ${parts.length > 0 ? parts.join(', ') : 'no figures'}\n`;
  const background = stats.background;
  if (background) {
    const limits = [
      background.max_concurrent_checksums === undefined ? null : `at most ${background.max_concurrent_checksums} at once`,
      background.checksum_rate_mib_per_sec === undefined
        ? null
        : background.checksum_rate_mib_per_sec > 0
          ? `rate cap ${background.checksum_rate_mib_per_sec} MiB/s`
          : 'no rate cap',
    ].filter((part) => part !== null);
    const rate = stats.checksums && stats.checksums.rate_bytes_per_sec > 0 ? `; checksums read ${formatRate(stats.checksums.rate_bytes_per_sec)}` : '';
    text += `background: ${background.running} running, ${background.queued} queued${limits.length > 0 ? ` (${limits.join(', ')})` : ''}${rate}\n`;
  }
  const policy = stats.verify_policy;
  if (policy) {
    // Overdue first and loud: a snapshot not verified in time is what the operator must act on.
    // Back-off after read errors next: the device under those snapshots needs a look.
    const backingOff = (policy.backing_off ?? 0) > 0 ? `${policy.backing_off} backing off after read errors (next retry ${policy.next_retry_at}), ` : '';
    text += policy.enabled
      ? `verify policy: ${policy.overdue > 0 ? `OVERDUE ${policy.overdue}, ` : ''}${backingOff}${policy.due} due, ${policy.running} verifying, ${policy.snapshots_with_checksums} snapshots with checksums (${policy.state})\n`
      : 'verify policy: off (node_set_verify_policy)\n';
  }
  return text;
}
