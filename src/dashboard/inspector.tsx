// The Inspector view: pick an actor, see its machine as a statechart with the active states lit
// as events arrive, and a live event log (inspect_subscribe) with the snapshot after each event.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { appendBatch, emptyLog, type EventLog, eventTypeOf, type LogRow, filterRows, formatStateValue, pinName } from './eventLog.ts';
import { DashboardRpc, RpcCallError } from './rpc.ts';
import { type Chart, type MachineNode, activeStateIds, layoutMachine, takenEdges } from './statechart.ts';
import type { InspectionBatch } from './types.ts';

interface ActorEntry {
  actor_id: string;
  kind: string;
  label: string;
  value: unknown;
}

interface Inspected {
  actor_id: string;
  session_id: string;
  kind: string;
  label: string;
  machine: MachineNode;
  snapshot: { value: unknown; status: unknown; context: unknown };
}

const logRowsShown = 300;
const actorListRefreshMs = 3000;
const takenHighlightMs = 700;

function errorText(error: unknown): string {
  if (error instanceof RpcCallError) return error.text;
  return error instanceof Error ? error.message : String(error);
}

/** JSON with bigints written exactly (as the node sends them). */
function showJson(value: unknown): string {
  return JSON.stringify(value, (_key, item: unknown) => (typeof item === 'bigint' ? item.toString() : item), 2) ?? '';
}

export function InspectorView({ rpc, actorId, onPick }: { rpc: DashboardRpc; actorId: string | null; onPick: (actorId: string) => void }) {
  return (
    <section class="inspector" aria-label="inspector">
      <ActorList rpc={rpc} selected={actorId} onPick={onPick} />
      {actorId ? <ActorInspector key={actorId} rpc={rpc} actorId={actorId} /> : <p class="muted">Pick an actor on the left, or “Inspect” on a volume’s row.</p>}
    </section>
  );
}

function ActorList({ rpc, selected, onPick }: { rpc: DashboardRpc; selected: string | null; onPick: (actorId: string) => void }) {
  const [actors, setActors] = useState<ActorEntry[]>([]);
  const [total, setTotal] = useState(0);
  const [filter, setFilter] = useState('');
  const [error, setError] = useState<string | null>(null);
  const load = () =>
    rpc.call<{ actors: ActorEntry[]; lvols_total: number }>('inspect_get_actors', { limit: 1000 }).then(
      (result) => {
        setActors(result.actors);
        setTotal(result.lvols_total);
        setError(null);
      },
      (caught: unknown) => setError(errorText(caught)),
    );
  useEffect(() => {
    void load();
    // The states beside each name stay current without a click on Refresh.
    const timer = setInterval(() => void load(), actorListRefreshMs);
    return () => clearInterval(timer);
  }, [rpc]);
  const needle = filter.trim().toLowerCase();
  const shown = needle ? actors.filter((actor) => `${actor.label} ${actor.actor_id}`.toLowerCase().includes(needle)) : actors;
  return (
    <aside class="actors" aria-label="actors">
      <div class="toolbar">
        <input type="search" placeholder="Filter actors" aria-label="Filter actors" value={filter} onInput={(event) => setFilter((event.target as HTMLInputElement).value)} />
        <button type="button" class="secondary" onClick={() => void load()}>
          Refresh
        </button>
      </div>
      {error ? <p class="error">{error}</p> : null}
      <ul>
        {shown.slice(0, 1000).map((actor) => (
          <li key={actor.actor_id}>
            <button type="button" class={actor.actor_id === selected ? 'actor current' : 'actor'} aria-current={actor.actor_id === selected ? 'true' : undefined} onClick={() => onPick(actor.actor_id)}>
              <span class="kind">{actor.kind}</span> {actor.label}
              <span class="muted state-line">{formatStateValue(actor.value)}</span>
            </button>
          </li>
        ))}
      </ul>
      {total > 1000 ? <p class="muted">Showing 1,000 of {total} lvols; filter to find others, or use “Inspect” in Volumes.</p> : null}
    </aside>
  );
}

function ActorInspector({ rpc, actorId }: { rpc: DashboardRpc; actorId: string }) {
  const [inspected, setInspected] = useState<Inspected | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [value, setValue] = useState<unknown>(null);
  const [taken, setTaken] = useState<ReadonlySet<string>>(new Set());
  const [paused, setPaused] = useState(false);
  const [filter, setFilter] = useState('');
  const [picked, setPicked] = useState<LogRow | null>(null);
  const [, setTick] = useState(0);
  const logRef = useRef<EventLog>(emptyLog());
  const frozenRef = useRef<LogRow[] | null>(null);
  const chart = useMemo<Chart | null>(() => (inspected ? layoutMachine(inspected.machine) : null), [inspected]);

  useEffect(() => {
    let disposed = false;
    let frame = 0;
    let takenTimer: ReturnType<typeof setTimeout> | undefined;
    logRef.current = emptyLog();
    let machine: MachineNode | null = null;
    let rootSession = '';
    let active = new Set<string>();
    let chartNow: Chart | null = null;
    let lastEvent: string | null = null;
    // Subscribe first, then read the machine and snapshot: no event falls between the two.
    const remove = rpc.on('inspect_events', (params) => {
      const batch = params as InspectionBatch;
      appendBatch(logRef.current, batch.events, batch.dropped);
      if (machine && chartNow) {
        for (const record of batch.events) {
          if (record.session_id !== rootSession) continue;
          if (record.type === 'event') lastEvent = eventTypeOf(record.event) ?? null;
          if (record.type === 'snapshot' && record.snapshot) {
            const before = active;
            active = activeStateIds(machine, record.snapshot.value);
            setValue(record.snapshot.value);
            if (lastEvent) {
              const edges = takenEdges(chartNow, before, lastEvent);
              if (edges.size > 0) {
                setTaken(edges);
                clearTimeout(takenTimer);
                takenTimer = setTimeout(() => setTaken(new Set()), takenHighlightMs);
              }
            }
          }
        }
      }
      // Redraw at most once per frame however fast events come.
      if (!frame) frame = requestAnimationFrame(() => {
        frame = 0;
        if (!disposed) setTick((tick) => tick + 1);
      });
    });
    rpc
      .call('inspect_subscribe', { actor_id: actorId })
      .then(() => rpc.call<Inspected>('inspect_get_machine', { actor_id: actorId }))
      .then(
        (result) => {
          if (disposed) return;
          machine = result.machine;
          rootSession = result.session_id;
          // The root actor's own id is its lvol UUID: in the log it reads better as its machine.
          pinName(logRef.current, rootSession, result.machine.id);
          chartNow = layoutMachine(result.machine);
          active = activeStateIds(result.machine, result.snapshot.value);
          setInspected(result);
          setValue(result.snapshot.value);
          setError(null);
        },
        (caught: unknown) => !disposed && setError(errorText(caught)),
      );
    return () => {
      disposed = true;
      cancelAnimationFrame(frame);
      clearTimeout(takenTimer);
      remove();
      void rpc.call('inspect_unsubscribe').catch(() => undefined);
    };
  }, [rpc, actorId]);

  if (error) return <div class="error" role="alert">Cannot inspect {actorId}: {error}</div>;
  if (!inspected || !chart) return <p class="muted">Loading {actorId}…</p>;
  const active = activeStateIds(inspected.machine, value);
  const log = logRef.current;
  const rows = frozenRef.current ?? log.rows;
  const filtered = filterRows(rows, filter);
  const newest = filtered.slice(-logRowsShown).reverse();
  const pendingWhilePaused = frozenRef.current ? log.rows.length - frozenRef.current.length : 0;
  const eventTypes = [...new Set(log.rows.map((row) => row.eventType))].sort();
  return (
    <div class="actor-inspector">
      <h2>
        <span class="kind">{inspected.kind}</span> {inspected.label} <span class="muted">{inspected.actor_id}</span>
      </h2>
      <p class="current-state">
        state: <code data-testid="state-value">{formatStateValue(value)}</code>
      </p>
      <StatechartSvg chart={chart} active={active} taken={taken} />
      <div class="log-panel">
        <div class="toolbar">
          <button
            type="button"
            onClick={() => {
              frozenRef.current = paused ? null : [...log.rows];
              setPaused(!paused);
            }}
          >
            {paused ? 'Resume log' : 'Pause log'}
          </button>
          <input list="event-types" type="search" placeholder="Filter by event type" aria-label="Filter by event type" value={filter} onInput={(event) => setFilter((event.target as HTMLInputElement).value)} />
          <datalist id="event-types">
            {eventTypes.map((type) => (
              <option value={type} />
            ))}
          </datalist>
          <span class="muted" data-testid="log-counts">
            {log.rows.length + log.trimmed} events{paused ? ` · paused, ${pendingWhilePaused} new` : ''}
          </span>
          <span class={log.droppedByNode > 0 ? 'dropped warn' : 'dropped muted'} data-testid="dropped">
            dropped by the node: {log.droppedByNode}
          </span>
        </div>
        <div class="log-body">
          <table class="log" aria-label="event log">
            <thead>
              <tr>
                <th scope="col">time</th>
                <th scope="col">event</th>
                <th scope="col">source → target</th>
                <th scope="col">state after</th>
              </tr>
            </thead>
            <tbody>
              {newest.map((row) => (
                <tr key={row.seq} class={picked?.seq === row.seq ? 'picked' : undefined} onClick={() => setPicked(row)} tabIndex={0} onKeyDown={(event) => event.key === 'Enter' && setPicked(row)}>
                  <td class="time">{new Date(row.atMs).toISOString().slice(11, 23)}</td>
                  <td class="event-type">{row.eventType}</td>
                  <td>
                    {row.source} → {row.target}
                  </td>
                  <td>{formatStateValue(row.value)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div class="snapshot" aria-label="snapshot after the picked event">
            {picked ? (
              <>
                <h3>
                  After <code>{picked.eventType}</code> (#{picked.seq})
                </h3>
                <h4>event</h4>
                <pre>{showJson(picked.event)}</pre>
                <h4>snapshot</h4>
                <pre data-testid="snapshot-json">{picked.snapshot ? showJson(picked.snapshot) : 'no snapshot recorded for this event'}</pre>
              </>
            ) : (
              <p class="muted">Click an event to see the snapshot after it.</p>
            )}
          </div>
        </div>
      </div>
    </div>
  );
}

function StatechartSvg({ chart, active, taken }: { chart: Chart; active: ReadonlySet<string>; taken: ReadonlySet<string> }) {
  // Fitted to the panel's width by default (the whole machine at a glance); actual size scrolls.
  const [actualSize, setActualSize] = useState(false);
  const width = chart.width + 160;
  const height = chart.height + 40;
  return (
    <div class="chart-scroll">
      <button type="button" class="secondary chart-zoom" onClick={() => setActualSize(!actualSize)}>
        {actualSize ? 'Fit to width' : 'Actual size'}
      </button>
      <svg
        class="statechart"
        width={actualSize ? width : '100%'}
        height={actualSize ? height : undefined}
        style={actualSize ? undefined : { maxWidth: `${width}px` }}
        viewBox={`-20 -30 ${width} ${height}`}
        preserveAspectRatio="xMinYMin meet"
        role="img"
        aria-label="statechart"
      >
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" />
          </marker>
        </defs>
        {chart.boxes.map((box) => (
          <g key={box.id} class={`state ${box.type}${box.region ? ' region' : ''}${active.has(box.id) ? ' active' : ''}`} data-state-id={box.id} data-active={active.has(box.id) ? 'true' : 'false'}>
            <rect x={box.x} y={box.y} width={box.width} height={box.height} rx={box.region ? 4 : 10} />
            <text x={box.x + 10} y={box.y + 18} class="state-label">
              {box.label}
              {box.type === 'parallel' ? ' (parallel)' : ''}
            </text>
            {box.notes.map((note, index) => (
              <text x={box.x + 10} y={box.y + 31 + index * 13} class="state-note">
                {note}
              </text>
            ))}
            {box.initial ? <circle cx={box.x - 9} cy={box.y + 17} r={4} class="initial-dot" /> : null}
          </g>
        ))}
        {chart.edges.map((edge) => (
          <g key={edge.key} class={taken.has(edge.key) ? 'edge taken' : 'edge'} data-events={edge.events.join(' ')}>
            <path d={edge.path} marker-end="url(#arrow)" />
            <text x={edge.labelX} y={edge.labelY} text-anchor="middle" class="edge-label">
              {edge.label}
            </text>
          </g>
        ))}
      </svg>
    </div>
  );
}
