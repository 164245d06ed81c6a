// Finds and loads an lvstore from a device: super block, checkpoint, then the journal's tail.
import type { BlockDevice } from '../device/blockDevice.ts';
import { StorageError } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { crc64 } from '../checksum/crc64.ts';
import {
  type SuperBlock,
  decodeCheckpoint,
  decodePayload,
  decodeRecordHeader,
  decodeSuperBlock,
  loopYielder,
  metadataLayout,
  recordHeaderBytes,
  roundUp,
  storeTagOf,
} from './format.ts';
import { JournalMetadataLog } from './journal.ts';
import { Lvstore } from './lvstore.ts';
import { type MetadataChange, applyChange } from './metadata.ts';

/** Damaged metadata: reported with what failed, never repaired into something else. */
export class DamagedLvstoreError extends StorageError {
  constructor(reason: string) {
    super('EIO', { wire: 'internal', detail: `damaged lvstore metadata: ${reason}` });
  }
}

function slotBytesFor(device: BlockDevice): number {
  return Math.max(4096, device.blockSizeBytes);
}

async function readAt(device: BlockDevice, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const buffer = Buffer.alloc(lengthBytes);
  await device.readInto(buffer, offsetBytes);
  return buffer;
}

/** The newest valid super block, undefined when the device holds no lvstore. */
async function newestSuperBlock(device: BlockDevice): Promise<{ superBlock: SuperBlock; slot: 0 | 1 } | undefined> {
  const slotBytes = slotBytesFor(device);
  if (device.sizeBytes < 2 * slotBytes) return undefined;
  const found: Array<{ superBlock: SuperBlock; slot: 0 | 1 }> = [];
  const problems: string[] = [];
  for (const slot of [0, 1] as const) {
    const decoded = decodeSuperBlock(await readAt(device, slot * slotBytes, slotBytes));
    if (decoded.kind === 'ok') found.push({ superBlock: decoded.value, slot });
    if (decoded.kind === 'damaged') problems.push(`slot ${slot}: ${decoded.reason}`);
  }
  if (found.length === 0) {
    if (problems.length > 0) throw new DamagedLvstoreError(problems.join('; '));
    return undefined;
  }
  // One damaged slot is what a crash during a super block write leaves; still worth a line.
  if (problems.length > 0) log('warn', 'one super block slot is unreadable; using the other', { problems });
  return found.sort((a, b) => (a.superBlock.generation > b.superBlock.generation ? -1 : 1))[0];
}

/** Loads the lvstore on `device`, or returns undefined when there is none. Throws DamagedLvstoreError. */
export async function openLvstore(device: BlockDevice, runtime: Runtime): Promise<Lvstore | undefined> {
  const newest = await newestSuperBlock(device);
  if (!newest) return undefined;
  const { superBlock, slot } = newest;
  if (superBlock.blockBytes !== device.blockSizeBytes) {
    throw new DamagedLvstoreError(`written with ${superBlock.blockBytes}-byte blocks, device has ${device.blockSizeBytes}`);
  }
  if (superBlock.clusterTotal * superBlock.clusterBytes > device.sizeBytes) {
    throw new DamagedLvstoreError(`device of ${device.sizeBytes} bytes is smaller than the lvstore's ${superBlock.clusterTotal} clusters (truncated?)`);
  }
  const layout = metadataLayout(superBlock.firstDataCluster * superBlock.clusterBytes, superBlock.blockBytes);
  const image = await readAt(device, layout.checkpointOffsets[superBlock.checkpointSlot], superBlock.checkpointLength);
  const checkpoint = await decodeCheckpoint(image);
  if (checkpoint.kind !== 'ok') throw new DamagedLvstoreError(checkpoint.kind === 'damaged' ? checkpoint.reason : 'checkpoint missing');
  if (crc64(image.subarray(0, 32)) !== superBlock.checkpointCrc || checkpoint.value.seq !== superBlock.checkpointSeq) {
    throw new DamagedLvstoreError('checkpoint does not match its super block');
  }
  const record = checkpoint.value.record;
  const storeTag = storeTagOf(superBlock.lvstoreId);
  const { lastSeq, tailBytes } = await replayJournal(device, layout.journalOffset, layout.journalBytes, checkpoint.value.seq, storeTag, (changes) => {
    for (const change of changes) applyChange(record, change);
  });
  if (record.clusterTotal * record.clusterBytes > device.sizeBytes) {
    throw new DamagedLvstoreError(`device of ${device.sizeBytes} bytes is smaller than the lvstore's ${record.clusterTotal} clusters (it was grown; truncated since?)`);
  }
  const log = new JournalMetadataLog(device, layout, () => record, { superBlock, superSlot: slot, lastSeq, tailBytes });
  try {
    return Lvstore.fromRecord(device, record, log, runtime);
  } catch (error) {
    throw new DamagedLvstoreError(error instanceof Error ? error.message : String(error));
  }
}

/**
 * Applies every journal record that follows the checkpoint, in sequence. The first record that
 * is missing, torn (CRC mismatch) or out of sequence ends the journal: it was never acknowledged.
 */
/** How much of the journal one read brings in at load. */
const journalReadWindowBytes = 1024 * 1024;

async function replayJournal(
  device: BlockDevice,
  journalOffset: number,
  journalBytes: number,
  checkpointSeq: bigint,
  storeTag: number,
  apply: (changes: MetadataChange[]) => void,
): Promise<{ lastSeq: bigint; tailBytes: number }> {
  const blockBytes = device.blockSizeBytes;
  const pause = loopYielder();
  // The journal is read sequentially in large windows, not a block per record: a restart after
  // many small changes costs a few reads, not one per record.
  let window: Buffer = Buffer.alloc(0);
  let windowStart = 0;
  const bytesAt = async (offsetBytes: number, lengthBytes: number): Promise<Buffer> => {
    if (offsetBytes < windowStart || offsetBytes + lengthBytes > windowStart + window.length) {
      const length = Math.min(journalBytes - offsetBytes, Math.max(lengthBytes, journalReadWindowBytes));
      window = await readAt(device, journalOffset + offsetBytes, length);
      windowStart = offsetBytes;
    }
    return window.subarray(offsetBytes - windowStart, offsetBytes - windowStart + lengthBytes);
  };
  let offset = 0;
  let expected = checkpointSeq + 1n;
  while (offset + recordHeaderBytes <= journalBytes) {
    const first = await bytesAt(offset, blockBytes);
    const header = decodeRecordHeader(first);
    if (!header || header.seq !== expected || header.storeTag !== storeTag) break;
    const recordBytes = roundUp(recordHeaderBytes + header.payloadBytes, blockBytes);
    if (offset + recordBytes > journalBytes) break;
    const whole = recordBytes === blockBytes ? first : await bytesAt(offset, recordBytes);
    const payload = whole.subarray(recordHeaderBytes, recordHeaderBytes + header.payloadBytes);
    if (crc64(payload) !== header.payloadCrc) break;
    try {
      apply(decodePayload(payload) as MetadataChange[]);
    } catch (error) {
      throw new DamagedLvstoreError(`journal record ${expected} does not apply: ${error instanceof Error ? error.message : String(error)}`);
    }
    offset += recordBytes;
    expected++;
    const turn = pause();
    if (turn) await turn;
  }
  return { lastSeq: expected - 1n, tailBytes: offset };
}
