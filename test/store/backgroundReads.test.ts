// Goal: a read through an lvol's chain asked for in the background class (a deep copy's reads,
// a background read of an lvol bdev) reaches every device of the chain in that class — the
// lvstore's own device and an external snapshot's bdev — and returns the same bytes as a
// foreground read; a plain read stays foreground.
import { describe, expect, it } from 'vitest';
import { IoQueue } from '../../src/device/ioQueue.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { type ExternalSource, Lvstore, type ReadOptions } from '../../src/store/lvstore.ts';
import { MemoryMetadataLog } from '../../src/store/metadata.ts';
import { pattern } from '../integration/knownCrc.ts';

const clusterBytes = 64 * 1024;

async function chain() {
  const device = new QueuedDevice(new MemoryDevice(8 * 1024 * 1024, 512), new IoQueue(1, 10_000));
  const store = await Lvstore.create(device, { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, new MemoryMetadataLog(), seededRuntime(5));
  // The external snapshot: 4 clusters of known bytes; it records the class each read asked for.
  const parentBytes = pattern(77, 4 * clusterBytes);
  const asked: Array<boolean | undefined> = [];
  const external: ExternalSource = {
    name: 'parent',
    uuid: '11111111-2222-4333-8444-555555555555',
    blockSizeBytes: 512,
    sizeBytes: () => parentBytes.length,
    readInto: async (offsetBytes: number, target: Buffer, options?: ReadOptions) => {
      asked.push(options?.background);
      parentBytes.copy(target, 0, offsetBytes, offsetBytes + target.length);
    },
  };
  store.externalSource = (uuid) => (uuid === external.uuid ? external : undefined);
  const clone = await store.cloneExternal(external, 'clone');
  // The clone owns cluster 1 itself; clusters 0, 2, 3 read through to the external snapshot.
  const own = pattern(9, clusterBytes);
  await store.write(clone.id, clusterBytes, own);
  const expected = Buffer.from(parentBytes);
  own.copy(expected, clusterBytes);
  return { device, store, clone, asked, expected };
}

describe('reads through an lvol chain in the background class', () => {
  it('reach the lvstore device and the external snapshot in the background class, with the same bytes', async () => {
    const { device, store, clone, asked, expected } = await chain();
    const before = device.queue.stats();
    const bytes = await store.read(clone.id, 0, 4 * clusterBytes, { background: true });
    expect(bytes.equals(expected)).toBe(true);
    const after = device.queue.stats();
    expect(after.background_ops - before.background_ops).toBe(1);
    expect(after.foreground_ops - before.foreground_ops).toBe(0);
    expect(asked).toEqual([true, true, true]);
  });

  it('stay foreground when not asked for (a client read)', async () => {
    const { device, store, clone, asked, expected } = await chain();
    const before = device.queue.stats();
    const target = Buffer.alloc(4 * clusterBytes);
    await store.readInto(clone.id, 0, target);
    expect(target.equals(expected)).toBe(true);
    const after = device.queue.stats();
    expect(after.foreground_ops - before.foreground_ops).toBe(1);
    expect(after.background_ops - before.background_ops).toBe(0);
    expect(asked).toEqual([undefined, undefined, undefined]);
  });
});
