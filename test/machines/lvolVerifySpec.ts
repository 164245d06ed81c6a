// What a client observes of one snapshot's verify walks (SPEC §6.10) mixed with registrations,
// stops and preemptions (SPEC §6.3–6.6), written down apart from src/machines/lvolMachine.ts and
// src/actors/lvolActor.ts as the oracle of lvolVerify.model.test.ts.
//
// Like lvolChecksumSpec.ts it knows nothing of the machine's config or the actor's code: only the
// requests (verify, register, stop, preempt), what the environment does (the scheduler admits, the
// device finishes or fails the read in flight, the lvstore makes a result durable), and what comes
// back. It also knows, independently of the system, which owned clusters were damaged behind the
// lvstore's back after their checksums were stored (`corrupt`), so it can say which clusters a
// verify must find bad; the CRC values themselves come from the test's own CRC oracle.

export type Phase = 'idle' | 'queued' | 'computing' | 'stopping' | 'storing' | 'aborted' | 'done' | 'failed';

/** What the lvstore held when the test began: per-cluster values (and the whole), or the whole value only. */
export type StoredKind = 'range' | 'whole';

/** The snapshot under test, as the spec knows it. */
export interface VerifyVolume {
  readonly storedKind: StoredKind;
  /** Owned cluster indices, ascending: a full walk's order. */
  readonly ownedClusters: readonly number[];
  /** Owned clusters whose bytes were changed after the stored values were computed. */
  readonly corrupt: ReadonlySet<number>;
}

/** The priority operation the spec preempts with (SPEC §6.5 names it in the reason). */
export const preemptingOperation = 'bdev_lvol_delete';
const stoppedReason = 'stopped';
const preemptedReason = `preempted by ${preemptingOperation}`;
const failedReason = 'failed';

/** The current or last walk, as the status shows it. */
export interface Walk {
  readonly kind: 'register' | 'verify';
  /** A verify that re-reads only the known bad clusters (SPEC §6.10 `errors_only`). */
  readonly errorsOnly: boolean;
  /** The clusters this walk reads, in order: every owned cluster, or the known bad ones. */
  readonly targets: readonly number[];
  /** How many of `targets` were read; the walk goes on at `targets[done]`. */
  readonly done: number;
  readonly reason: string | null;
}

/** The verification record the lvstore holds (SPEC §6.10), in the spec's terms. */
export interface Verification {
  /** null: no verify ever ended; the record only holds a re-registration's evidence. */
  readonly result: 'clean' | 'corrupt' | 'incomplete' | null;
  readonly errorsOnly: boolean;
  readonly checked: number;
  readonly total: number;
  /** Cluster indices found bad, ascending. */
  readonly bad: readonly number[];
  /** Only a whole value is stored and the re-read chained value differs from it. */
  readonly wholeMismatch: boolean;
  /** A re-registration stored other values than those stored before it: both kept as evidence. */
  readonly conflict: boolean;
}

export type Answer =
  | { ok: boolean }
  | { verified: 'clean' | 'corrupt' }
  | { errno: 'EEXIST' | 'ESRCH' | 'EIO' | 'EINVAL' }
  | { errno: 'EINTR'; data: { reason: string; clusters_done: number; clusters_total: number } };

export interface Answers {
  readonly register: readonly Answer[];
  readonly verify: readonly Answer[];
  readonly stop: readonly Answer[];
  readonly preempt: readonly Answer[];
}

export interface SpecState {
  readonly phase: Phase;
  readonly walk: Walk | null;
  /** The stored values were recomputed from the bytes as they are now (a registration completed). */
  readonly storedCurrent: boolean;
  readonly verification: Verification | null;
  /** Requests waiting for their answer: the walk's caller, stops, and preemptions (true: it stopped the walk). */
  readonly waiting: { readonly caller: 'register' | 'verify' | null; readonly stops: number; readonly preempts: readonly boolean[] };
  /** What requests answered in the step that led here. Decides nothing later, so not in the key. */
  readonly answered: Answers;
}

export type SpecEvent =
  | { type: 'verify'; errorsOnly: boolean; resume: boolean }
  | { type: 'register' }
  | { type: 'stop' }
  | { type: 'preempt' }
  | { type: 'admit' }
  /** The device finishes the cluster read in flight. */
  | { type: 'readDone' }
  /** The device finishes the read in flight and a stop arrives in the turn the walk took it in. */
  | { type: 'stopAfterRead' }
  /** The device fails the cluster read in flight (EIO). */
  | { type: 'readFails' }
  /** The lvstore made the finished result durable. */
  | { type: 'storeDone' };

const noAnswers: Answers = { register: [], verify: [], stop: [], preempt: [] };
const nothingWaiting: SpecState['waiting'] = { caller: null, stops: 0, preempts: [] };
const resting: ReadonlySet<Phase> = new Set(['idle', 'aborted', 'done', 'failed']);

/** The snapshot starts with a completed value stored (the machine starts `done`, knowing no walk). */
export const initialSpecState: SpecState = {
  phase: 'done',
  walk: null,
  storedCurrent: false,
  verification: null,
  waiting: nothingWaiting,
  answered: noAnswers,
};

export function specKey(state: SpecState): string {
  return JSON.stringify([state.phase, state.walk, state.storedCurrent, state.verification, state.waiting]);
}

/**
 * The requests and environment events worth trying in `state`. Bounded to keep the model small
 * (lvolChecksumSpec.ts walks the same corners for registrations at length): a stop or preemption
 * does not join one already waiting, a walk fails only while computing, a second walk is refused
 * only while one computes, and a registration is offered only while it can still change what is
 * stored.
 */
export function specEvents(state: SpecState): SpecEvent[] {
  const { phase, waiting } = state;
  const events: SpecEvent[] = [];
  if (resting.has(phase)) {
    events.push({ type: 'verify', errorsOnly: false, resume: false }, { type: 'verify', errorsOnly: true, resume: false });
    if (phase === 'aborted') events.push({ type: 'verify', errorsOnly: false, resume: true }, { type: 'verify', errorsOnly: true, resume: true });
    if (!state.storedCurrent) events.push({ type: 'register' });
  } else if (phase === 'computing') {
    events.push({ type: 'verify', errorsOnly: false, resume: false }, { type: 'register' });
  }
  const nobodyWaits = waiting.stops === 0 && waiting.preempts.length === 0;
  if (phase !== 'stopping' && (phase !== 'storing' || nobodyWaits)) events.push({ type: 'stop' }, { type: 'preempt' });
  if (phase === 'queued') events.push({ type: 'admit' });
  if (phase === 'computing') events.push({ type: 'readDone' }, { type: 'readFails' });
  // SPEC §6.4's stop after the last cluster. Before it, the same race depends on how far reads
  // run ahead of the walk (nothing in flight yet, or the next cluster): readDone then stop instead.
  if (phase === 'computing' && state.walk!.done + 1 === state.walk!.targets.length) events.push({ type: 'stopAfterRead' });
  if (phase === 'stopping') events.push({ type: 'readDone' });
  if (phase === 'storing') events.push({ type: 'storeDone' });
  return events;
}

/** The spec: what `event` does in `state`. */
export function specTransition(previous: SpecState, event: SpecEvent, volume: VerifyVolume): SpecState {
  const state: SpecState = { ...previous, answered: noAnswers };
  const { phase, walk } = state;
  switch (event.type) {
    case 'verify':
      return verify(state, event, volume);
    case 'register':
      // SPEC §6.3: one walk at a time, a verify included: -17 while one is queued, running, stopping or storing.
      if (!resting.has(phase)) return answer(state, 'register', { errno: 'EEXIST' });
      return {
        ...state,
        phase: 'queued',
        walk: { kind: 'register', errorsOnly: false, targets: volume.ownedClusters, done: 0, reason: null },
        waiting: { ...state.waiting, caller: 'register' },
      };
    case 'admit':
      // The walk begins with its next cluster; with none left it goes straight to storing.
      return { ...state, phase: walk!.done < walk!.targets.length ? 'computing' : 'storing' };
    case 'stop':
      return stop(state, volume);
    case 'preempt':
      return preempt(state, volume);
    case 'readDone': {
      // SPEC §6.4: the in-flight cluster always finishes and counts, also when a stop is waiting.
      const finished: Walk = { ...walk!, done: walk!.done + 1 };
      if (phase === 'stopping') return settle({ ...state, phase: 'aborted', walk: finished }, volume);
      return { ...state, walk: finished, phase: finished.done < finished.targets.length ? 'computing' : 'storing' };
    }
    case 'stopAfterRead':
      // After the last cluster the walk is over: it completes and the stop answers -3 (SPEC §6.4).
      return stop(specTransition(state, { type: 'readDone' }, volume), volume);
    case 'readFails':
      return settle({ ...state, phase: 'failed', walk: { ...walk!, reason: failedReason } }, volume);
    case 'storeDone':
      return settle(stored(state, volume), volume);
  }
}

/**
 * SPEC §6.10: a verify is a walk of the same machine. Full: every owned cluster. errors_only: the
 * clusters the last verification found bad, and it needs per-cluster values (EINVAL without).
 * resume continues an aborted verify of the same kind over the clusters it set out to read.
 */
function verify(state: SpecState, event: Extract<SpecEvent, { type: 'verify' }>, volume: VerifyVolume): SpecState {
  const { phase, walk } = state;
  if (!resting.has(phase)) return answer(state, 'verify', { errno: 'EEXIST' });
  if (event.errorsOnly && volume.storedKind === 'whole') return answer(state, 'verify', { errno: 'EINVAL' });
  const resumes = event.resume && phase === 'aborted' && walk!.kind === 'verify' && walk!.errorsOnly === event.errorsOnly;
  const targets = event.errorsOnly ? (state.verification?.bad ?? []) : volume.ownedClusters;
  return {
    ...state,
    phase: 'queued',
    walk: resumes ? { ...walk!, reason: null } : { kind: 'verify', errorsOnly: event.errorsOnly, targets, done: 0, reason: null },
    waiting: { ...state.waiting, caller: 'verify' },
  };
}

/** The walk's result became durable: a registration's values, or a verification. */
function stored(state: SpecState, volume: VerifyVolume): SpecState {
  const walk = state.walk!;
  const next = { ...state, phase: 'done' as const, walk: { ...walk, reason: null } };
  if (walk.kind === 'verify') return { ...next, verification: verificationOf(next, volume, true) };
  // A re-registration overwrites (SPDK); when its values differ from those stored, both are kept.
  const differs = !state.storedCurrent && volume.corrupt.size > 0;
  const before: Verification = state.verification ?? { result: null, errorsOnly: false, checked: 0, total: 0, bad: [], wholeMismatch: false, conflict: false };
  return { ...next, storedCurrent: true, verification: differs ? { ...before, conflict: true } : state.verification };
}

/**
 * What a verify found (SPEC §6.10): each cluster read compared with its stored value; with only a
 * whole value stored, the chained value once every owned cluster was read. Never the stored values
 * themselves: those stay. `complete`: the walk reached its end, else `incomplete` so far.
 */
function verificationOf(state: SpecState, volume: VerifyVolume, complete: boolean): Verification {
  const walk = state.walk!;
  const read = walk.targets.slice(0, walk.done);
  const differs = (clusterIndex: number): boolean => !state.storedCurrent && volume.corrupt.has(clusterIndex);
  const found = volume.storedKind === 'range' ? read.filter(differs) : [];
  // A walk that ended early still knows the bad clusters found before that it did not reach again:
  // errors_only must re-read them (issue 21: "exactly the known bad clusters").
  const carried = complete ? [] : (state.verification?.bad ?? []).filter((clusterIndex) => !read.includes(clusterIndex));
  const bad = [...found, ...carried].sort((a, b) => a - b);
  const wholeMismatch = volume.storedKind === 'whole' && complete && !walk.errorsOnly && volume.ownedClusters.some(differs);
  return {
    // A walk that ended early is `incomplete` whatever it found so far (README; its bad clusters
    // still flag the snapshot), and keeps the position it resumes from (SPEC §6.6).
    result: !complete ? 'incomplete' : bad.length > 0 || wholeMismatch ? 'corrupt' : 'clean',
    errorsOnly: walk.errorsOnly,
    checked: walk.done,
    total: walk.targets.length,
    bad,
    wholeMismatch,
    conflict: state.verification?.conflict ?? false,
  };
}

function stop(state: SpecState, volume: VerifyVolume): SpecState {
  const { phase, walk } = state;
  if (phase === 'queued') return settle({ ...state, phase: 'aborted', walk: { ...walk!, reason: stoppedReason } }, volume, { stops: 1 });
  if (phase === 'computing') {
    return { ...state, phase: 'stopping', walk: { ...walk!, reason: stoppedReason }, waiting: { ...state.waiting, stops: state.waiting.stops + 1 } };
  }
  if (phase === 'stopping') return { ...state, waiting: { ...state.waiting, stops: state.waiting.stops + 1 } };
  return answer(state, 'stop', { errno: 'ESRCH' });
}

function preempt(state: SpecState, volume: VerifyVolume): SpecState {
  const { phase, walk } = state;
  if (phase === 'queued') return settle({ ...state, phase: 'aborted', walk: { ...walk!, reason: preemptedReason } }, volume, { preempts: [true] });
  if (phase === 'computing') {
    return { ...state, phase: 'stopping', walk: { ...walk!, reason: preemptedReason }, waiting: { ...state.waiting, preempts: [...state.waiting.preempts, true] } };
  }
  if (phase === 'stopping' || phase === 'storing') return { ...state, waiting: { ...state.waiting, preempts: [...state.waiting.preempts, false] } };
  return answer(state, 'preempt', { ok: false });
}

/**
 * The walk came to rest: everyone waiting is answered. A verify that ends early (stopped,
 * preempted, failed) records what it found so far as `incomplete` (SPEC §6.10).
 */
function settle(previous: SpecState, volume: VerifyVolume, alsoNow: { stops?: number; preempts?: boolean[] } = {}): SpecState {
  const endedEarly = (previous.phase === 'aborted' || previous.phase === 'failed') && previous.walk!.kind === 'verify';
  const state = endedEarly ? { ...previous, verification: verificationOf(previous, volume, false) } : previous;
  const { phase, walk, waiting } = state;
  const caller: Answer[] = [];
  if (waiting.caller !== null) {
    if (phase === 'done') caller.push(walk!.kind === 'verify' ? { verified: state.verification!.result as 'clean' | 'corrupt' } : { ok: true });
    else if (phase === 'failed') caller.push({ errno: 'EIO' });
    else caller.push({ errno: 'EINTR', data: { reason: walk!.reason!, clusters_done: walk!.done, clusters_total: walk!.targets.length } });
  }
  const stops = waiting.stops + (alsoNow.stops ?? 0);
  const preempts = [...waiting.preempts, ...(alsoNow.preempts ?? [])];
  return {
    ...state,
    waiting: nothingWaiting,
    answered: {
      ...noAnswers,
      ...(waiting.caller !== null ? { [waiting.caller]: caller } : {}),
      stop: Array.from({ length: stops }, () => ({ ok: true })),
      preempt: preempts.map((stoppedIt) => ({ ok: stoppedIt && phase === 'aborted' })),
    },
  };
}

function answer(state: SpecState, kind: keyof Answers, value: Answer): SpecState {
  return { ...state, answered: { ...noAnswers, [kind]: [value] } };
}

// --- What the system must show ------------------------------------------------------------------

/** The CRCs of the snapshot's bytes, from the test's own oracle: as stored at the start, and as they are now. */
export interface VolumeCrcs {
  readonly clusterCount: number;
  readonly clusterBytes: number;
  /** CRC of one owned cluster alone, as originally written or as it is now. */
  clusterCrc(clusterIndex: number, bytes: 'original' | 'current'): bigint;
  /** The chained CRC of these clusters in this order (0 for none). */
  chainedCrc(clusterIndices: readonly number[], bytes: 'original' | 'current'): bigint;
}

export interface BadClusterSeen {
  clusterIndex: number;
  offsetBytes: number;
  expected: bigint;
  actual: bigint;
}

export interface VerificationSeen {
  verified: boolean;
  result: 'clean' | 'corrupt' | 'incomplete' | null;
  errorsOnly: boolean;
  clustersChecked: number;
  clustersTotal: number;
  badClusterCount: number;
  badClusters: BadClusterSeen[];
  whole: { expected: bigint; actual: bigint } | null;
  conflict: { clusterCount: number; clusters: BadClusterSeen[]; whole: { expected: bigint; actual: bigint } | null } | null;
}

export interface Observation {
  readonly status: {
    state: Phase;
    mode: 'whole' | 'range' | 'verify' | null;
    clusters_done: number;
    clusters_total: number;
    bytes_done: number;
    reason: string | null;
    error: boolean;
    resumable: boolean;
  };
  /** Cluster reads under way at the device, as lvol cluster indices. */
  readonly readsAtDevice: readonly number[];
  /** The stored values (never changed by a verify); unchecked while a registration's are on their way. */
  readonly stored: { checksum: bigint | null; rangeChecksums: readonly bigint[] | null } | 'unchecked';
  /** The verification record; unchecked while a result is on its way to the log. */
  readonly verification: VerificationSeen | null | 'unchecked';
  /** While aborted: where a resume continues (SPEC §6.6). */
  readonly savedPosition: { clustersDone: number; runningCrc: bigint; resumesAt: number | null; targets: readonly number[] | null; reason: string | null } | null | 'unchecked';
  readonly answered: Answers;
  readonly waiting: { caller: number; stops: number; preempts: number };
}

function badClusterSeen(clusterIndex: number, crcs: VolumeCrcs, expected: 'original' | 'current'): BadClusterSeen {
  return {
    clusterIndex,
    offsetBytes: clusterIndex * crcs.clusterBytes,
    expected: crcs.clusterCrc(clusterIndex, expected),
    actual: crcs.clusterCrc(clusterIndex, 'current'),
  };
}

export function expectedObservation(state: SpecState, volume: VerifyVolume, crcs: VolumeCrcs): Observation {
  const { phase, walk } = state;
  const done = walk?.done ?? 0;
  const reading = phase === 'computing' || phase === 'stopping';
  const storedBytes = state.storedCurrent ? 'current' : 'original';
  const { ownedClusters } = volume;
  const verification = state.verification;
  const conflictWhole = { expected: crcs.chainedCrc(ownedClusters, 'original'), actual: crcs.chainedCrc(ownedClusters, 'current') };
  const corruptInOrder = ownedClusters.filter((clusterIndex) => volume.corrupt.has(clusterIndex));
  return {
    status: {
      state: phase,
      mode: walk === null ? null : walk.kind === 'verify' ? 'verify' : volume.storedKind,
      clusters_done: done,
      clusters_total: walk ? walk.targets.length : 0,
      bytes_done: done * crcs.clusterBytes,
      reason: walk?.reason ?? null,
      error: phase === 'failed',
      resumable: phase === 'aborted',
    },
    readsAtDevice: reading ? [walk!.targets[done]!] : [],
    stored:
      phase === 'storing' && walk!.kind === 'register'
        ? 'unchecked'
        : {
            checksum: crcs.chainedCrc(ownedClusters, storedBytes),
            rangeChecksums:
              volume.storedKind === 'range'
                ? Array.from({ length: crcs.clusterCount }, (_, index) => (ownedClusters.includes(index) ? crcs.clusterCrc(index, storedBytes) : 0n))
                : null,
          },
    verification:
      phase === 'storing'
        ? 'unchecked'
        : verification === null
          ? null
          : {
              verified: verification.result !== null,
              result: verification.result,
              errorsOnly: verification.errorsOnly,
              clustersChecked: verification.checked,
              clustersTotal: verification.total,
              badClusterCount: verification.bad.length,
              // Bad clusters are only ever found against the values stored at the start.
              badClusters: verification.bad.map((clusterIndex) => badClusterSeen(clusterIndex, crcs, 'original')),
              whole: verification.wholeMismatch ? conflictWhole : null,
              conflict: verification.conflict
                ? {
                    clusterCount: volume.storedKind === 'range' ? corruptInOrder.length : 0,
                    clusters: volume.storedKind === 'range' ? corruptInOrder.map((clusterIndex) => badClusterSeen(clusterIndex, crcs, 'original')) : [],
                    whole: conflictWhole,
                  }
                : null,
            },
    savedPosition:
      phase === 'aborted'
        ? {
            clustersDone: done,
            runningCrc: crcs.chainedCrc(walk!.targets.slice(0, done), 'current'),
            resumesAt: walk!.targets[done] ?? null,
            targets: walk!.errorsOnly ? walk!.targets : null,
            reason: walk!.reason,
          }
        : 'unchecked',
    answered: state.answered,
    waiting: { caller: state.waiting.caller === null ? 0 : 1, stops: state.waiting.stops, preempts: state.waiting.preempts.length },
  };
}
