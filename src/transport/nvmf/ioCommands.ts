// NVM I/O commands on a namespace's bdev (NVMe base 1.4 §6): Read, Write, Flush, Write Zeroes and
// Dataset Management (deallocate → unmap). Reads and writes are foreground requests of the bdev's
// device queue (a checksum's background reads wait behind them, as for NBD).
import type { NvmfNamespace, NvmfSubsystem } from '../../actors/nvmfTarget.ts';
import { isStorageError } from '../../errors.ts';
import type { BufferPool } from '../nbd/bufferPool.ts';
import { type NvmeCommand, type NvmeCompletion, cdw, failed, invalidField, invalidOpcode, success } from './command.ts';
import { genericStatus, ioOpcode, mediaStatus, readU64, sct } from './nvmeSpec.ts';

const dsmRangeBytes = 16;
const dsmRangesMax = 256;

export async function executeIo(subsystem: NvmfSubsystem, command: NvmeCommand, buffers: BufferPool): Promise<NvmeCompletion> {
  const namespace = subsystem.namespaces.get(command.nsid);
  if (!namespace) {
    return command.opcode === ioOpcode.flush && command.nsid === 0xffffffff ? flushAll(subsystem) : failed(sct.generic, genericStatus.invalidNamespaceOrFormat);
  }
  try {
    switch (command.opcode) {
      case ioOpcode.read:
        return await read(namespace, command, buffers);
      case ioOpcode.write:
        return await write(namespace, command);
      case ioOpcode.flush:
        await namespace.bdev.flush();
        return success;
      case ioOpcode.writeZeroes:
        return await writeZeroes(namespace, command);
      case ioOpcode.datasetManagement:
        return await datasetManagement(namespace, command);
      default:
        return invalidOpcode;
    }
  } catch (error) {
    return bdevFailure(error, command.opcode === ioOpcode.read);
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

async function read(namespace: NvmfNamespace, command: NvmeCommand, buffers: BufferPool): Promise<NvmeCompletion> {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return range;
  if (range.lengthBytes !== command.transferBytes) return failed(sct.generic, genericStatus.dataSglLengthInvalid);
  // Read behind the pool's headroom, where the queue pair writes the C2HData header.
  const pooled = buffers.acquire(range.lengthBytes);
  const data = pooled.subarray(buffers.headroomBytes, buffers.headroomBytes + range.lengthBytes);
  try {
    await namespace.bdev.readInto(range.offsetBytes, data);
  } catch (error) {
    buffers.release(pooled);
    throw error;
  }
  return { status: 0, data, frame: pooled, releaseData: () => buffers.release(pooled) };
}

async function write(namespace: NvmfNamespace, command: NvmeCommand): Promise<NvmeCompletion> {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return range;
  if (range.lengthBytes !== command.transferBytes || command.data === undefined) return failed(sct.generic, genericStatus.dataSglLengthInvalid);
  if (namespace.bdev.readOnly()) return failed(sct.generic, genericStatus.namespaceIsWriteProtected);
  await namespace.bdev.write(range.offsetBytes, command.data);
  return success;
}

async function writeZeroes(namespace: NvmfNamespace, command: NvmeCommand): Promise<NvmeCompletion> {
  const range = commandRange(namespace, command);
  if (isCompletion(range)) return range;
  if (namespace.bdev.readOnly()) return failed(sct.generic, genericStatus.namespaceIsWriteProtected);
  await namespace.bdev.writeZeroes(range.offsetBytes, range.lengthBytes);
  return success;
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

