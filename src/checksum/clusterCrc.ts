// One cluster's CRC for a checksum walk, computed off the event loop wherever the device allows.
//
// Native path (the addon is loaded and the device is a file that lends its descriptor through
// withFd): the read and the CRC both run on the addon's low-priority background threads; the
// event loop only receives the value. Otherwise
// the bytes are read through Node in pieces and CRC'd by the addon's thread pool (memory devices)
// or by the TypeScript/WASM fallback on the event loop. Either way the request waits in the
// device's background class, behind foreground I/O (SPEC §6.6).
import { availableParallelism } from 'node:os';
import { checksumChunkBytesMax } from '../constants.ts';
import type { BlockDevice } from '../device/blockDevice.ts';
import { IoAbortedError } from '../device/ioQueue.ts';
import { clusterBuffers } from './bufferPool.ts';
import { crc64, crc64Combine } from './crc64.ts';
import { type NativeCrc, nativeCrc, nativeCrcStatus } from './native.ts';

/** Which CRC path checksum walks use, for the start-up log line and node_get_stats. */
export function crcInfo(): { implementation: 'native' | 'fallback'; kernel: string; status: string; background?: unknown } {
  if (!nativeCrc) return { implementation: 'fallback', kernel: 'hash-wasm', status: nativeCrcStatus };
  return { implementation: 'native', kernel: nativeCrc.kernel, status: nativeCrcStatus, background: nativeCrc.backgroundStats() };
}

/**
 * Starts the addon's background threads: one per core, each at SCHED_IDLE, so a walk's reads
 * (its current cluster and its read-ahead) use the CPU time the event loop and the clients leave
 * over, and only that (see the README's measurements); while clients are active the scheduler
 * spaces checksum reads out, so then about one runs at a time. `LVNODE_BACKGROUND_THREADS` and
 * `LVNODE_BACKGROUND_POLICY` (idle | nice | normal) override, for measuring the alternatives.
 */
export function configureBackgroundThreads(): { threads: number; policy: string } | { threads: 0; policy: 'none' } {
  if (!nativeCrc) return { threads: 0, policy: 'none' };
  const threads = Number(process.env.LVNODE_BACKGROUND_THREADS ?? availableParallelism());
  const policy = process.env.LVNODE_BACKGROUND_POLICY ?? 'idle';
  if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new Error(`LVNODE_BACKGROUND_THREADS must be 1..64, got ${threads}`);
  if (policy !== 'idle' && policy !== 'nice' && policy !== 'normal') throw new Error(`LVNODE_BACKGROUND_POLICY must be idle, nice or normal`);
  return nativeCrc.configureBackground({ threads, policy });
}

function runBackground<T>(device: BlockDevice, work: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (device.runBackground) return device.runBackground(work, signal);
  if (signal?.aborted) return Promise.reject(new IoAbortedError());
  return work();
}

/**
 * A job on the addon's threads; one still waiting in its queue is dropped when `signal` fires, and
 * one already running ends at its next piece when `halt` fires (its callback then says ECANCELED).
 */
function nativeJob(
  native: NativeCrc,
  submit: (done: (error: NodeJS.ErrnoException | null, crc: bigint) => void) => number,
  signal?: AbortSignal,
  halt?: AbortSignal,
): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      if (native.cancel(jobId)) reject(new IoAbortedError());
    };
    const onHalt = (): void => {
      if (native.cancel(jobId)) reject(new IoAbortedError());
      else native.halt?.(jobId);
    };
    const jobId = submit((error, crc) => {
      signal?.removeEventListener('abort', onAbort);
      halt?.removeEventListener('abort', onHalt);
      if (error?.code === 'ECANCELED' && halt?.aborted) reject(new IoAbortedError());
      else if (error) reject(error);
      else resolve(crc);
    });
    if (halt?.aborted) return onHalt();
    signal?.addEventListener('abort', onAbort, { once: true });
    halt?.addEventListener('abort', onHalt, { once: true });
  });
}

/**
 * CRC-64/GO-ISO of `lengthBytes` at `offsetBytes` of `device`. Rejects with IoAbortedError when
 * `signal` fired before the read began (nothing was read); once begun, the range is finished,
 * unless `halt` fires: then it ends at its next piece, also with IoAbortedError (a walk's
 * read-ahead, which nobody will record once the walk stops).
 */
export async function crcDeviceRange(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
  signal?: AbortSignal,
  halt?: AbortSignal,
): Promise<bigint> {
  const native = nativeCrc;
  // The addon's threads pread the descriptor after this call returns: borrow it (withFd), so the
  // device's close waits for the job and a job that would start after close is refused, rather
  // than read a closed descriptor or another file that got its number.
  const borrowFd = device.withFd?.bind(device);
  if (native && borrowFd) {
    const readAndCrc = (fd: number) => nativeJob(native, (done) => native.submitFileCrc(fd, offsetBytes, lengthBytes, done), signal, halt);
    return runBackground(device, () => borrowFd(readAndCrc), signal);
  }
  const buffer = clusterBuffers.acquire(Math.min(lengthBytes, checksumChunkBytesMax));
  try {
    let crc = 0n;
    for (let done = 0; done < lengthBytes; done += buffer.length) {
      if (done > 0 && halt?.aborted) throw new IoAbortedError();
      const piece = buffer.subarray(0, Math.min(buffer.length, lengthBytes - done));
      // Only the first piece may be called off: a range that began is read to its end.
      const pieceSignal = done === 0 ? signal : undefined;
      const at = offsetBytes + done;
      if (device.readIntoBackground) await device.readIntoBackground(piece, at, pieceSignal);
      else await runBackground(device, () => device.readInto(piece, at), pieceSignal);
      const pieceCrc = native ? await nativeJob(native, (cb) => native.submitBufferCrc(piece, cb)) : crc64(piece);
      crc = crc64Combine(crc, pieceCrc, piece.length);
    }
    return crc;
  } finally {
    clusterBuffers.release(buffer);
  }
}
