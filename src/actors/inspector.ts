// Fans XState inspection events of every lvol actor out to subscribers, with a bounded queue each.
//
// The node's few long-lived actors (scheduler, copies, NBD exports) are created with
// `inspect: hub.observerFor(id)`. Lvols, 100,000 of them, are `track`ed instead: XState builds an
// inspection event for every transition of an actor that has any observer, so an lvol's actor is
// observed only while somebody watches it (a subscription to it or to all, or a raw observer).
// Events are turned into
// plain JSON-able records only when someone subscribes, queued per subscriber up to a limit
// (beyond it they are dropped and counted, never buffered without bound) and flushed in batches
// on the next macrotask.
import type { AnyActorRef, InspectionEvent, Observer, Subscription as XstateSubscription } from 'xstate';
import { inspectQueueLengthMax } from '../constants.ts';

export interface InspectionRecord {
  /** Monotonic sequence number across the hub: gaps mean drops. */
  seq: number;
  type: 'actor' | 'event' | 'snapshot';
  /** The lvol (root actor) this event belongs to. */
  actor_id: string;
  /** The XState actor inside that lvol's system: the root (`lvol`) or an invoked step. */
  actor: string;
  session_id: string;
  /** Wall-clock time the event was observed (ms since the epoch). */
  at_ms: number;
  event?: unknown;
  source?: string | undefined;
  target?: string | undefined;
  snapshot?: { value: unknown; status: unknown; context: unknown };
}

/** Delivers one batch; returns false when the receiver is falling behind (the batch was dropped). */
export type InspectionSink = (batch: { events: InspectionRecord[]; dropped: number }) => boolean;

interface Subscription {
  readonly actorId: string | undefined;
  readonly sink: InspectionSink;
  queue: InspectionRecord[];
  dropped: number;
  scheduled: boolean;
}

const reconcileSliceMs = 2;

type InspectOption = Observer<InspectionEvent> | ((event: InspectionEvent) => void);

/** A tracked root actor created while nobody watched it: attached on demand, detached after. */
interface Tracked {
  readonly actor: AnyActorRef;
  attached: XstateSubscription | undefined;
}

export class InspectionHub {
  private readonly subscriptions = new Set<Subscription>();
  private readonly observers: Array<(event: InspectionEvent) => void> = [];
  private seq = 0;
  /** Tracked actors that are not observed from birth, by id. */
  private readonly tracked = new Map<string, Tracked>();
  /** Subscriptions to every actor, and to one actor by id. */
  private watchingAll = 0;
  private readonly watchingOne = new Map<string, number>();

  constructor(private readonly queueLengthMax = inspectQueueLengthMax) {}

  /** The `inspect` option for the root actor of lvol `lvolId`. */
  observerFor(lvolId: string): (event: InspectionEvent) => void {
    return (event) => {
      for (const observer of this.observers) observer(event);
      if (this.subscriptions.size === 0) return;
      const record = toRecord(++this.seq, lvolId, event);
      if (!record) return;
      for (const subscription of this.subscriptions) this.enqueue(subscription, record);
    };
  }

  /**
   * Creates root actor `actorId` through `create` and keeps it inspectable. Watched now, it is
   * created observed, as with `observerFor` (its first records included), and stays so: XState
   * cannot take an `inspect` option back (the hub drops its events unwatched). Otherwise it is
   * created with no observer and attached by the first subscription that wants it, then detached
   * when the last one goes. Returns the actor and the call that forgets it (when it stops).
   */
  track<T extends AnyActorRef>(actorId: string, create: (inspect: InspectOption | undefined) => T): { actor: T; untrack: () => void } {
    if (this.wants(actorId)) return { actor: create(this.observerFor(actorId)), untrack: () => {} };
    const actor = create(undefined);
    const entry: Tracked = { actor, attached: undefined };
    this.tracked.set(actorId, entry);
    return {
      actor,
      untrack: () => {
        this.detach(entry);
        if (this.tracked.get(actorId) === entry) this.tracked.delete(actorId);
      },
    };
  }

  /** Tracked actors observed now (for tests). */
  get attachedCount(): number {
    let count = 0;
    for (const entry of this.tracked.values()) if (entry.attached) count++;
    return count;
  }

  /** Passes every raw inspection event to `observer` too (e.g. @statelyai/inspect). */
  addObserver(observer: (event: InspectionEvent) => void): void {
    this.observers.push(observer);
    this.reconcileAll();
  }

  /** Streams events of every actor, or only of lvol `actorId`. Returns the unsubscribe function. */
  subscribe(actorId: string | undefined, sink: InspectionSink): () => void {
    const subscription: Subscription = { actorId, sink, queue: [], dropped: 0, scheduled: false };
    this.subscriptions.add(subscription);
    if (actorId === undefined) {
      this.watchingAll++;
      this.reconcileAll();
    } else {
      this.watchingOne.set(actorId, (this.watchingOne.get(actorId) ?? 0) + 1);
      const entry = this.tracked.get(actorId);
      if (entry) this.attach(actorId, entry);
    }
    return () => {
      if (!this.subscriptions.delete(subscription)) return;
      if (actorId === undefined) {
        if (--this.watchingAll === 0) this.reconcileAll();
      } else {
        const count = (this.watchingOne.get(actorId) ?? 1) - 1;
        if (count > 0) this.watchingOne.set(actorId, count);
        else this.watchingOne.delete(actorId);
        const entry = this.tracked.get(actorId);
        if (entry && !this.wants(actorId)) this.detach(entry);
      }
    };
  }

  get subscriberCount(): number {
    return this.subscriptions.size;
  }

  private wants(actorId: string): boolean {
    return this.observers.length > 0 || this.watchingAll > 0 || this.watchingOne.has(actorId);
  }

  private reconciling = false;
  private reconcileAgain = false;

  /**
   * Attaches every tracked actor that is wanted and detaches every other, in slices of a couple
   * of milliseconds: at 100,000 lvols one pass is ~150 ms. The first slice runs now; an actor
   * reached later is observed from then on. A change meanwhile starts another pass after this one.
   */
  private reconcileAll(): void {
    if (this.reconciling) {
      this.reconcileAgain = true;
      return;
    }
    this.reconciling = true;
    const entries = this.tracked.entries(); // live: entries added meanwhile are reached too
    const slice = (): void => {
      const endMs = performance.now() + reconcileSliceMs;
      for (let count = 1; ; count++) {
        const next = entries.next();
        if (next.done) {
          this.reconciling = false;
          if (this.reconcileAgain) {
            this.reconcileAgain = false;
            this.reconcileAll();
          }
          return;
        }
        const [actorId, entry] = next.value;
        if (this.wants(actorId)) this.attach(actorId, entry);
        else this.detach(entry);
        if (count % 64 === 0 && performance.now() >= endMs) break;
      }
      setImmediate(slice);
    };
    slice();
  }

  private attach(actorId: string, entry: Tracked): void {
    entry.attached ??= entry.actor.system.inspect(this.observerFor(actorId));
  }

  private detach(entry: Tracked): void {
    entry.attached?.unsubscribe();
    entry.attached = undefined;
  }

  private enqueue(subscription: Subscription, record: InspectionRecord): void {
    if (subscription.actorId !== undefined && subscription.actorId !== record.actor_id) return;
    if (subscription.queue.length >= this.queueLengthMax) {
      subscription.dropped++;
      return;
    }
    subscription.queue.push(record);
    if (!subscription.scheduled) {
      subscription.scheduled = true;
      setImmediate(() => this.flush(subscription));
    }
  }

  private flush(subscription: Subscription): void {
    subscription.scheduled = false;
    if (!this.subscriptions.has(subscription) || subscription.queue.length === 0) return;
    const events = subscription.queue;
    subscription.queue = [];
    if (subscription.sink({ events, dropped: subscription.dropped })) subscription.dropped = 0;
    else subscription.dropped += events.length;
  }
}

function toRecord(seq: number, lvolId: string, event: InspectionEvent): InspectionRecord | undefined {
  const actorRef = event.actorRef as { id?: string; sessionId: string };
  const base = { seq, actor_id: lvolId, actor: actorRef.id ?? 'lvol', session_id: actorRef.sessionId, at_ms: Date.now() };
  switch (event.type) {
    case '@xstate.actor':
      return { ...base, type: 'actor' };
    case '@xstate.event':
      return {
        ...base,
        type: 'event',
        event: toJsonSafe(event.event),
        source: event.sourceRef?.sessionId,
        target: event.actorRef.sessionId,
      };
    case '@xstate.snapshot': {
      const snapshot = event.snapshot as { value?: unknown; status?: unknown; context?: unknown };
      return {
        ...base,
        type: 'snapshot',
        event: toJsonSafe(event.event),
        snapshot: { value: toJsonSafe(snapshot.value), status: snapshot.status, context: toJsonSafe(snapshot.context) },
      };
    }
    default:
      return undefined;
  }
}

const depthMax = 4;
const entriesMax = 32;

/**
 * A JSON-able summary: bigints stay bigints (the transport writes them exactly), maps and typed
 * arrays become their size, long arrays are cut, actor references become their id.
 */
export function toJsonSafe(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== 'object') {
    return typeof value === 'function' || typeof value === 'symbol' ? undefined : value;
  }
  if (depth >= depthMax) return '…';
  if (value instanceof Map) return { size: value.size };
  if (ArrayBuffer.isView(value)) return { length: (value as unknown as { length: number }).length };
  if (Array.isArray(value)) {
    const head = value.slice(0, entriesMax).map((item) => toJsonSafe(item, depth + 1));
    return value.length > entriesMax ? [...head, `… ${value.length - entriesMax} more`] : head;
  }
  if ('sessionId' in value && typeof (value as { sessionId: unknown }).sessionId === 'string') {
    return { actor: (value as { sessionId: string }).sessionId };
  }
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value).slice(0, entriesMax)) out[key] = toJsonSafe(item, depth + 1);
  return out;
}
