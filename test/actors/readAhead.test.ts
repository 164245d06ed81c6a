// Goal: a walk reads the next clusters ahead of its one-cluster steps (checksumReadAheadClusters),
// and that read-ahead never changes what the walk finds: a stop, preemption or failure calls off
// what has not begun and leaves nothing running; a cluster moved under a waiting read-ahead is read
// where it is now; a read error in a read-ahead cluster fails the walk at that cluster, not before.
import { describe, expect, it } from 'vitest';
import { InspectionHub } from '../../src/actors/inspector.ts';
import { LvolActor } from '../../src/actors/lvolActor.ts';
import { IoQueue } from '../../src/device/ioQueue.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { MemoryMetadataLog } from '../../src/store/metadata.ts';
import { oneCrc, pattern } from '../integration/knownCrc.ts';

const clusterBytes = 64 * 1024;
const ownedClusters = [0, 2, 4, 6, 8, 10];
const tick = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A snapshot owning every other cluster of 12, each holding its own pattern, on a simulated device
 * behind a device queue that admits one background read at a time (the node's admits more, but
 * a walk's read-ahead can always outrun a device's bound when several walks share it): the walk's
 * read-ahead beyond that waits in the queue, where a stop can still call it off.
 */
const backgroundInFlightMax = 1;
async function walkSetup() {
  const device = new SimulatedDevice(16 * 1024 * 1024, 512);
  const queued = new QueuedDevice(device, new IoQueue(backgroundInFlightMax, 10_000));
  const runtime = seededRuntime(11);
  const store = await Lvstore.create(queued, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, new MemoryMetadataLog(), runtime);
  const lvol = await store.createLvol({ name: 'vol', clusterCount: 12, thin: true });
  const data = new Map<number, Buffer>();
  for (const clusterIndex of ownedClusters) {
    data.set(clusterIndex, pattern(100 + clusterIndex, clusterBytes));
    await store.write(lvol.id, clusterIndex * clusterBytes, data.get(clusterIndex)!);
  }
  const snapshot = await store.snapshot(lvol.id, 'snap', {});
  const actor = new LvolActor(snapshot.id, store, runtime, new InspectionHub(), () => {}, { readAheadClusters: 3 });
  // Reads at the device, counted as they start and as they end (after any hold).
  const reads = { started: 0, ended: 0 };
  device.onIoStart = (kind) => {
    if (kind === 'read') reads.started++;
  };
  const readInto = device.readInto.bind(device);
  device.readInto = async (target, offsetBytes) => {
    try {
      await readInto(target, offsetBytes);
    } finally {
      reads.ended++;
    }
  };
  const chain = (order: readonly number[]) => oneCrc(...order.map((clusterIndex) => data.get(clusterIndex)!));
  return { device, store, snapshot, actor, reads, chain };
}

/**
 * Starts a walk and holds the device from its first read-ahead on (cluster 0 is read and recorded,
 * the window 2, 4, 6 is filled); resolves once the reads the device admits are held there (to the
 * walk's outcome, boxed).
 */
async function heldWalk(setup: Awaited<ReturnType<typeof walkSetup>>): Promise<{ outcome: Promise<unknown> }> {
  const count = setup.device.onIoStart!;
  setup.device.onIoStart = (kind, offsetBytes, lengthBytes) => {
    count(kind, offsetBytes, lengthBytes);
    if (kind === 'read' && setup.reads.started === 2) setup.device.hold();
  };
  const outcome = setup.actor.register('whole', false).catch((error: unknown) => error);
  while (setup.reads.started < 1 + backgroundInFlightMax) await tick();
  // The step of cluster 2 has taken its read from the window: it waits on it.
  while (setup.actor.readStats.readAhead !== 2) await tick();
  return { outcome };
}

describe('LvolActor read-ahead', () => {
  it('has the next clusters in flight while a step waits, and still gives the exact chained CRC', async () => {
    const setup = await walkSetup();
    const { outcome } = await heldWalk(setup);
    // Cluster 2's step waits for its read, begun as read-ahead, with 4 at the device beside it and
    // 6 queued (the window is topped up as each read comes in).
    expect(setup.actor.readStats).toMatchObject({ inFlight: 3, readAhead: 2 });
    expect(setup.reads.started).toBe(1 + backgroundInFlightMax);
    setup.device.release();
    await expect(outcome).resolves.toBe(true);
    expect(setup.store.lvol(setup.snapshot.id).checksum).toBe(setup.chain(ownedClusters));
    expect(setup.reads.started).toBe(ownedClusters.length);
    expect(setup.actor.readStats).toEqual({ inFlight: 0, readAhead: 0, discarded: 0 });
  });

  it('calls off queued read-ahead at a stop: only the reads that had begun run, none after stop answers', async () => {
    const setup = await walkSetup();
    const { outcome } = await heldWalk(setup);
    const stopped = setup.actor.stop();
    await tick();
    setup.device.release();
    await expect(stopped).resolves.toBe(true);
    expect((await outcome) as StorageError).toMatchObject({ errno: 'EINTR', data: { reason: 'stopped', clusters_done: 2 } });
    // Cluster 6 waited in the device queue: called off, never read; 4 had begun and was halted.
    expect(setup.reads.started).toBe(1 + backgroundInFlightMax);
    expect(setup.reads.ended).toBe(setup.reads.started);
    expect(setup.actor.readStats).toMatchObject({ inFlight: 0, readAhead: 0, discarded: 2 });
    for (let turn = 0; turn < 5; turn++) await tick();
    expect(setup.reads.started).toBe(1 + backgroundInFlightMax);
    // Resumed after the stop, the walk still reaches the exact value.
    await expect(setup.actor.register('whole', true)).resolves.toBe(true);
    expect(setup.store.lvol(setup.snapshot.id).checksum).toBe(setup.chain(ownedClusters));
  });

  it('leaves no read running when a preemption (a delete) answers', async () => {
    const setup = await walkSetup();
    const { outcome } = await heldWalk(setup);
    const preempted = setup.actor.preempt('bdev_lvol_delete');
    await tick();
    setup.device.release();
    await expect(preempted).resolves.toBe(true);
    expect(setup.actor.holdsReads).toBe(false);
    expect(setup.reads.ended).toBe(setup.reads.started);
    expect(setup.reads.started).toBe(1 + backgroundInFlightMax);
    expect((await outcome) as StorageError).toMatchObject({ errno: 'EINTR', data: { reason: 'preempted by bdev_lvol_delete' } });
    setup.actor.dispose();
    expect(setup.actor.readStats.inFlight).toBe(0);
  });

  it('reads a cluster where it is now when it moved under a waiting read-ahead', async () => {
    // A snapshot is read-only, but this stands for a merge or decouple that remapped a cluster
    // without preempting: the read-ahead queued for its old place must not be used.
    const setup = await walkSetup();
    const { outcome } = await heldWalk(setup);
    const map = setup.store.lvol(setup.snapshot.id).clusterMap;
    const [four, six] = [map.get(4), map.get(6)];
    map.set(4, six);
    map.set(6, four);
    setup.device.release();
    await expect(outcome).resolves.toBe(true);
    expect(setup.store.lvol(setup.snapshot.id).checksum).toBe(setup.chain([0, 2, 6, 4, 8, 10]));
    expect(setup.actor.readStats.discarded).toBe(2);
  });

  it('fails the walk at the read-ahead cluster whose read failed, after recording the ones before it', async () => {
    const setup = await walkSetup();
    // Reads reach the device in cluster order: the third is cluster 4, read ahead while 2 is stepped.
    setup.device.setFaults({ failReadAt: 3 });
    await expect(setup.actor.register('whole', false)).rejects.toBeInstanceOf(StorageError);
    expect(setup.actor.status()).toMatchObject({ state: 'failed', clusters_done: 2 });
    expect(setup.actor.status().error).toMatch(/EIO|fail/i);
    await expect.poll(() => setup.actor.holdsReads).toBe(false);
  });
});
