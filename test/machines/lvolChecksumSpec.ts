// What a client observes of one snapshot's checksum walk (SPEC §6.3–6.7), written down apart from
// src/machines/lvolMachine.ts as the oracle of lvolMachine.model.test.ts: a reducer over what was
// asked and what the device and scheduler did, and the observation each state must show.
//
// It deliberately knows nothing of the machine's config, its regions, guards or context: only
// requests (register, stop, preempt, invalidate), what the environment does (the scheduler admits,
// the device finishes or fails the read in flight, the lvstore makes the result durable) and what
// comes back (answers, status, the stored value, the saved position).

export type Phase = 'idle' | 'queued' | 'computing' | 'stopping' | 'storing' | 'aborted' | 'done' | 'failed';
export type Mode = 'whole' | 'range';

/** The priority operation the spec preempts with (SPEC §6.5 names it in the reason). */
export const preemptingOperation = 'bdev_lvol_delete';
const stoppedReason = 'stopped';
const preemptedReason = `preempted by ${preemptingOperation}`;
const failedReason = 'failed';

/** The current or last walk, as the status shows it. */
export interface Walk {
  readonly mode: Mode;
  /** Owned clusters folded into the running CRC, in cluster order; the walk goes on at the next. */
  readonly clustersDone: number;
  /** Why the walk ended early: a stop, a preemption naming its operation, or a device failure. */
  readonly reason: string | null;
}

/** An answer to a request, in the errno names of SPEC §4. */
export type Answer =
  | { ok: boolean }
  | { errno: 'EEXIST' | 'ESRCH' | 'EIO' }
  | { errno: 'EINTR'; data: { reason: string; clusters_done: number; clusters_total: number } };

export interface Answers {
  readonly register: readonly Answer[];
  readonly stop: readonly Answer[];
  readonly preempt: readonly Answer[];
}

export interface SpecState {
  readonly phase: Phase;
  /** Null when the lvol knows of no walk (never registered, or its knowledge was invalidated). */
  readonly walk: Walk | null;
  /** The lvstore holds a completed value (always the CRC of the snapshot's bytes); `range`: per cluster too. */
  readonly stored: { readonly range: boolean } | null;
  /** Requests still waiting for their answer: a registration, stops, and preemptions (true: it stopped the walk). */
  readonly waiting: { readonly register: boolean; readonly stops: number; readonly preempts: readonly boolean[] };
  /** What requests answered in the step that led here. Decides nothing later, so not in the key. */
  readonly answered: Answers;
}

export type SpecEvent =
  | { type: 'register'; mode: Mode; resume: boolean }
  | { type: 'stop' }
  | { type: 'preempt' }
  /** An operation changed the snapshot's clusters (callers make way first, so only at rest). */
  | { type: 'invalidate' }
  /** The node-wide scheduler gives the queued walk a slot. */
  | { type: 'admit' }
  /** The scheduler admits the walk and a stop arrives before its first read began. */
  | { type: 'admitRacingStop' }
  /** The device finishes the cluster read in flight. */
  | { type: 'readDone' }
  /**
   * The device finishes the read in flight and a stop arrives in the very turn the walk has taken
   * that cluster in, before the walk's next step could look for another one. After the last
   * cluster that is SPEC §6.4's "stop arriving after the last cluster".
   */
  | { type: 'stopAfterRead' }
  /** The device fails the cluster read in flight (EIO). */
  | { type: 'readFails' }
  /** The lvstore made the finished value durable. */
  | { type: 'storeDone' };

const noAnswers: Answers = { register: [], stop: [], preempt: [] };
const nothingWaiting: SpecState['waiting'] = { register: false, stops: 0, preempts: [] };
const resting: ReadonlySet<Phase> = new Set(['idle', 'aborted', 'done', 'failed']);

export const initialSpecState: SpecState = { phase: 'idle', walk: null, stored: null, waiting: nothingWaiting, answered: noAnswers };

/** The identity of a spec state for the traversal: everything but this step's answers. */
export function specKey(state: SpecState): string {
  return JSON.stringify([state.phase, state.walk, state.stored, state.waiting]);
}

/**
 * The requests and environment events worth trying in `state`. Stops and preemptions that only
 * join a stop already under way are bounded (two waiting at most) to keep the model finite.
 */
export function specEvents(state: SpecState): SpecEvent[] {
  const { phase, waiting } = state;
  const events: SpecEvent[] = [];
  if (resting.has(phase)) {
    events.push({ type: 'register', mode: 'whole', resume: false }, { type: 'register', mode: 'whole', resume: true });
    events.push({ type: 'register', mode: 'range', resume: true }, { type: 'invalidate' });
  } else {
    events.push({ type: 'register', mode: 'whole', resume: false });
  }
  const joinsAStop = phase === 'stopping' || phase === 'storing';
  if (!joinsAStop || waiting.stops + waiting.preempts.length < 2) events.push({ type: 'preempt' });
  if (phase !== 'stopping' || waiting.stops + waiting.preempts.length < 2) events.push({ type: 'stop' });
  if (phase === 'queued') events.push({ type: 'admit' }, { type: 'admitRacingStop' });
  if (phase === 'computing' || phase === 'stopping') events.push({ type: 'readDone' }, { type: 'readFails' });
  if (phase === 'computing') events.push({ type: 'stopAfterRead' });
  if (phase === 'storing') events.push({ type: 'storeDone' });
  return events;
}

/** The spec: what `event` does in `state`, for a snapshot owning `clustersTotal` clusters. */
export function specTransition(previous: SpecState, event: SpecEvent, clustersTotal: number): SpecState {
  const state: SpecState = { ...previous, answered: noAnswers };
  const { phase, walk } = state;
  switch (event.type) {
    case 'register':
      // SPEC §6.3: one computation at a time; -17 while one is queued, running, stopping or storing.
      if (!resting.has(phase)) return answer(state, 'register', { errno: 'EEXIST' });
      return {
        ...state,
        phase: 'queued',
        // SPEC §6.6: resume continues an aborted computation of the same kind where it stopped;
        // anything else (a finished, failed or invalidated walk, or another mode) starts over.
        walk: {
          mode: event.mode,
          clustersDone: event.resume && phase === 'aborted' && walk!.mode === event.mode ? walk!.clustersDone : 0,
          reason: null,
        },
        waiting: { ...state.waiting, register: true },
      };
    case 'admit':
      // The walk begins by reading its next owned cluster; with none left it goes straight to storing.
      return { ...state, phase: walk!.clustersDone < clustersTotal ? 'computing' : 'storing' };
    case 'admitRacingStop':
      // Nothing was in flight yet: the walk ends where it stood.
      return settle({ ...state, phase: 'aborted', walk: { ...walk!, reason: stoppedReason } }, clustersTotal, { stops: 1 });
    case 'stop':
      return stop(state, clustersTotal);
    case 'preempt':
      return preempt(state, clustersTotal);
    case 'readDone': {
      // SPEC §6.4: the in-flight cluster always finishes and counts, also when a stop is waiting.
      const finished: Walk = { ...walk!, clustersDone: walk!.clustersDone + 1 };
      if (phase === 'stopping') return settle({ ...state, phase: 'aborted', walk: finished }, clustersTotal);
      return { ...state, walk: finished, phase: finished.clustersDone < clustersTotal ? 'computing' : 'storing' };
    }
    case 'stopAfterRead':
      // The cluster counts; the stop then meets a walk that has more to read (it stops after the
      // next cluster) or one that has read everything: SPEC §6.4, the registration completes and
      // the stop answers -3. No moment exists in between where the stop could abort a finished walk.
      return stop(specTransition(state, { type: 'readDone' }, clustersTotal), clustersTotal);
    case 'readFails':
      // SPEC §6.2: a device error ends the walk as `failed`, whatever else was waiting.
      return settle({ ...state, phase: 'failed', walk: { ...walk!, reason: failedReason } }, clustersTotal);
    case 'storeDone': {
      // SPEC §6.1: a range registration stores per-cluster values too; a whole one refreshes them
      // where they already exist (as SPDK) and never drops them.
      const stored = { range: walk!.mode === 'range' || (state.stored?.range ?? false) };
      return settle({ ...state, phase: 'done', walk: { ...walk!, reason: null }, stored }, clustersTotal);
    }
    case 'invalidate':
      return { ...state, phase: 'idle', walk: null };
  }
}

/** SPEC §6.4: stop waits for the in-flight cluster; with nothing running it answers -3. */
function stop(state: SpecState, clustersTotal: number): SpecState {
  const { phase, walk } = state;
  if (phase === 'queued') return settle({ ...state, phase: 'aborted', walk: { ...walk!, reason: stoppedReason } }, clustersTotal, { stops: 1 });
  if (phase === 'computing') {
    return { ...state, phase: 'stopping', walk: { ...walk!, reason: stoppedReason }, waiting: { ...state.waiting, stops: state.waiting.stops + 1 } };
  }
  // A second stop while stopping answers with the first, once the walk has stopped.
  if (phase === 'stopping') return { ...state, waiting: { ...state.waiting, stops: state.waiting.stops + 1 } };
  // Stop after the last cluster (storing): the registration completes, stop answers -3.
  return answer(state, 'stop', { errno: 'ESRCH' });
}

/**
 * SPEC §6.5: a priority operation stops a running walk after its in-flight cluster and then
 * proceeds; it answers whether it was the one that aborted the walk. A walk being stored is let
 * finish; with nothing running the operation goes ahead at once.
 */
function preempt(state: SpecState, clustersTotal: number): SpecState {
  const { phase, walk } = state;
  if (phase === 'queued') {
    return settle({ ...state, phase: 'aborted', walk: { ...walk!, reason: preemptedReason } }, clustersTotal, { preempts: [true] });
  }
  if (phase === 'computing') {
    return { ...state, phase: 'stopping', walk: { ...walk!, reason: preemptedReason }, waiting: { ...state.waiting, preempts: [...state.waiting.preempts, true] } };
  }
  if (phase === 'stopping' || phase === 'storing') return { ...state, waiting: { ...state.waiting, preempts: [...state.waiting.preempts, false] } };
  return answer(state, 'preempt', { ok: false });
}

/**
 * The walk came to rest: everyone waiting gets an answer (SPEC §6.3–6.5). The registration
 * answers true when done, -32603 EINTR with the position when aborted, EIO when failed; stops
 * answer true; a preemption true when it was the one that aborted the walk.
 */
function settle(state: SpecState, clustersTotal: number, alsoNow: { stops?: number; preempts?: boolean[] } = {}): SpecState {
  const { phase, walk, waiting } = state;
  const register: Answer[] = [];
  if (waiting.register) {
    if (phase === 'done') register.push({ ok: true });
    else if (phase === 'failed') register.push({ errno: 'EIO' });
    else register.push({ errno: 'EINTR', data: { reason: walk!.reason!, clusters_done: walk!.clustersDone, clusters_total: clustersTotal } });
  }
  const stops = waiting.stops + (alsoNow.stops ?? 0);
  const preempts = [...waiting.preempts, ...(alsoNow.preempts ?? [])];
  return {
    ...state,
    waiting: nothingWaiting,
    answered: {
      register,
      stop: Array.from({ length: stops }, () => ({ ok: true })),
      preempt: preempts.map((stoppedIt) => ({ ok: stoppedIt && phase === 'aborted' })),
    },
  };
}

function answer(state: SpecState, kind: keyof Answers, value: Answer): SpecState {
  return { ...state, answered: { ...noAnswers, [kind]: [value] } };
}

/** The snapshot under test: which of its clusters it owns, and the CRCs of its known bytes. */
export interface Volume {
  readonly clusterCount: number;
  readonly clusterBytes: number;
  /** Owned cluster indices, ascending: the walk's order. */
  readonly ownedClusters: readonly number[];
  /** CRC of the first `count` owned clusters, chained (0 for none). */
  crcOfFirst(count: number): bigint;
  /** CRC of owned cluster `clusterIndex` alone. */
  clusterCrc(clusterIndex: number): bigint;
}

/** Everything the test reads from the system after a step. */
export interface Observation {
  /** bdev_lvol_get_checksum_status, the fields SPEC §6.7 names (error: whether one is reported). */
  readonly status: {
    state: Phase;
    mode: Mode | null;
    clusters_done: number;
    clusters_total: number;
    bytes_done: number;
    reason: string | null;
    error: boolean;
    resumable: boolean;
  };
  /** The last checksum notification (SPEC §8), or the state the lvol started in: never stale. */
  readonly notified: { state: Phase; clusters_done: number };
  /** Cluster reads under way at the device, as lvol cluster indices. */
  readonly readsAtDevice: readonly number[];
  /** A finished value waits to be made durable. */
  readonly resultWaiting: boolean;
  /**
   * What the lvstore holds: the whole checksum and per-cluster values (0 for clusters not owned).
   * Not checked while a result is on its way to the log: when the lvstore's record shows a change
   * is SPEC §9's business (the store's), not the walk's.
   */
  readonly stored: { checksum: bigint | null; rangeChecksums: readonly bigint[] | null } | 'unchecked';
  /** While aborted: the saved position a resume continues from (SPEC §6.6); otherwise not checked. */
  readonly savedPosition: { clustersDone: number; runningCrc: bigint; resumesAt: number | null; reason: string | null } | null | 'unchecked';
  readonly answered: Answers;
  readonly waiting: { register: number; stops: number; preempts: number };
}

/** What the spec says the system must show in `state`. */
export function expectedObservation(state: SpecState, volume: Volume): Observation {
  const { phase, walk } = state;
  const clustersTotal = volume.ownedClusters.length;
  const clustersDone = walk?.clustersDone ?? 0;
  const reading = phase === 'computing' || phase === 'stopping';
  return {
    status: {
      state: phase,
      mode: walk?.mode ?? null,
      clusters_done: clustersDone,
      clusters_total: walk ? clustersTotal : 0,
      bytes_done: clustersDone * volume.clusterBytes,
      reason: walk?.reason ?? null,
      error: phase === 'failed',
      resumable: phase === 'aborted',
    },
    notified: { state: phase, clusters_done: clustersDone },
    // One cluster in flight while the walk runs or stops: the next owned one after those done.
    readsAtDevice: reading ? [volume.ownedClusters[clustersDone]!] : [],
    resultWaiting: phase === 'storing',
    stored:
      phase === 'storing'
        ? 'unchecked'
        : {
            checksum: state.stored ? volume.crcOfFirst(clustersTotal) : null,
            rangeChecksums: state.stored?.range
              ? Array.from({ length: volume.clusterCount }, (_, index) => (volume.ownedClusters.includes(index) ? volume.clusterCrc(index) : 0n))
              : null,
          },
    savedPosition:
      phase === 'aborted'
        ? { clustersDone, runningCrc: volume.crcOfFirst(clustersDone), resumesAt: volume.ownedClusters[clustersDone] ?? null, reason: walk!.reason }
        : 'unchecked',
    answered: state.answered,
    waiting: { register: state.waiting.register ? 1 : 0, stops: state.waiting.stops, preempts: state.waiting.preempts.length },
  };
}
