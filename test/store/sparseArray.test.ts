import { describe, expect, it } from 'vitest';
import { checkpointImage, decodeCheckpoint, decodePayload, encodePayload } from '../../src/store/format.ts';
import type { LvstoreRecord } from '../../src/store/metadata.ts';
import { ClusterChecksums, ClusterMap, pageEntries } from '../../src/store/sparseArray.ts';
import { seededRandom } from '../seededRandom.ts';

describe('ClusterMap (sparse)', () => {
  it('matches a dense reference over random sets, clears, resizes and walks', () => {
    // Goal: the sparse map is a drop-in for the dense array it replaced, page edges included.
    const seed = 0x5eed_0001;
    const random = seededRandom(seed);
    let length = 3 * pageEntries + 17;
    let map = new ClusterMap(length);
    let dense = new Uint32Array(length);
    for (let step = 0; step < 4000; step++) {
      const roll = random();
      if (roll < 0.6) {
        const index = Math.floor(random() * length);
        const value = random() < 0.3 ? 0 : 1 + Math.floor(random() * 1000);
        map.set(index, value);
        dense[index] = value;
      } else if (roll < 0.62) {
        length = 1 + Math.floor(random() * 5 * pageEntries);
        map = map.resized(length);
        const next = new Uint32Array(length);
        next.set(dense.subarray(0, Math.min(length, dense.length)));
        dense = next;
      } else {
        const from = Math.floor(random() * (length + 3));
        let expected = -1;
        for (let index = from; index < length; index++) if (dense[index] !== 0) {
          expected = index;
          break;
        }
        expect(map.nextNonZero(from), `seed ${seed} step ${step}`).toBe(expected);
      }
    }
    expect([...map.dense()]).toEqual([...dense]);
    expect(map.count).toBe(dense.filter((value) => value !== 0).length);
    expect([...map.entries()].map(([index]) => index)).toEqual([...dense.keys()].filter((index) => dense[index] !== 0));
  });

  it('costs what is set, not its length: 2^40 entries with three set', () => {
    // Goal (hostile finding 2): a huge thin lvol's map is as small as what it owns.
    const map = new ClusterMap(2 ** 40);
    const heapBefore = process.memoryUsage().heapUsed;
    map.set(0, 7);
    map.set(2 ** 39, 8);
    map.set(2 ** 40 - 1, 9);
    expect(map.count).toBe(3);
    expect([...map.entries()]).toEqual([[0, 7], [2 ** 39, 8], [2 ** 40 - 1, 9]]);
    expect(map.nextNonZero(1)).toBe(2 ** 39);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(1024 * 1024);
    map.set(2 ** 39, 0);
    expect(map.count).toBe(2);
    expect(() => map.set(2 ** 40, 1)).toThrow(RangeError);
    expect(() => map.dense()).toThrow(RangeError);
  });

  it('round-trips through the metadata payload encoding, runs and all', () => {
    const map = new ClusterMap(2 ** 40);
    for (let index = 0; index < 2000; index++) map.set(100 + index, 5 + index); // one run
    map.set(2 ** 40 - 1, 3);
    const checksums = new ClusterChecksums(2 ** 40);
    checksums.set(5, 0xffff_ffff_ffff_ffffn);
    checksums.set(2 ** 39, 1n);
    const encoded = encodePayload({ map, checksums });
    // A run is 24 bytes however long: the 2000-entry run does not cost 2000 entries.
    expect(encoded.length).toBeLessThan(400);
    const decoded = decodePayload(encoded) as { map: ClusterMap; checksums: ClusterChecksums };
    expect(decoded.map).toBeInstanceOf(ClusterMap);
    expect([...decoded.map.entries()]).toEqual([...map.entries()]);
    expect(decoded.map.length).toBe(2 ** 40);
    expect([...decoded.checksums.entries()]).toEqual([...checksums.entries()]);
  });

  it('loads checkpoints written as one JSON object with dense maps (before sparse arrays)', async () => {
    const legacyLvol = {
      id: 'l1',
      name: 'old',
      clusterMap: new Uint32Array([0, 9, 10, 0]),
      thin: true,
      readOnly: true,
      snapshot: true,
      parentId: null,
      clearMethod: 'none',
      xattrs: new Map(),
      createdAtMs: 1,
      checksum: 5n,
      rangeChecksums: new BigUint64Array([0n, 3n, 4n, 0n]),
      savedProgress: null,
    };
    const record = {
      id: 's1',
      name: 'lvs',
      clusterBytes: 4096,
      blockBytes: 512,
      firstDataCluster: 1,
      clusterTotal: 64,
      clearMethod: 'none',
      lvols: new Map([['l1', legacyLvol]]),
    } as unknown as LvstoreRecord;
    // The earlier layout: the whole record, lvols as an array, in one JSON payload.
    const legacyPayload = encodePayload({ ...record, lvols: [...record.lvols.values()] });
    const decoded = await decodeCheckpoint(checkpointImage(legacyPayload, 3n, 512));
    expect(decoded.kind).toBe('ok');
    if (decoded.kind !== 'ok') return;
    const lvol = decoded.value.record.lvols.get('l1')!;
    expect(lvol.clusterMap).toBeInstanceOf(ClusterMap);
    expect([...lvol.clusterMap.entries()]).toEqual([[1, 9], [2, 10]]);
    expect([...lvol.rangeChecksums!.entries()]).toEqual([[1, 3n], [2, 4n]]);
  });
});
