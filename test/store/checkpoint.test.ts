// Goal: checkpoints are encoded line by line with turns for the event loop, from a snapshot taken
// when they start. Changes that arrive meanwhile (cluster allocations, renames, creates) must
// land in the journal after the checkpoint, never in it and never lost: the reloaded store equals
// the live one.
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { encodeCheckpoint, metadataLayout, snapshotRecord } from '../../src/store/format.ts';
import { JournalMetadataLog } from '../../src/store/journal.ts';
import { openLvstore } from '../../src/store/load.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import { MemoryMetadataLog } from '../../src/store/metadata.ts';
import { storeState } from './helpers.ts';
import { countEventLoopTurns } from '../eventLoopTurns.ts';

const clusterBytes = 64 * 1024;

async function journaledStore(device: MemoryDevice): Promise<Lvstore> {
  return Lvstore.create(
    device,
    { name: 'lvs', clusterBytes, clearMethod: 'none' },
    (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
    seededRuntime(5),
  );
}

describe('checkpoints while changes keep arriving', () => {
  it('reloads exactly the live state after a checkpoint that yielded to concurrent changes', async () => {
    const device = new MemoryDevice(256 * 1024 * 1024, 512);
    const store = await journaledStore(device);
    const ids: string[] = [];
    for (let index = 0; index < 1500; index++) {
      ids.push((await store.createLvol({ name: `v${index}`, clusterCount: 64, thin: true })).id);
      if (index % 10 === 0) await store.setXattr(ids[index]!, 'k', 'x'.repeat(200));
    }
    // Late in the list (encoded last), with data: a snapshot taken during the encode moves their
    // clusters to a new record, which only the journal may carry.
    for (let index = 1400; index < 1440; index++) await store.write(ids[index]!, 0, Buffer.alloc(512, 0x77));
    const order: string[] = [];
    const checkpoint = store.forceCheckpoint().then(() => order.push('checkpoint'));
    // Issued while the checkpoint is being encoded: they must not be in it, and must survive.
    const concurrent: Array<Promise<unknown>> = [];
    for (let index = 0; index < 40; index++) {
      concurrent.push(store.write(ids[index]!, (index % 64) * clusterBytes, Buffer.alloc(512, index + 1)));
      concurrent.push(store.renameLvol(ids[index + 100]!, `renamed${index}`));
    }
    concurrent.push(store.createLvol({ name: 'late', clusterCount: 4, thin: false }));
    for (let index = 1400; index < 1440; index++) concurrent.push(store.snapshot(ids[index]!, `snap${index}`, {}));
    concurrent.push(store.renameLvol(ids[1499]!, 'last').then(() => order.push('rename')));
    // The snapshots were applied in memory while the checkpoint was still being encoded.
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual([]);
    await Promise.all([checkpoint, ...concurrent]);
    expect(store.metadataStats()!.checkpoints).toBeGreaterThanOrEqual(2);
    const reloaded = await openLvstore(device, seededRuntime(6));
    expect(storeState(reloaded!)).toEqual(storeState(store));
    for (let index = 1400; index < 1440; index++) {
      const snapshot = reloaded!.findLvolByName(`snap${index}`)!;
      expect((await reloaded!.read(snapshot.id, 0, 512)).every((byte) => byte === 0x77)).toBe(true);
    }
    // Appends wait behind the checkpoint being written, so they are acknowledged after it.
    expect(order).toEqual(['checkpoint', 'rename']);
  });
});

describe('checkpoint encoding', () => {
  it('gives the event loop turns while it encodes a large store', async () => {
    const store = await Lvstore.create(new MemoryDevice(64 * 1024 * 1024, 512), { name: 'lvs', clusterBytes, clearMethod: 'none' }, new MemoryMetadataLog(), seededRuntime(7));
    for (let index = 0; index < 8000; index++) await store.createLvol({ name: `v${index}`, clusterCount: 1, thin: true });
    const turns = countEventLoopTurns();
    const image = await encodeCheckpoint(snapshotRecord(store.record), 1n, 512);
    expect(turns.stop()).toBeGreaterThan(1);
    expect(image.length).toBeGreaterThan(8000 * 100);
  });
});
