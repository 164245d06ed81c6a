// Goal: hold the lvol checksum walk to an independent specification of what a client observes
// (test/machines/lvolChecksumSpec.ts, written from SPEC §6, not from the machine), by walking that
// spec with xstate/graph and replaying every path against a real LvolActor, the production
// machine with its real per-cluster step, on a simulated device of known bytes whose reads the
// test releases one by one. After every step the answers, the status and the last notification,
// the reads at the device, the stored value and the saved position must be what the spec says;
// the CRCs come from a bit-by-bit CRC-64/GO-ISO in the test, not from src/checksum.
import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import { fromTransition } from 'xstate';
import { TestModel } from 'xstate/graph';
import { InspectionHub } from '../../src/actors/inspector.ts';
import { type ChecksumStatus, LvolActor } from '../../src/actors/lvolActor.ts';
import type { WalkAdmission } from '../../src/actors/scheduler.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { isStorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { type MetadataChange, type MetadataLog, MemoryMetadataLog } from '../../src/store/metadata.ts';
import { materialize, vectors } from '../checksum/vectors.ts';
import { crc64Oracle, crc64OracleChained } from './crc64Oracle.ts';
import {
  type Answer,
  type Answers,
  type Mode,
  type Observation,
  type Phase,
  type SpecEvent,
  type SpecState,
  type Volume,
  expectedObservation,
  initialSpecState,
  preemptingOperation,
  specEvents,
  specKey,
  specTransition,
} from './lvolChecksumSpec.ts';

// The bytes of the snapshot come from this seed; set LVNODE_LVOL_SPEC_SEED to replay another.
const seed = Number(process.env.LVNODE_LVOL_SPEC_SEED ?? 19);
const clusterBytes = 16 * 1024;
const clusterCount = 5;
// Clusters 1 and 4 are not owned: the walk must skip them, and a resume after cluster 0 goes on at 2.
const ownedClusters: readonly number[] = [0, 2, 3];
// If the spec or its bounds change, these change: a model that shrinks is noticed here.
const expectedSpecStates = 240;
const expectedSpecTransitions = 1122;
const expectedPaths = 883;
// How long a step may take to show what the spec says. Generous: the addon's CRC threads run at
// idle priority, and in a busy suite a cluster's CRC was seen to wait over 250 ms for a core. A
// correct step ends the wait as soon as it shows; only a failing one waits this long.
const settleMsMax = 10_000;

/** Deterministic bytes per owned cluster (xorshift32), so that a CRC folded out of order differs. */
function clusterData(clusterIndex: number): Buffer {
  let state = (Math.imul(seed, 0x9e3779b1) ^ Math.imul(clusterIndex + 1, 0x85ebca6b)) >>> 0 || 1;
  const bytes = Buffer.alloc(clusterBytes);
  for (let offset = 0; offset < clusterBytes; offset++) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    bytes[offset] = state & 0xff;
  }
  return bytes;
}

const data = new Map(ownedClusters.map((clusterIndex) => [clusterIndex, clusterData(clusterIndex)]));
// Computed once: the bit-by-bit oracle is slow, and every step asks.
const crcOfFirst = ownedClusters.map((_, count) => crc64OracleChained(ownedClusters.slice(0, count).map((clusterIndex) => data.get(clusterIndex)!)));
crcOfFirst.push(crc64OracleChained(ownedClusters.map((clusterIndex) => data.get(clusterIndex)!)));
const clusterCrcs = new Map([...data].map(([clusterIndex, bytes]) => [clusterIndex, crc64Oracle(0n, bytes)]));
const volume: Volume = {
  clusterCount,
  clusterBytes,
  ownedClusters,
  crcOfFirst: (count) => crcOfFirst[count]!,
  clusterCrc: (clusterIndex) => clusterCrcs.get(clusterIndex)!,
};

/** The first owned cluster at or after `clusterIndex`, from the test's own layout; null past the end. */
function firstOwnedFrom(clusterIndex: number): number | null {
  return ownedClusters.find((owned) => owned >= clusterIndex) ?? null;
}

// --- The model: the spec as actor logic, walked by xstate/graph --------------------------------

const specLogic = fromTransition((state: SpecState, event: SpecEvent) => specTransition(state, event, ownedClusters.length), initialSpecState);
type SpecSnapshot = ReturnType<typeof specLogic.getInitialSnapshot>;
const model = new TestModel(specLogic, {
  events: (snapshot: SpecSnapshot) => specEvents(snapshot.context),
  serializeState: (snapshot: SpecSnapshot) => specKey(snapshot.context),
  serializeEvent: (event: SpecEvent) => JSON.stringify(event),
});

interface SpecPath {
  readonly description: string;
  readonly steps: ReadonlyArray<{ event: SpecEvent; state: SpecState }>;
}

/**
 * Transition coverage: for every spec state, its shortest path followed by each event the spec
 * offers there. Paths that are the start of a longer one are dropped; every transition stays.
 * The states along a path are replayed through the spec here: xstate/graph keeps one state per
 * key, and the answers of a step are not part of the key.
 */
function transitionCoveringPaths(): SpecPath[] {
  const all: SpecPath[] = [];
  for (const toState of model.getShortestPaths({ allowDuplicatePaths: true })) {
    const events = toState.steps.map((step) => step.event).filter((event) => (event.type as string) !== 'xstate.init');
    for (const last of specEvents(toState.state.context)) all.push(replay([...events, last]));
  }
  const extended = new Set(all.flatMap((path) => prefixesOf(path.description)));
  const unique = new Map(all.filter((path) => !extended.has(path.description)).map((path) => [path.description, path]));
  return [...unique.values()];
}

function replay(events: readonly SpecEvent[]): SpecPath {
  let state = initialSpecState;
  const steps = events.map((event) => {
    state = specTransition(state, event, ownedClusters.length);
    return { event, state };
  });
  return { description: events.map(describeEvent).join(' → '), steps };
}

function prefixesOf(description: string): string[] {
  const parts = description.split(' → ');
  return parts.slice(1).map((_, index) => parts.slice(0, index + 1).join(' → '));
}

function describeEvent(event: SpecEvent): string {
  if (event.type !== 'register') return event.type;
  return `register(${event.mode}${event.resume ? ', resume' : ''})`;
}

// --- The system under test: a real LvolActor over a real lvstore on a simulated device ---------

/**
 * Counts everything that may change what the test observes, so that waiting for a step to show
 * its outcome sleeps until something happens instead of spinning: the CRC work of a step may run
 * on the addon's idle-priority threads, which only get a core the event loop leaves free.
 */
class ChangeSignal {
  count = 0;
  private waiters: Array<() => void> = [];
  readonly notify = (): void => {
    this.count++;
    for (const wake of this.waiters.splice(0)) wake();
  };
  /** Resolves at the first change after `count` was read, or after `ms`. */
  after(count: number, ms: number): Promise<void> {
    if (this.count !== count) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** A metadata log whose result stores wait until the test lets them through (to hold `storing`). */
class GatedLog implements MetadataLog {
  private readonly inner = new MemoryMetadataLog();
  private waiting: Array<() => void> = [];
  held = false;
  constructor(private readonly changed: () => void) {}
  async append(changes: readonly MetadataChange[]): Promise<void> {
    this.changed();
    const storesResult = changes.some((change) => change.type === 'checksum.store');
    if (this.held && storesResult) await new Promise<void>((resolve) => this.waiting.push(resolve));
    await this.inner.append(changes);
    this.changed();
  }
  releaseAll(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }
  get waitingCount(): number {
    return this.waiting.length;
  }
  async close(): Promise<void> {}
}

/** A scheduler the test drives: a walk waits in `queued` until the spec admits it. */
class ManualAdmission implements WalkAdmission {
  private readonly waiting = new Map<string, () => void>();
  request(lvolId: string, admit: () => void): void {
    this.waiting.set(lvolId, admit);
  }
  release(lvolId: string): void {
    this.waiting.delete(lvolId);
  }
  queuePosition(lvolId: string): number | null {
    return this.waiting.has(lvolId) ? 1 : null;
  }
  pace(): undefined {
    return undefined;
  }
  recordBytes(): void {}
  admitAll(): void {
    const admits = [...this.waiting.values()];
    this.waiting.clear();
    for (const admit of admits) admit();
  }
}

interface Request {
  readonly kind: keyof Answers;
  readonly done: Promise<void>;
  answer?: Answer;
  reported: boolean;
}

interface System {
  readonly store: Lvstore;
  readonly snapshotId: string;
  readonly device: SimulatedDevice;
  readonly log: GatedLog;
  readonly admission: ManualAdmission;
  readonly actor: LvolActor;
  /** Lvol cluster indices of reads held at the device, oldest first. */
  readonly held: number[];
  readonly changes: ChangeSignal;
  /** The last checksum notification the actor sent (state and progress). */
  readonly notified: { last: Observation['notified'] };
  readonly requests: Request[];
}

async function systemUnderTest(): Promise<System> {
  const changes = new ChangeSignal();
  const device = new SimulatedDevice(4 * 1024 * 1024, 512);
  const log = new GatedLog(changes.notify);
  const runtime = seededRuntime(seed);
  const store = await Lvstore.create(device, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, log, runtime);
  const lvol = await store.createLvol({ name: 'vol', clusterCount, thin: true });
  for (const [clusterIndex, bytes] of data) await store.write(lvol.id, clusterIndex * clusterBytes, bytes);
  const snapshot = await store.snapshot(lvol.id, 'snap', {});
  // Reads are told apart by where they land on the device, mapped back to the snapshot's clusters.
  const clusterAtOffset = new Map(ownedClusters.map((clusterIndex) => [store.ownedClusterOffsetBytes(snapshot.id, clusterIndex), clusterIndex]));
  const held: number[] = [];
  device.onIoStart = (kind, offsetBytes) => {
    if (kind === 'read') held.push(clusterAtOffset.get(offsetBytes) ?? -1);
    changes.notify();
  };
  log.held = true;
  device.holdOneByOne();
  const admission = new ManualAdmission();
  const notified = { last: { state: 'idle' as Phase, clusters_done: 0 } };
  const listener = (_lvolId: string, status: ChecksumStatus): void => {
    notified.last = { state: status.state as Phase, clusters_done: status.clusters_done };
    changes.notify();
  };
  // One cluster read ahead, as the spec's walk: a deeper window (LvolActorOptions.readAheadClusters)
  // is the device path's business, with its own tests (test/actors/readAhead.test.ts).
  const actor = new LvolActor(snapshot.id, store, runtime, new InspectionHub(), listener, { admission, readAheadClusters: 1 });
  actor.actor.subscribe(changes.notify);
  return { store, snapshotId: snapshot.id, device, log, admission, actor, held, changes, notified, requests: [] };
}

function track(system: System, kind: keyof Answers, request: Promise<unknown>): void {
  const entry: Request = {
    kind,
    reported: false,
    done: request.then(
      (value) => {
        entry.answer = { ok: value === true };
        system.changes.notify();
      },
      (error: unknown) => {
        entry.answer = answerOfError(error);
        system.changes.notify();
      },
    ),
  };
  system.requests.push(entry);
}

function answerOfError(error: unknown): Answer {
  // Anything but a StorageError is a bug; it shows in the diff of the answers rather than escaping.
  if (!isStorageError(error)) return { unexpected: String(error) } as unknown as Answer;
  if (error.errno === 'EINTR') return { errno: 'EINTR', data: error.data as Extract<Answer, { errno: 'EINTR' }>['data'] };
  return { errno: error.errno as 'EEXIST' | 'ESRCH' | 'EIO' };
}

function releaseHeldRead(system: System, fails: boolean): void {
  if (fails) system.device.setFaults({ failReadAt: 1 });
  if (!system.device.releaseOne()) throw new Error('the spec has a cluster read in flight; the device holds none');
  system.held.shift();
}

/** Makes the system do what the spec event says: a client request, or the scheduler or device acting. */
function perform(system: System, event: SpecEvent): void {
  const { actor } = system;
  switch (event.type) {
    case 'register':
      return track(system, 'register', actor.register(event.mode, event.resume));
    case 'stop':
      return track(system, 'stop', actor.stop());
    case 'preempt':
      return track(system, 'preempt', actor.preempt(preemptingOperation));
    case 'invalidate':
      return actor.invalidate();
    case 'admit':
      return system.admission.admitAll();
    case 'admitRacingStop':
      // In one tick, before the walk's first step could begin its read.
      system.admission.admitAll();
      return track(system, 'stop', actor.stop());
    case 'readDone':
      return releaseHeldRead(system, false);
    case 'readFails':
      return releaseHeldRead(system, true);
    case 'stopAfterRead': {
      // The stop is sent from the snapshot in which the walk took the cluster in: before anything
      // else (its next step, a macrotask) could run.
      const before = actor.actor.getSnapshot().context.progress!.clustersDone;
      const subscription = actor.actor.subscribe((snapshot) => {
        if ((snapshot.context.progress?.clustersDone ?? before) === before) return;
        subscription.unsubscribe();
        track(system, 'stop', actor.stop());
      });
      return releaseHeldRead(system, false);
    }
    case 'storeDone':
      return system.log.releaseAll();
  }
}

function observe(system: System): Observation {
  const status = system.actor.status();
  const record = system.store.lvol(system.snapshotId);
  const saved = record.savedProgress;
  const answered = (kind: keyof Answers): Answer[] =>
    system.requests.filter((request) => request.kind === kind && request.answer && !request.reported).map((request) => request.answer!);
  const waiting = (kind: keyof Answers): number => system.requests.filter((request) => request.kind === kind && !request.answer).length;
  return {
    status: {
      state: status.state as Phase,
      mode: status.mode as Mode | null,
      clusters_done: status.clusters_done,
      clusters_total: status.clusters_total,
      bytes_done: status.bytes_done,
      reason: status.reason ?? null,
      error: status.error !== undefined,
      resumable: status.resumable,
    },
    notified: system.notified.last,
    readsAtDevice: [...system.held],
    resultWaiting: system.log.waitingCount > 0,
    stored:
      system.log.waitingCount > 0
        ? 'unchecked'
        : {
            checksum: record.checksum,
            rangeChecksums: record.rangeChecksums ? Array.from({ length: clusterCount }, (_, index) => record.rangeChecksums!.get(index)) : null,
          },
    savedPosition:
      status.state !== 'aborted'
        ? 'unchecked'
        : saved
          ? { clustersDone: saved.clustersDone, runningCrc: saved.runningCrc, resumesAt: firstOwnedFrom(saved.nextClusterIndex), reason: saved.reason }
          : null,
    answered: { register: answered('register'), stop: answered('stop'), preempt: answered('preempt') },
    waiting: { register: waiting('register'), stops: waiting('stop'), preempts: waiting('preempt') },
  };
}

const macrotask = () => new Promise((resolve) => setImmediate(resolve));

/**
 * Lets the system run until it shows `expected` and keeps showing it for a few macrotasks (a stop
 * answered too early, or a walk that runs on, shows up then), or until the time is up. Returns
 * what it showed last; the answers in it count as reported.
 */
async function settleTo(system: System, expected: Observation): Promise<Observation> {
  const deadline = performance.now() + settleMsMax;
  let steady = 0;
  let quietRounds = 0;
  let changesSeen = system.changes.count;
  let seen = observe(system);
  while (steady < 4 && performance.now() < deadline) {
    // A few macrotasks let promise chains and I/O callbacks run; then sleep until something changes.
    if (quietRounds < 8) await macrotask();
    else await system.changes.after(changesSeen, Math.max(0, deadline - performance.now()));
    quietRounds = system.changes.count === changesSeen ? quietRounds + 1 : 0;
    changesSeen = system.changes.count;
    seen = observe(system);
    steady = isDeepStrictEqual(seen, expected) ? steady + 1 : 0;
  }
  for (const request of system.requests) if (request.answer) request.reported = true;
  return seen;
}

/** Ends whatever still runs and checks that nothing stayed held (SPEC §6.8). */
async function shutDown(system: System): Promise<void> {
  const { actor, device, log } = system;
  device.release();
  log.held = false;
  log.releaseAll();
  if (['queued', 'computing', 'stopping'].includes(actor.checksumState)) await actor.stop();
  await Promise.all(system.requests.map((request) => request.done));
  expect(actor.holdsReads).toBe(false);
  actor.dispose();
}

describe(`lvol checksum walk against its spec (SPEC §6; seed ${seed})`, () => {
  const paths = transitionCoveringPaths();

  it('has a CRC oracle that reproduces every known answer of test/fixtures/crc64.json', () => {
    for (const vector of vectors.single) expect(crc64Oracle(0n, materialize(vector)), JSON.stringify(vector).slice(0, 80)).toBe(BigInt(vector.crc));
    for (const vector of vectors.chained) expect(crc64OracleChained(vector.parts.map(materialize)), vector.what).toBe(BigInt(vector.crc));
  });

  it('walks a spec of fixed size that reaches every phase and every kind of answer', () => {
    const adjacency = model.getAdjacencyMap();
    const transitions = Object.values(adjacency).reduce((sum, vertex) => sum + Object.keys(vertex.transitions).length, 0);
    expect({ states: Object.keys(adjacency).length, transitions, paths: paths.length }).toEqual({
      states: expectedSpecStates,
      transitions: expectedSpecTransitions,
      paths: expectedPaths,
    });
    const states = paths.flatMap((path) => path.steps.map((step) => step.state));
    expect(new Set(states.map((state) => state.phase))).toEqual(new Set(['idle', 'queued', 'computing', 'stopping', 'storing', 'aborted', 'done', 'failed']));
    const answers = new Set(
      states.flatMap((state) =>
        (Object.entries(state.answered) as Array<[string, readonly Answer[]]>).flatMap(([kind, list]) =>
          list.map((answer) => `${kind}:${'errno' in answer ? answer.errno : answer.ok}`),
        ),
      ),
    );
    expect([...answers].sort()).toEqual([
      'preempt:false',
      'preempt:true',
      'register:EEXIST',
      'register:EINTR',
      'register:EIO',
      'register:true',
      'stop:ESRCH',
      'stop:true',
    ]);
    // Resumes are walked from every position an aborted walk can stop at, the end included.
    const resumedFrom = new Set(states.filter((state) => state.phase === 'queued').map((state) => state.walk!.clustersDone));
    expect([...resumedFrom].sort()).toEqual([0, 1, 2, 3]);
  });

  // SPEC §9: a change is applied in memory only once durable. Today the lvstore applies a
  // checksum.store to its record before the log append resolves (Lvstore.commit), so the value is
  // readable while the append could still fail and undo it: issue 19 item 6, the store's to fix.
  // When it is, this test fails ("expected to fail"): make it a plain `it`. Only the last
  // assertion may fail: if the walk does not get to `storing` as the spec says, the body returns
  // and the test fails for that.
  it('shows readers a finished value only once the log made it durable', async () => {
    const system = await systemUnderTest();
    const toStoring = replay([{ type: 'register', mode: 'whole', resume: false }, { type: 'admit' }, ...ownedClusters.map(() => ({ type: 'readDone' }) as const)]);
    for (const step of toStoring.steps) {
      perform(system, step.event);
      const expected = expectedObservation(step.state, volume);
      expect(await settleTo(system, expected), `on the way to storing: ${describeEvent(step.event)}`).toEqual(expected);
    }
    // Readers (bdev_lvol_get_snapshot_checksum, listings) read the durable state.
    const visible = system.store.durableLvol(system.snapshotId)?.checksum;
    await shutDown(system);
    expect(visible, 'the checksum is in the record while its log append is held').toBeNull();
  });

  it.each(paths.map((path) => [path.description, path] as const))('answers as the spec says along %s', async (_description, path) => {
    const system = await systemUnderTest();
    let expected = expectedObservation(initialSpecState, volume);
    expect(await settleTo(system, expected), `seed ${seed}, at the start`).toEqual(expected);
    for (const [index, step] of path.steps.entries()) {
      perform(system, step.event);
      expected = expectedObservation(step.state, volume);
      const seen = await settleTo(system, expected);
      expect(seen, `seed ${seed}, step ${index + 1} (${describeEvent(step.event)}) of ${path.description}`).toEqual(expected);
    }
    await shutDown(system);
  });
});
