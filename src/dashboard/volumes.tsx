// The Volumes view: bdevs, their lvstores, and each lvstore's lvols as snapshot chains, with
// checksum state, progress, stored value and the Start / Stop / Resume buttons.
import { memo } from 'preact/compat';
import { useCallback, useMemo, useRef, useState } from 'preact/hooks';
import type { Listing } from './app.tsx';
import { formatBytes, formatEta, formatPercent, formatRate, formatU64 } from './format.ts';
import { DashboardRpc, RpcCallError } from './rpc.ts';
import { type LvolRow, type LvstoreNode, buildTree, checksumActions, lvolRows } from './tree.ts';
import type { ChecksumRow } from './types.ts';

type ActionResult = { kind: 'pending' | 'ok' | 'error'; text: string };

const rowsPerPage = 2000;

function errorText(error: unknown): string {
  if (error instanceof RpcCallError) return `${error.text} (${error.code})`;
  return error instanceof Error ? error.message : String(error);
}

export function VolumesView({ rpc, listing, error, onInspect }: { rpc: DashboardRpc; listing: Listing; error: string | null; onInspect: (actorId: string) => void }) {
  const tree = useMemo(() => buildTree(listing.bdevs, listing.lvstores, listing.lvols), [listing.bdevs, listing.lvstores, listing.lvols]);
  const [results, setResults] = useState<ReadonlyMap<string, ActionResult>>(new Map());
  const [collapsed, setCollapsed] = useState<ReadonlySet<string>>(new Set());
  const [filter, setFilter] = useState('');

  // Stable callbacks, so memoized rows do not all re-render on every change.
  const act = useCallback(
    (uuid: string, label: string, method: string, params: Record<string, unknown>) => {
      const set = (result: ActionResult) => setResults((current) => new Map(current).set(uuid, result));
      set({ kind: 'pending', text: `${label}: sent, waiting for the node…` });
      rpc.call(method, params).then(
        (result) => set({ kind: 'ok', text: `${label}: ${JSON.stringify(result)}` }),
        (caught: unknown) => set({ kind: 'error', text: `${label}: ${errorText(caught)}` }),
      );
    },
    [rpc],
  );
  const toggle = useCallback(
    (uuid: string) =>
      setCollapsed((current) => {
        const next = new Set(current);
        if (!next.delete(uuid)) next.add(uuid);
        return next;
      }),
    [],
  );
  const inspectRef = useRef(onInspect);
  inspectRef.current = onInspect;
  const inspect = useCallback((actorId: string) => inspectRef.current(actorId), []);

  const needle = filter.trim().toLowerCase();
  const unloadedByBdev = useMemo(() => new Map(listing.unloaded.map((entry) => [entry.bdev_name, entry])), [listing.unloaded]);
  return (
    <section class="volumes" aria-label="volumes">
      <div class="toolbar">
        <input type="search" placeholder="Filter lvols by name" aria-label="Filter lvols" value={filter} onInput={(event) => setFilter((event.target as HTMLInputElement).value)} />
        <span class="muted">
          {tree.lvolCount} lvols · {listing.lvstores.length} lvstores · {tree.bdevs.length} bdevs
        </span>
        {error ? <span class="error" role="alert">{error}</span> : null}
      </div>
      {tree.bdevs.length === 0 && listing.loadedAtMs > 0 ? <p class="muted">No bdevs yet. Create one with bdev_malloc_create or bdev_aio_create.</p> : null}
      {tree.bdevs.map((bdev) => (
        <div class="bdev" key={bdev.name}>
          <h2>
            <span class="kind">{bdev.lvolAlias ? 'lvol bdev' : bdev.productName}</span> {bdev.lvolAlias ?? bdev.name}{' '}
            <span class="muted">{formatBytes(bdev.sizeBytes)}</span>
            {bdev.lvstores.length === 0 && !unloadedByBdev.has(bdev.name) ? <span class="muted"> · no lvstore</span> : null}
          </h2>
          {unloadedByBdev.has(bdev.name) ? (
            <p class="error" role="alert">
              lvstore not loaded ({unloadedByBdev.get(bdev.name)!.reason}): {unloadedByBdev.get(bdev.name)!.detail}
            </p>
          ) : null}
          {bdev.lvstores.map((store) => (
            <LvstoreTable key={store.lvstore.uuid} store={store} checksums={listing.checksums} collapsed={collapsed} needle={needle} results={results} act={act} toggle={toggle} onInspect={inspect} />
          ))}
        </div>
      ))}
    </section>
  );
}

interface TableProps {
  store: LvstoreNode;
  checksums: ReadonlyMap<string, ChecksumRow>;
  collapsed: ReadonlySet<string>;
  needle: string;
  results: ReadonlyMap<string, ActionResult>;
  act: (uuid: string, label: string, method: string, params: Record<string, unknown>) => void;
  toggle: (uuid: string) => void;
  onInspect: (actorId: string) => void;
}

function LvstoreTable({ store, checksums, collapsed, needle, results, act, toggle, onInspect }: TableProps) {
  const { lvstore } = store;
  const rows = useMemo(() => lvolRows(store, needle ? new Set() : collapsed), [store, collapsed, needle]);
  const matching = needle ? rows.filter((row) => row.node.lvol.alias.toLowerCase().includes(needle)) : rows;
  // Thousands of rows render fine; a hundred thousand would not: draw in pages, filter for the rest.
  const [limit, setLimit] = useState(rowsPerPage);
  const shown = matching.length > limit ? matching.slice(0, limit) : matching;
  const usedClusters = lvstore.total_data_clusters - lvstore.free_clusters;
  return (
    <div class="lvstore" data-lvstore={lvstore.name}>
      <h3>
        <span class="kind">lvstore</span> {lvstore.name} <span class="muted">{lvstore.uuid}</span>
        <span class="capacity">
          {formatBytes(usedClusters * lvstore.cluster_size)} of {formatBytes(lvstore.total_data_clusters * lvstore.cluster_size)} used · clusters of{' '}
          {formatBytes(lvstore.cluster_size)} · {store.lvolCount} lvols
        </span>
        {lvstore.metadata_error ? <span class="error"> metadata: {lvstore.metadata_error}</span> : null}
      </h3>
      {shown.length === 0 ? (
        <p class="muted">{store.lvolCount === 0 ? 'No lvols.' : 'No lvol matches the filter.'}</p>
      ) : (
        <table class="lvols">
          <thead>
            <tr>
              <th scope="col">lvol</th>
              <th scope="col">size</th>
              <th scope="col">allocated</th>
              <th scope="col">kind</th>
              <th scope="col">checksum</th>
              <th scope="col">actions</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((row) => (
              <LvolRowView
                key={row.node.lvol.uuid}
                row={row}
                clusterSize={lvstore.cluster_size}
                checksum={checksums.get(row.node.lvol.uuid)}
                result={results.get(row.node.lvol.uuid)}
                collapsed={collapsed.has(row.node.lvol.uuid)}
                act={act}
                toggle={toggle}
                onInspect={onInspect}
              />
            ))}
          </tbody>
        </table>
      )}
      {matching.length > shown.length ? (
        <p class="muted">
          Showing {shown.length} of {matching.length} lvols.{' '}
          <button type="button" class="secondary" onClick={() => setLimit(limit + rowsPerPage)}>
            Show {Math.min(rowsPerPage, matching.length - shown.length)} more
          </button>
        </p>
      ) : null}
    </div>
  );
}

interface RowProps {
  row: LvolRow;
  clusterSize: number;
  checksum: ChecksumRow | undefined;
  result: ActionResult | undefined;
  collapsed: boolean;
  act: TableProps['act'];
  toggle: TableProps['toggle'];
  onInspect: TableProps['onInspect'];
}

// Rows re-render only when their own lvol, checksum or result changed: progress of one walk
// does not re-render a thousand rows.
const LvolRowView = memo(function LvolRowView({ row, checksum, result, collapsed, act, toggle, onInspect }: RowProps) {
  const { lvol } = row.node;
  const hasChildren = row.node.children.length > 0;
  const kind = [lvol.is_snapshot ? 'snapshot' : lvol.is_clone ? 'clone' : 'volume', lvol.is_thin_provisioned ? 'thin' : 'thick'];
  if (lvol.read_only) kind.push('read-only');
  if (lvol.is_esnap_clone) kind.push('esnap clone');
  if (lvol.is_degraded) kind.push('degraded');
  const corrupt = lvol.verification?.corrupt === true;
  const rowClass = [lvol.is_snapshot ? 'snapshot' : '', corrupt ? 'corrupt' : ''].filter(Boolean).join(' ') || undefined;
  return (
    <tr data-uuid={lvol.uuid} data-alias={lvol.alias} class={rowClass}>
      <th scope="row" class="name" style={{ paddingLeft: `${0.5 + row.depth * 1.4}rem` }}>
        {row.depth > 0 ? <span class="branch" aria-hidden="true">{row.last ? '└─' : '├─'}</span> : null}
        {hasChildren ? (
          <button type="button" class="fold" aria-expanded={!collapsed} aria-label={`${collapsed ? 'Expand' : 'Collapse'} ${lvol.alias}`} onClick={() => toggle(lvol.uuid)}>
            {collapsed ? '▸' : '▾'}
          </button>
        ) : null}
        <span class="lvol-name">{lvol.name}</span> <span class="alias">{lvol.alias}</span>
        {row.node.externalParent ? <span class="muted"> ← external {row.node.externalParent}</span> : null}
      </th>
      <td class="num">{formatBytes(row.node.sizeBytes)}</td>
      <td class="num" title={`${lvol.num_allocated_clusters} of ${lvol.num_clusters} clusters`}>
        {lvol.num_allocated_clusters} / {lvol.num_clusters} <span class="muted">({formatBytes(row.node.allocatedBytes)})</span>
      </td>
      <td>
        {kind.join(' · ')}
        {corrupt ? (
          <span class="error" title={`verified ${lvol.verification?.verified_at ?? 'never'}; see lvnode status or bdev_lvol_get_verification`}>
            {' · '}corrupt: {lvol.verification?.bad_cluster_count ?? 0} bad cluster{lvol.verification?.bad_cluster_count === 1 ? '' : 's'}
          </span>
        ) : null}
      </td>
      <td class="checksum">{lvol.is_snapshot ? <ChecksumCell alias={lvol.alias} row={checksum} /> : <span class="muted">—</span>}</td>
      <td class="actions">
        {lvol.is_snapshot
          ? checksumActions(checksum).map((action) =>
              action === 'stop' ? (
                <button type="button" onClick={() => act(lvol.uuid, 'Stop', 'bdev_lvol_stop_snapshot_checksum', { name: lvol.uuid })}>
                  Stop
                </button>
              ) : action === 'resume' ? (
                <button type="button" onClick={() => act(lvol.uuid, 'Resume', 'bdev_lvol_register_snapshot_checksum', { name: lvol.uuid, resume: true })}>
                  Resume
                </button>
              ) : (
                <button type="button" onClick={() => act(lvol.uuid, 'Start checksum', 'bdev_lvol_register_snapshot_checksum', { name: lvol.uuid })}>
                  Start checksum
                </button>
              ),
            )
          : null}
        <button type="button" class="secondary" onClick={() => onInspect(lvol.uuid)} aria-label={`Inspect ${lvol.alias}`}>
          Inspect
        </button>
        {result ? (
          <div class={`result ${result.kind}`} role={result.kind === 'error' ? 'alert' : 'status'}>
            {result.text}
          </div>
        ) : null}
      </td>
    </tr>
  );
});

function ChecksumCell({ alias, row }: { alias: string; row: ChecksumRow | undefined }) {
  if (!row || row.state === 'idle') return <span class="state idle">idle</span>;
  const state = <span class={`state ${row.state}`}>{row.state}</span>;
  if (row.state === 'queued') return <span>{state} {row.queue_position !== null ? `(position ${row.queue_position})` : ''}</span>;
  if (row.state === 'computing' || row.state === 'stopping' || row.state === 'storing') {
    return (
      <div class="progress">
        {state}
        <progress max={row.clusters_total} value={row.clusters_done} aria-label={`checksum progress of ${alias}`} />
        <span class="figures">
          {formatPercent(row.clusters_done, row.clusters_total)} · {row.clusters_done}/{row.clusters_total} clusters · {formatRate(row.rate_bytes_per_sec)} · ETA {formatEta(row.eta_sec)}
        </span>
      </div>
    );
  }
  if (row.state === 'done') {
    const value = row.checksum === undefined || row.checksum === null ? null : safeU64(row.checksum);
    return (
      <div>
        {state}{' '}
        {value ? (
          <span class="value">
            <code title="CRC-64/GO-ISO, hex">{value.hex}</code> <code class="muted" title="decimal">{value.decimal}</code>
          </span>
        ) : (
          <span class="muted">reading value…</span>
        )}
      </div>
    );
  }
  // aborted or failed: say why, and how far it got.
  return (
    <div>
      {state} <span class="reason">{row.error ?? row.reason ?? ''}</span>{' '}
      <span class="muted">
        {row.clusters_done}/{row.clusters_total} clusters{row.resumable ? ' · resumable' : ''}
      </span>
    </div>
  );
}

function safeU64(value: bigint | number): { hex: string; decimal: string } | null {
  try {
    return formatU64(value);
  } catch {
    return null;
  }
}
