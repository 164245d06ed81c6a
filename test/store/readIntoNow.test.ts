// Goal: a read an lvol can answer at once (readIntoNow: the NVMe/TCP target's reads try it first)
// returns exactly the bytes the lvol holds — its own clusters, its ancestors', zeros where nobody
// wrote — checked against byte arrays this test alone keeps; it declines (false, and readInto is
// used) where part of the range lies in an external snapshot or the device always waits; a failed
// device read throws as readInto rejects; and through a consumer's metered view it is counted as
// any read.
import { describe, expect, it } from 'vitest';
import { BdevIoStates, systemBdevIoClock } from '../../src/bdev/bdevIo.ts';
import { LvolBdevs } from '../../src/bdev/lvolBdev.ts';
import { IoQueue } from '../../src/device/ioQueue.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { type ExternalSource, Lvstore } from '../../src/store/lvstore.ts';
import { MemoryMetadataLog } from '../../src/store/metadata.ts';
import { seededRandom } from '../seededRandom.ts';
import { blockBytes, clusterBytes, deviceBytes, patternBytes } from './helpers.ts';

async function storeOn(device: QueuedDevice | MemoryDevice | SimulatedDevice): Promise<Lvstore> {
  return Lvstore.create(device, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, new MemoryMetadataLog(), seededRuntime(3));
}

describe('an lvol read answered at once', () => {
  it('matches byte arrays of a volume, its snapshot and a clone over random writes and reads across clusters', async () => {
    const seed = Number(process.env.LVNODE_TEST_SEED ?? Date.now() % 1_000_000);
    const next = seededRandom(seed);
    const device = new QueuedDevice(new MemoryDevice(deviceBytes, blockBytes), new IoQueue());
    const store = await storeOn(device);
    const clusters = 8;
    const sizeBytes = clusters * clusterBytes;
    const volume = await store.createLvol({ name: 'vol', clusterCount: clusters, thin: true });
    const oracles = new Map<string, Buffer>([[volume.id, Buffer.alloc(sizeBytes)]]);
    const writable = [volume.id];
    let writes = 0;
    const writeSomewhere = async (): Promise<void> => {
      const id = writable[Math.floor(next() * writable.length)]!;
      const lengthBytes = blockBytes * (1 + Math.floor(next() * 300));
      const offsetBytes = blockBytes * Math.floor(next() * ((sizeBytes - lengthBytes) / blockBytes));
      const data = patternBytes(lengthBytes, seed + ++writes);
      await store.write(id, offsetBytes, data);
      data.copy(oracles.get(id)!, offsetBytes);
    };
    const checkReads = (count: number): void => {
      for (let index = 0; index < count; index++) {
        for (const [id, oracle] of oracles) {
          const lengthBytes = blockBytes * (1 + Math.floor(next() * 400));
          const offsetBytes = blockBytes * Math.floor(next() * ((sizeBytes - lengthBytes) / blockBytes));
          const target = Buffer.alloc(lengthBytes, 0xaa);
          expect(store.readIntoNow(id, offsetBytes, target), `seed ${seed}`).toBe(true);
          expect(target.equals(oracle.subarray(offsetBytes, offsetBytes + lengthBytes)), `seed ${seed}, ${id} at ${offsetBytes}+${lengthBytes}`).toBe(true);
        }
      }
    };
    for (let step = 0; step < 12; step++) await writeSomewhere();
    checkReads(20);
    const snapshot = await store.snapshot(volume.id, 'snap', {});
    oracles.set(snapshot.id, Buffer.from(oracles.get(volume.id)!));
    const clone = await store.clone(snapshot.id, 'clone');
    oracles.set(clone.id, Buffer.from(oracles.get(snapshot.id)!));
    writable.push(clone.id);
    for (let step = 0; step < 24; step++) await writeSomewhere();
    checkReads(40);
    // Every read went to the device's queue as one finished foreground request, nothing in flight.
    expect(device.queue.stats()).toMatchObject({ foreground_in_flight: 0, background_in_flight: 0 });
  });

  it('declines a range that reads an external snapshot, and answers one the clone owns', async () => {
    const store = await storeOn(new MemoryDevice(deviceBytes, blockBytes));
    const parentBytes = patternBytes(4 * clusterBytes, 77);
    const external: ExternalSource = {
      name: 'parent',
      uuid: '11111111-2222-4333-8444-555555555555',
      blockSizeBytes: blockBytes,
      sizeBytes: () => parentBytes.length,
      readInto: async (offsetBytes, target) => void parentBytes.copy(target, 0, offsetBytes, offsetBytes + target.length),
    };
    store.externalSource = (uuid) => (uuid === external.uuid ? external : undefined);
    const clone = await store.cloneExternal(external, 'clone');
    const own = patternBytes(clusterBytes, 9);
    await store.write(clone.id, clusterBytes, own);
    const target = Buffer.alloc(clusterBytes);
    expect(store.readIntoNow(clone.id, clusterBytes, target)).toBe(true);
    expect(target.equals(own)).toBe(true);
    expect(store.readIntoNow(clone.id, 0, Buffer.alloc(clusterBytes))).toBe(false);
    // Own cluster then an external one: declined as a whole, and readInto gives the right bytes.
    const across = Buffer.alloc(2 * clusterBytes);
    expect(store.readIntoNow(clone.id, clusterBytes, across)).toBe(false);
    await store.readInto(clone.id, clusterBytes, across);
    expect(across.equals(Buffer.concat([own, parentBytes.subarray(2 * clusterBytes, 3 * clusterBytes)]))).toBe(true);
  });

  it('declines on a device that always waits, and refuses a bad range as readInto does', async () => {
    const store = await storeOn(new SimulatedDevice(deviceBytes, blockBytes));
    const volume = await store.createLvol({ name: 'vol', clusterCount: 4, thin: false });
    expect(store.readIntoNow(volume.id, 0, Buffer.alloc(4096))).toBe(false);
    expect(() => store.readIntoNow(volume.id, 4 * clusterBytes, Buffer.alloc(512))).toThrow(expect.objectContaining({ errno: 'EINVAL' }));
    expect(() => store.readIntoNow(volume.id, 100, Buffer.alloc(512))).toThrow(expect.objectContaining({ errno: 'EINVAL' }));
  });

  it('throws a failed device read as an I/O error naming the lvol', async () => {
    const memory = new MemoryDevice(deviceBytes, blockBytes);
    const store = await storeOn(memory);
    const volume = await store.createLvol({ name: 'vol', clusterCount: 4, thin: false });
    memory.readIntoNow = () => {
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', errno: -5, syscall: 'read' });
    };
    let thrown: unknown;
    try {
      store.readIntoNow(volume.id, 0, Buffer.alloc(4096));
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(StorageError);
    expect(thrown).toMatchObject({ errno: 'EIO' });
    expect(String((thrown as Error).message)).toMatch(/read of lvol vol failed/);
  });

  it('is counted through a consumer’s metered view, and declined there while the bdev has a rate limit', async () => {
    const store = await storeOn(new MemoryDevice(deviceBytes, blockBytes));
    const volume = await store.createLvol({ name: 'vol', clusterCount: 4, thin: false });
    const data = patternBytes(8192, 5);
    await store.write(volume.id, 8192, data);
    const lvols = new LvolBdevs(() => ({ store, lvol: store.lvol(volume.id) }));
    const states = new BdevIoStates(systemBdevIoClock);
    const view = states.meter(lvols.bdev(volume.id));
    const target = Buffer.alloc(8192);
    expect(view.readIntoNow(8192, target)).toBe(true);
    expect(target.equals(data)).toBe(true);
    expect(view.io).toMatchObject({ numReadOps: 1, bytesRead: 8192, queueDepth: 0 });
    view.io.setLimits({ rwIosPerSec: 1000, rwBytesPerSec: 0, rBytesPerSec: 0, wBytesPerSec: 0 });
    expect(view.readIntoNow(0, target)).toBe(false);
    expect(view.io.numReadOps).toBe(1);
  });
});
