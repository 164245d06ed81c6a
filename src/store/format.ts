// The lvstore's on-device format: layout of the metadata area, super blocks, checkpoints and
// journal records, each with a magic, a version and a CRC (docs/format.md has the byte tables).
import { crc64, crc64Combine } from '../checksum/crc64.ts';
import { type ClearMethod, type LvolRecord, type LvstoreRecord, type MetadataChange, copyLvol, modifiedLvolIds } from './metadata.ts';
import { ClusterChecksums, ClusterMap } from './sparseArray.ts';

export const formatVersion = 1;
export const superMagic = 'LVNODESB';
export const checkpointMagic = 'LVNODECP';
export const recordMagic = 0x4c564a52; // "LVJR"
export const superHeaderBytes = 512;
export const checkpointHeaderBytes = 64;
export const recordHeaderBytes = 40;

/** Where everything lives inside the metadata area (the clusters before the first data cluster). */
export interface MetadataLayout {
  readonly slotBytes: number;
  readonly superOffsets: readonly [number, number];
  readonly checkpointOffsets: readonly [number, number];
  readonly checkpointBytes: number;
  readonly journalOffset: number;
  readonly journalBytes: number;
}

export function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

function roundDown(value: number, multiple: number): number {
  return Math.floor(value / multiple) * multiple;
}

/** Two super block slots, two checkpoint slots of a quarter each of the rest, the journal in the remaining half. */
export function metadataLayout(metadataAreaBytes: number, blockBytes: number): MetadataLayout {
  const slotBytes = Math.max(4096, blockBytes);
  const rest = metadataAreaBytes - 2 * slotBytes;
  const checkpointBytes = roundDown(rest / 4, blockBytes);
  const journalOffset = 2 * slotBytes + 2 * checkpointBytes;
  return {
    slotBytes,
    superOffsets: [0, slotBytes],
    checkpointOffsets: [2 * slotBytes, 2 * slotBytes + checkpointBytes],
    checkpointBytes,
    journalOffset,
    journalBytes: roundDown(metadataAreaBytes - journalOffset, blockBytes),
  };
}

// ---- super block ----

export interface SuperBlock {
  generation: bigint;
  lvstoreId: string;
  clusterBytes: number;
  blockBytes: number;
  firstDataCluster: number;
  clusterTotal: number;
  /** Which checkpoint slot holds the state as of `checkpointSeq`. */
  checkpointSlot: 0 | 1;
  checkpointLength: number;
  checkpointCrc: bigint;
  checkpointSeq: bigint;
}

export function encodeSuperBlock(superBlock: SuperBlock, slotBytes: number): Buffer {
  const out = Buffer.alloc(slotBytes);
  out.write(superMagic, 0, 'ascii');
  out.writeUInt32LE(formatVersion, 8);
  out.writeUInt32LE(superHeaderBytes, 12);
  out.writeBigUInt64LE(superBlock.generation, 16);
  out.write(superBlock.lvstoreId.padEnd(36, '\0').slice(0, 36), 24, 'ascii');
  out.writeUInt32LE(superBlock.clusterBytes, 60);
  out.writeUInt32LE(superBlock.blockBytes, 64);
  out.writeUInt32LE(superBlock.firstDataCluster, 68);
  out.writeBigUInt64LE(BigInt(superBlock.clusterTotal), 72);
  out.writeUInt32LE(superBlock.checkpointSlot, 80);
  out.writeUInt32LE(superBlock.checkpointLength, 84);
  out.writeBigUInt64LE(superBlock.checkpointCrc, 88);
  out.writeBigUInt64LE(superBlock.checkpointSeq, 96);
  out.writeBigUInt64LE(crc64(out.subarray(0, superHeaderBytes - 8)), superHeaderBytes - 8);
  return out;
}

export type Decoded<T> = { kind: 'ok'; value: T } | { kind: 'absent' } | { kind: 'damaged'; reason: string };

export function decodeSuperBlock(bytes: Buffer): Decoded<SuperBlock> {
  if (bytes.toString('ascii', 0, 8) !== superMagic) return { kind: 'absent' };
  const version = bytes.readUInt32LE(8);
  if (version !== formatVersion) return { kind: 'damaged', reason: `super block format version ${version}, expected ${formatVersion}` };
  if (bytes.readBigUInt64LE(superHeaderBytes - 8) !== crc64(bytes.subarray(0, superHeaderBytes - 8))) {
    return { kind: 'damaged', reason: 'super block CRC mismatch' };
  }
  const slot = bytes.readUInt32LE(80);
  if (slot !== 0 && slot !== 1) return { kind: 'damaged', reason: `super block names checkpoint slot ${slot}` };
  return {
    kind: 'ok',
    value: {
      generation: bytes.readBigUInt64LE(16),
      lvstoreId: bytes.toString('ascii', 24, 60).replace(/\0+$/, ''),
      clusterBytes: bytes.readUInt32LE(60),
      blockBytes: bytes.readUInt32LE(64),
      firstDataCluster: bytes.readUInt32LE(68),
      clusterTotal: Number(bytes.readBigUInt64LE(72)),
      checkpointSlot: slot,
      checkpointLength: bytes.readUInt32LE(84),
      checkpointCrc: bytes.readBigUInt64LE(88),
      checkpointSeq: bytes.readBigUInt64LE(96),
    },
  };
}

// ---- sparse arrays: what is owned, as runs ----

/** [length, base64 of f64 triples (logical index, physical cluster, run length)]: a thick lvol is one run. */
function encodeClusterMap(map: ClusterMap): [number, string] {
  const runs: number[] = [];
  map.forEachNonZero((index, physicalCluster) => {
    const last = runs.length - 3;
    if (last >= 0 && runs[last]! + runs[last + 2]! === index && runs[last + 1]! + runs[last + 2]! === physicalCluster) runs[last + 2]!++;
    else runs.push(index, physicalCluster, 1);
  });
  return [map.length, Buffer.from(new Float64Array(runs).buffer).toString('base64')];
}

function decodeClusterMap([length, text]: unknown[]): ClusterMap {
  const runs = typedFromBase64(String(text), 8, (buffer, count) => new Float64Array(buffer, 0, count));
  const map = new ClusterMap(Number(length));
  for (let position = 0; position + 2 < runs.length; position += 3) {
    const [index, physicalCluster, count] = [runs[position]!, runs[position + 1]!, runs[position + 2]!];
    for (let offset = 0; offset < count; offset++) map.set(index + offset, physicalCluster + offset);
  }
  return map;
}

/** [length, base64 of f64 indices, base64 of u64 values]: one pair per owned cluster. */
function encodeClusterChecksums(array: ClusterChecksums): [number, string, string] {
  const indices = new Float64Array(array.count);
  const values = new BigUint64Array(array.count);
  let position = 0;
  array.forEachNonZero((index, value) => {
    indices[position] = index;
    values[position++] = value;
  });
  return [array.length, Buffer.from(indices.buffer).toString('base64'), Buffer.from(values.buffer).toString('base64')];
}

function decodeClusterChecksums([length, indexText, valueText]: unknown[]): ClusterChecksums {
  const indices = typedFromBase64(String(indexText), 8, (buffer, count) => new Float64Array(buffer, 0, count));
  const values = typedFromBase64(String(valueText), 8, (buffer, count) => new BigUint64Array(buffer, 0, count));
  const array = new ClusterChecksums(Number(length));
  for (let position = 0; position < indices.length; position++) array.set(indices[position]!, values[position]!);
  return array;
}

// ---- JSON payloads with typed arrays and bigints ----

// Typed arrays travel as base64 of their little-endian bytes, bigints as decimal strings, maps
// as entry lists; each tagged so decoding is exact.
function toPlain(value: unknown): unknown {
  // Plain loops, primitives first: every journal record and every checkpoint line passes here.
  if (typeof value !== 'object' || value === null) return typeof value === 'bigint' ? { $big: value.toString() } : value;
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length);
    for (let index = 0; index < value.length; index++) out[index] = toPlain(value[index]);
    return out;
  }
  if (value instanceof ClusterMap) return { $cmap: encodeClusterMap(value) };
  if (value instanceof ClusterChecksums) return { $csum: encodeClusterChecksums(value) };
  if (value instanceof Uint32Array) return { $u32: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (value instanceof BigUint64Array) return { $u64: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (value instanceof Map) return { $map: [...value.entries()].map(([key, item]) => [toPlain(key), toPlain(item)]) };
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value)) out[key] = toPlain((value as Record<string, unknown>)[key]);
  return out;
}

function typedFromBase64<T>(text: string, bytesPerItem: number, make: (buffer: ArrayBuffer, length: number) => T): T {
  const bytes = Buffer.from(text, 'base64');
  const copy = new ArrayBuffer(bytes.length);
  new Uint8Array(copy).set(bytes);
  return make(copy, bytes.length / bytesPerItem);
}

/**
 * Undoes toPlain on freshly parsed JSON, in place: arrays and plain objects are reused (a load
 * decodes every lvol of the store, and rebuilding each object was most of its garbage).
 */
function fromPlain(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) {
    for (let index = 0; index < value.length; index++) {
      const item: unknown = value[index];
      if (item !== null && typeof item === 'object') value[index] = fromPlain(item);
    }
    return value;
  }
  const object = value as Record<string, unknown>;
  const keys = Object.keys(object);
  if (keys.length === 1 && keys[0]!.startsWith('$')) {
    const tagged = decodeTagged(object);
    if (tagged !== undefined) return tagged;
  }
  for (const key of keys) {
    const item = object[key];
    if (item !== null && typeof item === 'object') object[key] = fromPlain(item);
  }
  return object;
}

/** A tagged value ({$big}, {$cmap}, …), or undefined when the object is not one. */
function decodeTagged(object: Record<string, unknown>): unknown {
  if (typeof object.$big === 'string') return BigInt(object.$big);
  if (Array.isArray(object.$cmap)) return decodeClusterMap(object.$cmap);
  if (Array.isArray(object.$csum)) return decodeClusterChecksums(object.$csum);
  if (typeof object.$u32 === 'string') return typedFromBase64(object.$u32, 4, (buffer, length) => new Uint32Array(buffer, 0, length));
  if (typeof object.$u64 === 'string') return typedFromBase64(object.$u64, 8, (buffer, length) => new BigUint64Array(buffer, 0, length));
  if (Array.isArray(object.$map)) return new Map((object.$map as unknown[][]).map(([key, item]) => [fromPlain(key), fromPlain(item)]));
  return undefined;
}

export function encodePayload(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(toPlain(value)), 'utf8');
}

export function decodePayload(bytes: Buffer): unknown {
  return fromPlain(JSON.parse(bytes.toString('utf8')));
}

// ---- checkpoint: the whole lvstore as of one journal sequence number ----

interface CheckpointBody {
  id: string;
  name: string;
  clusterBytes: number;
  blockBytes: number;
  firstDataCluster: number;
  clusterTotal: number;
  clearMethod: ClearMethod;
  lvols: LvolRecord[];
}

type CheckpointHead = Omit<CheckpointBody, 'lvols'> & { lvolCount: number };

/** Gives the event loop a turn once `budgetMs` has passed since the last one (long encodes and loads). */
export function loopYielder(budgetMs = 4): () => Promise<void> | undefined {
  let since = performance.now();
  return () => {
    if (performance.now() - since < budgetMs) return undefined;
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        since = performance.now();
        resolve();
      }),
    );
  };
}

/**
 * The records as of now, for a checkpoint encoded while the event loop goes on. Taking it copies
 * the store's own fields and the list of its lvols, not the lvols: one is copied only when a
 * change is about to modify it before it was encoded (`beforeChange`, copy on write), else it is
 * encoded from the record itself. Copying all of them up front held the event loop ~250 ms at
 * 100,000 lvols, at every checkpoint.
 */
export class RecordCapture {
  readonly head: Omit<CheckpointBody, 'lvols'>;
  private readonly captured: readonly LvolRecord[];
  /** Copies of captured lvols made just before a change modified them. */
  private readonly kept = new Map<string, LvolRecord>();

  constructor(private readonly record: LvstoreRecord) {
    const { lvols, ...head } = record;
    this.head = { ...head };
    this.captured = [...lvols.values()];
  }

  get lvolCount(): number {
    return this.captured.length;
  }

  /** Call before `change` is applied to the live records: what it modifies is kept as it was. */
  beforeChange(change: MetadataChange): void {
    for (const id of modifiedLvolIds(change)) {
      if (this.kept.has(id)) continue;
      // One created after the capture is not in it; a copy of it is never read, and harmless.
      const lvol = this.record.lvols.get(id);
      if (lvol) this.kept.set(id, copyLvol(lvol));
    }
  }

  /**
   * The lvols as they were when captured, in order. Each must be encoded before the next is
   * asked for and before the event loop turns: the live ones are read as they are then.
   */
  *lvols(): Generator<LvolRecord> {
    for (const lvol of this.captured) yield this.kept.get(lvol.id) ?? lvol;
  }
}

/** Wraps a checkpoint payload in its header (magic, version, length, sequence, CRCs), block-padded. */
export function checkpointImage(payload: Buffer, seq: bigint, blockBytes: number): Buffer {
  const out = Buffer.alloc(roundUp(checkpointHeaderBytes + payload.length, blockBytes));
  payload.copy(out, checkpointHeaderBytes);
  writeCheckpointHeader(out, payload.length, crc64(payload), seq);
  return out;
}

function writeCheckpointHeader(out: Buffer, payloadBytes: number, payloadCrc: bigint, seq: bigint): void {
  out.fill(0, 0, checkpointHeaderBytes);
  out.write(checkpointMagic, 0, 'ascii');
  out.writeUInt32LE(formatVersion, 8);
  out.writeUInt32LE(payloadBytes, 12);
  out.writeBigUInt64LE(seq, 16);
  out.writeBigUInt64LE(payloadCrc, 24);
  out.writeBigUInt64LE(crc64(out.subarray(0, 32)), 32);
}

/** Bytes CRCed (and copied) between two chances for the event loop when a checkpoint image is assembled. */
const imageWindowBytes = 1024 * 1024;

const newline = Buffer.from('\n');

/**
 * The whole lvstore as of `seq`: one JSON line for the store, then one line per lvol. Encoded a
 * line at a time with turns for the event loop, so no single string holds the state and a large
 * store does not stall the node.
 */
export async function encodeCheckpoint(capture: RecordCapture, seq: bigint, blockBytes: number): Promise<Buffer> {
  const pause = loopYielder();
  const head: CheckpointHead = { ...capture.head, lvolCount: capture.lvolCount };
  const lines: Buffer[] = [encodePayload(head)];
  let payloadBytes = lines[0]!.length;
  for (const lvol of capture.lvols()) {
    const line = encodePayload(lvol);
    lines.push(newline, line);
    payloadBytes += 1 + line.length;
    const turn = pause();
    if (turn) await turn;
  }
  // The image is assembled, and its payload CRCed, a window at a time: at 100,000 lvols it is
  // ~40 MB, and copying, zeroing and CRCing it in one go held the loop for tens of ms.
  const out = Buffer.allocUnsafe(roundUp(checkpointHeaderBytes + payloadBytes, blockBytes));
  let at = checkpointHeaderBytes;
  for (const line of lines) {
    at += line.copy(out, at);
    const turn = pause();
    if (turn) await turn;
  }
  out.fill(0, at);
  let payloadCrc = 0n;
  for (let offset = checkpointHeaderBytes; offset < at; offset += imageWindowBytes) {
    const window = out.subarray(offset, Math.min(at, offset + imageWindowBytes));
    payloadCrc = crc64Combine(payloadCrc, crc64(window), window.length);
    const turn = pause();
    if (turn) await turn;
  }
  writeCheckpointHeader(out, payloadBytes, payloadCrc, seq);
  return out;
}


export async function decodeCheckpoint(bytes: Buffer): Promise<Decoded<{ record: LvstoreRecord; seq: bigint }>> {
  if (bytes.toString('ascii', 0, 8) !== checkpointMagic) return { kind: 'damaged', reason: 'checkpoint magic missing' };
  if (bytes.readUInt32LE(8) !== formatVersion) return { kind: 'damaged', reason: 'checkpoint format version differs' };
  if (bytes.readBigUInt64LE(32) !== crc64(bytes.subarray(0, 32))) return { kind: 'damaged', reason: 'checkpoint header CRC mismatch' };
  const length = bytes.readUInt32LE(12);
  if (checkpointHeaderBytes + length > bytes.length) return { kind: 'damaged', reason: 'checkpoint truncated' };
  const payload = bytes.subarray(checkpointHeaderBytes, checkpointHeaderBytes + length);
  if (crc64(payload) !== bytes.readBigUInt64LE(24)) return { kind: 'damaged', reason: 'checkpoint CRC mismatch' };
  const pause = loopYielder();
  const firstEnd = payload.indexOf(0x0a);
  const first = decodePayload(payload.subarray(0, firstEnd === -1 ? payload.length : firstEnd)) as CheckpointHead | CheckpointBody;
  let lvols: LvolRecord[];
  let rest: Omit<CheckpointBody, 'lvols'>;
  if ('lvols' in first) {
    // Written before checkpoints were line by line: the whole state is one JSON object.
    ({ lvols, ...rest } = first);
  } else {
    const { lvolCount, ...head } = first;
    rest = head;
    lvols = [];
    for (let start = firstEnd + 1; firstEnd !== -1 && start <= payload.length; ) {
      const end = payload.indexOf(0x0a, start);
      lvols.push(decodePayload(payload.subarray(start, end === -1 ? payload.length : end)) as LvolRecord);
      if (end === -1) break;
      start = end + 1;
      const turn = pause();
      if (turn) await turn;
    }
    if (lvols.length !== lvolCount) return { kind: 'damaged', reason: `checkpoint holds ${lvols.length} lvols, its header says ${lvolCount}` };
  }
  for (const lvol of lvols) {
    // Fields added within a format version default to "absent".
    lvol.savedProgress ??= null;
    lvol.externalParent ??= null;
    lvol.readThroughClusters ??= null;
    // Checkpoints written before sparse arrays hold dense ones.
    if ((lvol.clusterMap as unknown) instanceof Uint32Array) lvol.clusterMap = ClusterMap.fromDense(lvol.clusterMap as unknown as Uint32Array);
    if ((lvol.rangeChecksums as unknown) instanceof BigUint64Array) {
      lvol.rangeChecksums = ClusterChecksums.fromDense(lvol.rangeChecksums as unknown as BigUint64Array);
    }
  }
  return {
    kind: 'ok',
    value: { record: { ...rest, lvols: new Map(lvols.map((lvol) => [lvol.id, lvol])) }, seq: bytes.readBigUInt64LE(16) },
  };
}

// ---- journal records: the changes of one or more operations, appended and flushed ----

/** Ties journal records to one lvstore, so records left by an earlier lvstore on the device never replay. */
export function storeTagOf(lvstoreId: string): number {
  return Number(crc64(Buffer.from(lvstoreId, 'ascii')) & 0xffffffffn);
}

export function encodeRecord(seq: bigint, storeTag: number, changes: readonly MetadataChange[], blockBytes: number): Buffer {
  const payload = encodePayload(changes);
  const out = Buffer.alloc(roundUp(recordHeaderBytes + payload.length, blockBytes));
  out.writeUInt32LE(recordMagic, 0);
  out.writeUInt16LE(formatVersion, 4);
  out.writeBigUInt64LE(seq, 8);
  out.writeUInt32LE(payload.length, 16);
  out.writeUInt32LE(storeTag, 20);
  out.writeBigUInt64LE(crc64(payload), 24);
  out.writeBigUInt64LE(crc64(out.subarray(0, 32)), 32);
  payload.copy(out, recordHeaderBytes);
  return out;
}

/** Reads a record header; undefined where no valid record starts (the end of the journal). */
export function decodeRecordHeader(
  bytes: Buffer,
): { seq: bigint; storeTag: number; payloadBytes: number; payloadCrc: bigint } | undefined {
  if (bytes.length < recordHeaderBytes || bytes.readUInt32LE(0) !== recordMagic) return undefined;
  if (bytes.readUInt16LE(4) !== formatVersion) return undefined;
  if (bytes.readBigUInt64LE(32) !== crc64(bytes.subarray(0, 32))) return undefined;
  return {
    seq: bytes.readBigUInt64LE(8),
    storeTag: bytes.readUInt32LE(20),
    payloadBytes: bytes.readUInt32LE(16),
    payloadCrc: bytes.readBigUInt64LE(24),
  };
}
