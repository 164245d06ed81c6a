// Goal: an lvol actor walks its snapshot's own clusters one per event, stops only between clusters,
// yields to priority operations, and leaves nothing behind when stopped.
import { describe, expect, it } from 'vitest';
import { InspectionHub } from '../../src/actors/inspector.ts';
import { createActor } from 'xstate';
import { LvolActor, restingSnapshot } from '../../src/actors/lvolActor.ts';
import { immediateAdmission } from '../../src/actors/scheduler.ts';
import { crc64, crc64Combine } from '../../src/checksum/crc64.ts';
import { lvolMachine } from '../../src/machines/lvolMachine.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { MemoryMetadataLog } from '../../src/store/metadata.ts';

const clusterBytes = 64 * 1024;

async function snapshotWithData(clusterCount: number) {
  const device = new SimulatedDevice(64 * 1024 * 1024, 512);
  const runtime = seededRuntime(7);
  const store = await Lvstore.create(device, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, new MemoryMetadataLog(), runtime);
  const lvol = await store.createLvol({ name: 'vol', clusterCount, thin: true });
  const clusters: Buffer[] = [];
  // Write every other cluster so the snapshot owns a sparse set; unowned ones must be skipped.
  for (let index = 0; index < clusterCount; index += 2) {
    const data = Buffer.alloc(clusterBytes, index + 1);
    await store.write(lvol.id, index * clusterBytes, data);
    clusters.push(data);
  }
  const snapshot = await store.snapshot(lvol.id, 'snap', {});
  const expected = clusters.reduce((running, data) => crc64Combine(running, crc64(data), data.length), 0n);
  const actor = new LvolActor(snapshot.id, store, runtime, new InspectionHub(), () => {});
  return { device, store, snapshot, actor, expected, lvolId: lvol.id };
}

describe('LvolActor checksum', () => {
  it('computes the chained CRC of the clusters the snapshot owns, skipping holes', async () => {
    const { actor, store, snapshot, expected } = await snapshotWithData(8);
    await expect(actor.register('whole', false)).resolves.toBe(true);
    expect(store.lvol(snapshot.id).checksum).toBe(expected);
    expect(actor.status()).toMatchObject({ state: 'done', clusters_done: 4, clusters_total: 4, bytes_done: 4 * clusterBytes });
    expect(actor.holdsReads).toBe(false);
  });

  it('meters every cluster a walk read, the last one included', async () => {
    // Goal: node_get_stats' background bytes and the scheduler's pacing count what was read: the
    // last cluster comes with the move to storing, and was once left out (k - 1 of k).
    const { store, snapshot } = await snapshotWithData(8);
    let bytes = 0;
    const admission = { ...immediateAdmission, recordBytes: (count: number) => void (bytes += count) };
    const actor = new LvolActor(snapshot.id, store, seededRuntime(2), new InspectionHub(), () => {}, { admission });
    await actor.register('whole', false);
    expect(bytes).toBe(4 * clusterBytes);
  });

  it('answers stop only after the in-flight cluster finished, then the register caller gets EINTR', async () => {
    const { actor, device } = await snapshotWithData(8);
    let readsStarted = 0;
    device.onIoStart = (kind) => {
      if (kind === 'read') readsStarted++;
    };
    device.hold();
    const outcome = actor.register('whole', false).catch((error: unknown) => error);
    // The first cluster read is now in flight, held at the device.
    while (readsStarted === 0) await new Promise((resolve) => setImmediate(resolve));
    const stopped = actor.stop();
    let stopAnswered = false;
    void stopped.then(() => (stopAnswered = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(actor.checksumState).toBe('stopping');
    expect(stopAnswered).toBe(false);
    device.release();
    await expect(stopped).resolves.toBe(true);
    const error = (await outcome) as StorageError;
    expect(error).toBeInstanceOf(StorageError);
    expect(error.errno).toBe('EINTR');
    expect(error.data).toEqual({ reason: 'stopped', clusters_done: 1, clusters_total: 4 });
    expect(actor.checksumState).toBe('aborted');
    expect(actor.holdsReads).toBe(false);
  });

  it('refuses a stop with nothing running (ESRCH) and a second registration while one runs (EEXIST)', async () => {
    const { actor } = await snapshotWithData(4);
    await expect(actor.stop()).rejects.toMatchObject({ errno: 'ESRCH' });
    const first = actor.register('whole', false);
    await expect(actor.register('whole', false)).rejects.toMatchObject({ errno: 'EEXIST' });
    await expect(first).resolves.toBe(true);
  });

  it('gives way to a priority operation with the operation named in the reason', async () => {
    const { actor } = await snapshotWithData(8);
    const outcome = actor.register('whole', false).catch((error: unknown) => error);
    await new Promise((resolve) => setImmediate(resolve));
    await actor.preempt('bdev_lvol_delete');
    expect(actor.checksumState).toBe('aborted');
    expect(((await outcome) as StorageError).data).toMatchObject({ reason: 'preempted by bdev_lvol_delete' });
  });

  it('resumes an aborted walk and still reaches the full value', async () => {
    const { actor, expected, store, snapshot } = await snapshotWithData(8);
    const outcome = actor.register('whole', false).catch(() => undefined);
    await new Promise((resolve) => setImmediate(resolve));
    await actor.stop();
    await outcome;
    const done = actor.status().clusters_done;
    expect(done).toBeLessThan(4);
    await actor.register('whole', true);
    expect(store.lvol(snapshot.id).checksum).toBe(expected);
  });

  it('reads a large cluster in 4 MiB pieces and still gives the whole cluster’s CRC', async () => {
    const bigCluster = 16 * 1024 * 1024;
    const device = new SimulatedDevice(256 * 1024 * 1024, 512);
    const runtime = seededRuntime(9);
    const store = await Lvstore.create(device, { name: 'big', clusterBytes: bigCluster, clearMethod: 'unmap' }, new MemoryMetadataLog(), runtime);
    const lvol = await store.createLvol({ name: 'vol', clusterCount: 2, thin: true });
    const data = Buffer.alloc(bigCluster);
    for (let offset = 0; offset < bigCluster; offset += 4) data.writeUInt32LE(offset ^ 0x5a5a5a5a, offset);
    await store.write(lvol.id, bigCluster, data);
    const snapshot = await store.snapshot(lvol.id, 'snap', {});
    const actor = new LvolActor(snapshot.id, store, runtime, new InspectionHub(), () => {});
    const readsBefore = device.counts.reads;
    await actor.register('whole', false);
    expect(device.counts.reads - readsBefore).toBe(4);
    expect(store.lvol(snapshot.id).checksum).toBe(crc64(data));
  });

  it('refuses a checksum of a non-snapshot with EPERM', async () => {
    const { store, lvolId } = await snapshotWithData(2);
    const actor = new LvolActor(lvolId, store, seededRuntime(1), new InspectionHub(), () => {});
    await expect(actor.register('whole', false)).rejects.toMatchObject({ errno: 'EPERM' });
  });
});

describe('LvolActor start from a resting snapshot', () => {
  it.each([false, true])('restores exactly the state the machine computes itself (checksum stored: %s), and runs from it', (checksumStored) => {
    // Goal: the cheap start is the same actor: same state, context and behaviour as a computed one.
    const input = { lvolId: 'lvol-1', checksumStored, savedProgress: null };
    const computed = createActor(lvolMachine, { input }).start();
    const restored = createActor(lvolMachine, { input, snapshot: restingSnapshot(input) }).start();
    expect(restored.getSnapshot().value).toEqual(computed.getSnapshot().value);
    expect(restored.getSnapshot().context).toEqual(computed.getSnapshot().context);
    expect(restored.getSnapshot().value).toEqual({ checksum: checksumStored ? 'done' : 'idle', io: 'idle' });
    const start = { type: 'checksum.start', runId: 1, mode: 'whole', clustersTotal: 4, atMs: 0, resume: false } as const;
    computed.send(start);
    restored.send(start);
    expect(restored.getSnapshot().value).toEqual(computed.getSnapshot().value);
    expect(restored.getSnapshot().context).toEqual(computed.getSnapshot().context);
    // Each restore is its own copy: one actor's run does not leak into the next one's start.
    const next = createActor(lvolMachine, { input: { ...input, lvolId: 'lvol-2' }, snapshot: restingSnapshot({ ...input, lvolId: 'lvol-2' }) }).start();
    expect(next.getSnapshot().context).toMatchObject({ lvolId: 'lvol-2', progress: null });
    expect(next.getSnapshot().value).toEqual({ checksum: checksumStored ? 'done' : 'idle', io: 'idle' });
  });

  it('computes the state itself for an lvol with a saved walk position', () => {
    expect(restingSnapshot({ lvolId: 'x', checksumStored: false, savedProgress: { reason: 'stopped' } as never })).toBeUndefined();
  });
});
