// The inspector's event log, built from `inspect_events` batches (pure: unit-tested).
//
// The stream carries, per actor, "event delivered" records (source → target, the event) and
// "snapshot" records (the state after it). A log row is one delivered event, completed by the
// snapshot its target took next. Session ids become actor names as `actor` records name them.
import type { InspectionRecord } from './types.ts';

export interface LogRow {
  readonly seq: number;
  readonly atMs: number;
  readonly eventType: string;
  readonly event: unknown;
  readonly source: string;
  readonly target: string;
  readonly targetSession: string;
  /** The state value after the event, and the whole snapshot; null until it arrives. */
  value: unknown;
  snapshot: { value: unknown; status: unknown; context: unknown } | null;
}

export interface EventLog {
  readonly rows: LogRow[];
  /** Session id -> actor name (`lvol`, `clusterStep`, `scheduler`, …). */
  readonly names: Map<string, string>;
  /** Rows dropped by the node (it counted them) plus rows cut here to stay within `rowsMax`. */
  droppedByNode: number;
  trimmed: number;
  /** Sessions whose names are kept however many others come and go (the inspected root actor). */
  readonly pinned: Set<string>;
}

export const rowsMaxDefault = 2000;
/**
 * Every cluster step of a walk is an invoked actor with a session of its own: names are kept for
 * the most recent ones only, so a long walk cannot grow the page's memory without bound.
 */
export const namesMax = 4096;

export function emptyLog(): EventLog {
  return { rows: [], names: new Map(), droppedByNode: 0, trimmed: 0, pinned: new Set() };
}

/** Names a session for good (rows name it so even after thousands of other sessions). */
export function pinName(log: EventLog, session: string, name: string): void {
  log.names.set(session, name);
  log.pinned.add(session);
}

/** Appends one batch in place; returns the log for chaining. Keeps at most `rowsMax` rows. */
export function appendBatch(log: EventLog, records: readonly InspectionRecord[], dropped: number, rowsMax = rowsMaxDefault): EventLog {
  log.droppedByNode += dropped;
  // Rows still waiting for their target's snapshot, by target session (the oldest first).
  const waiting = new Map<string, LogRow[]>();
  for (const row of log.rows.slice(-64)) {
    if (row.snapshot === null) {
      const list = waiting.get(row.targetSession);
      if (list) list.push(row);
      else waiting.set(row.targetSession, [row]);
    }
  }
  for (const record of records) {
    if (record.type === 'actor') {
      log.names.set(record.session_id, record.actor);
      continue;
    }
    if (!log.names.has(record.session_id)) log.names.set(record.session_id, record.actor);
    if (record.type === 'event') {
      const eventType = eventTypeOf(record.event) ?? '(unknown)';
      const targetSession = record.target ?? record.session_id;
      const row: LogRow = {
        seq: record.seq,
        atMs: record.at_ms,
        eventType,
        event: record.event,
        source: record.source === undefined ? '(outside)' : (log.names.get(record.source) ?? record.source),
        target: log.names.get(targetSession) ?? record.actor,
        targetSession,
        value: null,
        snapshot: null,
      };
      log.rows.push(row);
      const list = waiting.get(targetSession);
      if (list) list.push(row);
      else waiting.set(targetSession, [row]);
      continue;
    }
    if (record.type === 'snapshot' && record.snapshot) {
      const list = waiting.get(record.session_id);
      const row = list?.shift();
      if (row) {
        row.value = record.snapshot.value;
        row.snapshot = record.snapshot;
      }
    }
  }
  if (log.names.size > namesMax) {
    // The oldest first (a Map iterates in insertion order), down to half, pinned ones kept.
    for (const session of log.names.keys()) {
      if (log.names.size <= namesMax / 2) break;
      if (!log.pinned.has(session)) log.names.delete(session);
    }
  }
  if (log.rows.length > rowsMax) {
    const cut = log.rows.length - rowsMax;
    log.rows.splice(0, cut);
    log.trimmed += cut;
  }
  return log;
}

/** The `type` of an inspected event (a record's `event` is any JSON-able value). */
export function eventTypeOf(event: unknown): string | undefined {
  const type = (event as { type?: unknown } | null | undefined)?.type;
  return typeof type === 'string' ? type : undefined;
}

/** Rows whose event type contains `filter` (case-insensitive); all when it is empty. */
export function filterRows(rows: readonly LogRow[], filter: string): LogRow[] {
  const needle = filter.trim().toLowerCase();
  if (needle === '') return [...rows];
  return rows.filter((row) => row.eventType.toLowerCase().includes(needle));
}

/** A state value as one line: `{checksum: computing, io: reading}` -> "checksum.computing · io.reading". */
export function formatStateValue(value: unknown, prefix = ''): string {
  if (typeof value === 'string') return prefix ? `${prefix}.${value}` : value;
  if (value && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>)
      .map(([key, sub]) => formatStateValue(sub, prefix ? `${prefix}.${key}` : key))
      .join(' · ');
  }
  return value === null || value === undefined ? '' : String(value);
}
