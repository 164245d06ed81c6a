// NVM I/O commands on a namespace's bdev (NVMe base 1.4 §6): Read, Write, Flush, Write Zeroes and
// Dataset Management (deallocate → unmap). Reads and writes are foreground requests of the bdev's
// device queue (a checksum's background reads wait behind them, as for NBD).
import type { NvmfNamespace, NvmfSubsystem } from '../../actors/nvmfTarget.ts';
import { isStorageError } from '../../errors.ts';
import type { BufferPool } from '../nbd/bufferPool.ts';
import { type NvmeCommand, type NvmeCompletion, cdw, completion, failed, invalidField, invalidOpcode, success } from './command.ts';
import { genericStatus, ioOpcode, mediaStatus, readU64, sct } from './nvmeSpec.ts';

const dsmRangeBytes = 16;
const dsmRangesMax = 256;

/** Where a command's completion goes: called once, synchronously for a command refused up front. */
export type IoDone = (completion: NvmeCompletion) => void;

/**
 * Runs one I/O command and hands its completion to `done`. Not async and no promise of its own: a
 * read or write waits on the bdev's promise only, as each promise hop costs at 4 KiB; a read the
 * bdev answers at once (readIntoNow) completes before this returns.
 */
export function executeIo(subsystem: NvmfSubsystem, command: NvmeCommand, buffers: BufferPool, done: IoDone): void {
  const namespace = subsystem.namespaces.get(command.nsid);
  if (!namespace) {
    if (command.opcode === ioOpcode.flush && command.nsid === 0xffffffff) void flushAll(subsystem).then(done);
    else done(failed(sct.generic, genericStatus.invalidNamespaceOrFormat));
    return;
  }
  switch (command.opcode) {
    case ioOpcode.read:
      return read(namespace, command, buffers, done);
    case ioOpcode.write:
      return write(namespace, command, done);
    case ioOpcode.flush:
      return answer(() => namespace.bdev.flush(), false, done);
    case ioOpcode.writeZeroes:
      return writeZeroes(namespace, command, done);
    case ioOpcode.datasetManagement:
      return answer(() => datasetManagement(namespace, command), false, done);
    default:
      return done(invalidOpcode);
  }
}

/**
 * Runs `run` and answers `done` with its completion once it settles: success, or the failure as
 * an NVMe status (a synchronous throw, such as a range the bdev checks first, the same way).
 */
function answer(run: () => Promise<void | NvmeCompletion>, reading: boolean, done: IoDone): void {
  started(run).then(
    (completion) => done(completion ?? success),
    (error: unknown) => done(bdevFailure(error, reading)),
  );
}

function started<T>(run: () => Promise<T>): Promise<T> {
  try {
    return run();
  } catch (error) {
    return Promise.reject(error);
  }
}

async function flushAll(subsystem: NvmfSubsystem): Promise<NvmeCompletion> {
  try {
    await Promise.all([...subsystem.namespaces.values()].map((namespace) => namespace.bdev.flush()));
    return success;
  } catch (error) {
    return bdevFailure(error, false);
  }
}

/** A byte range of the namespace from an SLBA and a block count, or a failed completion. */
function blockRange(namespace: NvmfNamespace, startLba: number, blocks: number): { offsetBytes: number; lengthBytes: number } | NvmeCompletion {
  const blockBytes = namespace.bdev.blockSizeBytes;
  const totalBlocks = Math.floor(namespace.bdev.sizeBytes() / blockBytes);
  if (!(startLba + blocks <= totalBlocks)) return failed(sct.generic, genericStatus.lbaOutOfRange);
  return { offsetBytes: startLba * blockBytes, lengthBytes: blocks * blockBytes };
}

function commandRange(namespace: NvmfNamespace, command: NvmeCommand) {
  return blockRange(namespace, readU64(command.sqe, 40), (cdw(command, 12) & 0xffff) + 1);
}

function isCompletion(value: object): value is NvmeCompletion {
  return 'status' in value;
}

function read(namespace: NvmfNamespace, command: NvmeCommand, buffers: BufferPool, done: IoDone): void {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return done(range);
  if (range.lengthBytes !== command.transferBytes) return done(failed(sct.generic, genericStatus.dataSglLengthInvalid));
  // Read behind the pool's headroom, where the queue pair writes the C2HData header.
  const pooled = buffers.acquire(range.lengthBytes);
  const data = pooled.subarray(buffers.headroomBytes, buffers.headroomBytes + range.lengthBytes);
  const bdev = namespace.bdev;
  // A bdev that has the bytes at once (a file in memory, RAM) answers in this turn, with no promise.
  if (bdev.readIntoNow !== undefined) {
    let now: boolean;
    try {
      now = bdev.readIntoNow(range.offsetBytes, data);
    } catch (error) {
      buffers.release(pooled);
      return done(bdevFailure(error, true));
    }
    if (now) return done(completion(0, 0, 0, data, pooled));
  }
  started(() => bdev.readInto(range.offsetBytes, data)).then(
    () => done(completion(0, 0, 0, data, pooled)),
    (error: unknown) => {
      buffers.release(pooled);
      done(bdevFailure(error, true));
    },
  );
}

function write(namespace: NvmfNamespace, command: NvmeCommand, done: IoDone): void {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return done(range);
  const data = command.data;
  if (range.lengthBytes !== command.transferBytes || data === undefined) return done(failed(sct.generic, genericStatus.dataSglLengthInvalid));
  if (namespace.bdev.readOnly()) return done(failed(sct.generic, genericStatus.namespaceIsWriteProtected));
  if (forceUnitAccess(command)) return answer(() => durably(namespace, () => namespace.bdev.write(range.offsetBytes, data)), false, done);
  answer(() => namespace.bdev.write(range.offsetBytes, data), false, done);
}

/**
 * FUA (CDW12 bit 30, Write and Write Zeroes): the controller reports a volatile write cache
 * (identify.ts, VWC), so a write completes once the bdev has it, durable only after a Flush —
 * except one with FUA, which completes only once it is on non-volatile media (NVMe base §6.15).
 */
function forceUnitAccess(command: NvmeCommand): boolean {
  return (cdw(command, 12) & (1 << 30)) !== 0;
}

async function durably(namespace: NvmfNamespace, work: () => Promise<void>): Promise<void> {
  await work();
  await namespace.bdev.flush();
}

function writeZeroes(namespace: NvmfNamespace, command: NvmeCommand, done: IoDone): void {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return done(range);
  if (namespace.bdev.readOnly()) return done(failed(sct.generic, genericStatus.namespaceIsWriteProtected));
  if (forceUnitAccess(command)) return answer(() => durably(namespace, () => namespace.bdev.writeZeroes(range.offsetBytes, range.lengthBytes)), false, done);
  answer(() => namespace.bdev.writeZeroes(range.offsetBytes, range.lengthBytes), false, done);
}

/** Dataset Management: deallocate (AD) unmaps each range; the other attributes are hints, ignored. */
async function datasetManagement(namespace: NvmfNamespace, command: NvmeCommand): Promise<NvmeCompletion> {
  const ranges = (cdw(command, 10) & 0xff) + 1;
  const deallocate = (cdw(command, 11) & 0x4) !== 0;
  if (ranges > dsmRangesMax || command.data === undefined || command.data.length < ranges * dsmRangeBytes) return invalidField;
  if (!deallocate) return success;
  if (namespace.bdev.readOnly()) return failed(sct.generic, genericStatus.namespaceIsWriteProtected);
  const checked: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  for (let index = 0; index < ranges; index++) {
    const at = index * dsmRangeBytes;
    const blocks = command.data.readUInt32LE(at + 4);
    if (blocks === 0) continue;
    const range = blockRange(namespace, readU64(command.data, at + 8), blocks);
    if (isCompletion(range)) return range;
    checked.push(range);
  }
  for (const range of checked) await namespace.bdev.unmap(range.offsetBytes, range.lengthBytes);
  return success;
}

/** A bdev's StorageError as an NVMe status: EPERM is write protection, ENOSPC capacity, EIO a media error. */
function bdevFailure(error: unknown, reading: boolean): NvmeCompletion {
  if (isStorageError(error)) {
    if (error.errno === 'EPERM') return failed(sct.generic, genericStatus.namespaceIsWriteProtected);
    if (error.errno === 'ENOSPC') return failed(sct.generic, 0x81); // Capacity Exceeded
    if (error.errno === 'EINVAL' || error.errno === 'EDOM') return failed(sct.generic, genericStatus.lbaOutOfRange);
    if (error.errno === 'EIO') return failed(sct.media, reading ? mediaStatus.unrecoveredReadError : mediaStatus.writeFault);
  }
  return failed(sct.generic, genericStatus.internalError);
}

