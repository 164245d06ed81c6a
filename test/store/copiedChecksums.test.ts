// Goal (issue 21 item 3, destination side): the per-cluster CRCs a copy records for a writable lvol
// (`checksum.copied`) and their drops (`checksum.copied_drop`, before any other write of the
// cluster) come back the same from a replayed journal and from a checkpoint; a shrink forgets
// values past the end; and lvol.snapshot moves them to the snapshot, which is born with the
// checksums a fresh registration stores (oracle: hash-wasm over the bytes, no combine).
import { createCRC64 } from 'hash-wasm';
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { metadataLayout } from '../../src/store/format.ts';
import { JournalMetadataLog } from '../../src/store/journal.ts';
import { openLvstore } from '../../src/store/load.ts';
import { Lvstore } from '../../src/store/lvstore.ts';
import type { LvolRecord } from '../../src/store/metadata.ts';
import { blockBytes, clusterBytes, deviceBytes, patternBytes } from './helpers.ts';

const hasher = await createCRC64('d800000000000000');
function oneCrc(...parts: Buffer[]): bigint {
  hasher.init();
  for (const part of parts) hasher.update(part);
  return BigInt(`0x${hasher.digest('hex')}`);
}

function journaledStore(device: MemoryDevice): Promise<Lvstore> {
  return Lvstore.create(
    device,
    { name: 'lvs', clusterBytes, clearMethod: 'unmap' },
    (record) => JournalMetadataLog.format(device, metadataLayout(record.firstDataCluster * record.clusterBytes, record.blockBytes), record),
    seededRuntime(5),
  );
}

function copiedOf(lvol: LvolRecord): Array<[number, bigint]> {
  return lvol.copiedChecksums ? [...lvol.copiedChecksums.entries()] : [];
}

describe('copied checksums of a writable lvol', () => {
  it('survive a replayed journal and a checkpoint, drops included, and a snapshot is born with them', async () => {
    const device = new MemoryDevice(64 * 1024 * 1024, blockBytes);
    const store = await journaledStore(device);
    const dst = await store.createLvol({ name: 'dst', clusterCount: 8, thin: true });
    const bytes = new Map([0, 2, 5].map((index) => [index, patternBytes(clusterBytes, index + 1)]));
    for (const [index, data] of bytes) await store.writeCopied(dst.id, index, data, oneCrc(data));
    // A plain write into cluster 2 drops its value; a second recorded copy brings one back.
    await store.write(dst.id, 2 * clusterBytes + 4096, Buffer.alloc(512, 7));
    expect(copiedOf(store.lvol(dst.id))).toEqual([[0, oneCrc(bytes.get(0)!)], [5, oneCrc(bytes.get(5)!)]]);
    await store.write(dst.id, 6 * clusterBytes, patternBytes(clusterBytes, 99));
    const rewritten = Buffer.from(await store.read(dst.id, 2 * clusterBytes, clusterBytes));
    const six = await store.read(dst.id, 6 * clusterBytes, clusterBytes);
    await store.writeCopied(dst.id, 2, rewritten, oneCrc(rewritten));
    await store.writeCopied(dst.id, 6, six, oneCrc(six));
    const live = copiedOf(store.lvol(dst.id));
    expect(live.map(([index]) => index)).toEqual([0, 2, 5, 6]);

    const replayed = (await openLvstore(device, seededRuntime(6)))!;
    expect(copiedOf(replayed.lvol(dst.id))).toEqual(live);
    await replayed.forceCheckpoint();
    await replayed.close();
    const fromCheckpoint = (await openLvstore(device, seededRuntime(7)))!;
    expect(copiedOf(fromCheckpoint.lvol(dst.id))).toEqual(live);

    const snapshot = await fromCheckpoint.snapshot(dst.id, 'born', {});
    const owned = [0, 2, 5, 6];
    const data = await Promise.all(owned.map((index) => fromCheckpoint.read(snapshot.id, index * clusterBytes, clusterBytes)));
    expect(snapshot.checksum).toBe(oneCrc(...data));
    expect([...snapshot.rangeChecksums!.entries()]).toEqual(owned.map((index, position) => [index, oneCrc(data[position]!)]));
    // The lvol now owns nothing of its own: its values went with the clusters.
    expect(fromCheckpoint.lvol(dst.id).copiedChecksums ?? null).toBeNull();
    await fromCheckpoint.close();
  });

  it('forgets values past a shrink, and a snapshot with an owned cluster lacking one is born unregistered', async () => {
    const device = new MemoryDevice(64 * 1024 * 1024, blockBytes);
    const store = await journaledStore(device);
    const dst = await store.createLvol({ name: 'dst', clusterCount: 8, thin: true });
    for (const index of [1, 6]) {
      const data = patternBytes(clusterBytes, index);
      await store.writeCopied(dst.id, index, data, oneCrc(data));
    }
    await store.resize(dst.id, 4);
    expect(copiedOf(store.lvol(dst.id)).map(([index]) => index)).toEqual([1]);
    await store.write(dst.id, 3 * clusterBytes, patternBytes(clusterBytes, 3));
    const snapshot = await store.snapshot(dst.id, 'born', {});
    expect(snapshot.checksum).toBeNull();
    expect(snapshot.rangeChecksums).toBeNull();
  });

  it('a write whose drop does not become durable fails and writes nothing; the value stays', async () => {
    // The drop is journaled before the bytes move; a failed append restores the records (undo
    // keeps a copy of the values, not the live array) and the write reaches no device block.
    let failing = false;
    const log = {
      append: async () => {
        if (failing) throw new StorageError('EIO', { detail: 'injected' });
      },
      close: async () => {},
    };
    const store = await Lvstore.create(new MemoryDevice(deviceBytes, blockBytes), { name: 'lvs', clusterBytes, clearMethod: 'unmap' }, log, seededRuntime(9));
    const dst = await store.createLvol({ name: 'dst', clusterCount: 4, thin: true });
    const data = patternBytes(clusterBytes, 11);
    await store.writeCopied(dst.id, 1, data, oneCrc(data));
    failing = true;
    await expect(store.write(dst.id, clusterBytes, Buffer.alloc(512, 9))).rejects.toMatchObject({ errno: 'EIO' });
    expect(copiedOf(store.lvol(dst.id))).toEqual([[1, oneCrc(data)]]);
    expect((await store.read(dst.id, clusterBytes, clusterBytes)).equals(data)).toBe(true);
    failing = false;
    await store.write(dst.id, clusterBytes, Buffer.alloc(512, 9));
    expect(copiedOf(store.lvol(dst.id))).toEqual([]);
  });
});
