// Goal: a native checksum read holds its file device open until it finishes: close() waits for it, a read that
// would start after close began is refused cleanly, and no read ever CRCs another file that reused the descriptor.
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crcDeviceRange } from '../../src/checksum/clusterCrc.ts';
import { crc64, crc64Combine } from '../../src/checksum/crc64.ts';
import { nativeCrc } from '../../src/checksum/native.ts';
import type { BlockDevice } from '../../src/device/blockDevice.ts';
import { DeviceClosedError, FileDevice } from '../../src/device/fileDevice.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';
import { StorageError } from '../../src/errors.ts';

const mib = 1024 * 1024;
const blockBytes = 512;
// Large enough that a read from the page cache takes tens of milliseconds, so close() lands mid-read.
const fileBytes = 256 * mib;
const tailBytes = mib;

/** A sparse file of `fileBytes`: zeros, then `tail` at its end (so two such files differ only there). */
function writeSparseWithTail(path: string, tail: Buffer): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, fileBytes);
    writeSync(fd, tail, 0, tail.length, fileBytes - tail.length);
  } finally {
    closeSync(fd);
  }
}

/**
 * CRC of the last `lengthBytes` of such a file (zeros, then `tail`), computed in TypeScript from the
 * bytes we wrote: the oracle is not the reader under test.
 */
function expectedCrc(tail: Buffer, lengthBytes = fileBytes): bigint {
  const zeroPieceCrc = crc64(Buffer.alloc(mib));
  let crc = 0n;
  for (let done = 0; done < lengthBytes - tail.length; done += mib) crc = crc64Combine(crc, zeroPieceCrc, mib);
  return crc64Combine(crc, crc64(tail), tail.length);
}

type Outcome = { crc: bigint } | { error: unknown };

const settle = (promise: Promise<bigint>): Promise<Outcome> =>
  promise.then(
    (crc) => ({ crc }),
    (error: unknown) => ({ error }),
  );

/** Resolves once the addon's threads have the job (queued or running), polling between event-loop turns. */
async function untilJobTaken(): Promise<void> {
  for (let turn = 0; turn < 100_000; turn++) {
    if (nativeCrc!.backgroundStats().running > 0) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error('the checksum job never started');
}

describe('checksum reads through Node (no addon, or a device that lends no descriptor) and FileDevice.close', () => {
  it('a walk racing close either finishes with its own file\'s CRC or is refused between pieces, never reads another file', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'lvnode-fd-lifetime-node-'));
    try {
      const rangeBytes = 32 * mib;
      const tailA = randomBytes(tailBytes);
      const tailB = randomBytes(tailBytes);
      writeSparseWithTail(join(directory, 'a.img'), tailA);
      writeSparseWithTail(join(directory, 'b.img'), tailB);
      const file = await FileDevice.open(join(directory, 'a.img'), blockBytes, { readOnly: true });
      // Only the BlockDevice basics: no fd, no withFd, so the walk reads piece by piece through readInto.
      const plain: BlockDevice = {
        kind: 'file',
        sizeBytes: file.sizeBytes,
        blockSizeBytes: file.blockSizeBytes,
        readInto: (target, offsetBytes) => file.readInto(target, offsetBytes),
        write: (offsetBytes, data) => file.write(offsetBytes, data),
        discard: (offsetBytes, lengthBytes) => file.discard(offsetBytes, lengthBytes),
        flush: () => file.flush(),
        close: () => file.close(),
      };
      const read = settle(crcDeviceRange(plain, fileBytes - rangeBytes, rangeBytes));
      await new Promise((resolve) => setImmediate(resolve));
      await plain.close();
      const otherFd = openSync(join(directory, 'b.img'), 'r');
      try {
        const outcome = await read;
        if ('crc' in outcome) {
          expect(outcome.crc).not.toBe(expectedCrc(tailB, rangeBytes));
          expect(outcome.crc).toBe(expectedCrc(tailA, rangeBytes));
        } else {
          expect(outcome.error).toBeInstanceOf(DeviceClosedError);
        }
      } finally {
        closeSync(otherFd);
      }
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!nativeCrc)('native checksum reads and FileDevice.close', () => {
  let directory = '';
  let pathA = '';
  let pathB = '';
  let crcA = 0n;
  let crcB = 0n;

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), 'lvnode-fd-lifetime-'));
    pathA = join(directory, 'a.img');
    pathB = join(directory, 'b.img');
    const tailA = randomBytes(tailBytes);
    const tailB = randomBytes(tailBytes);
    writeSparseWithTail(pathA, tailA);
    writeSparseWithTail(pathB, tailB);
    crcA = expectedCrc(tailA);
    crcB = expectedCrc(tailB);
    expect(crcA).not.toBe(crcB);
    // Threads at normal priority: SCHED_IDLE ones could starve on a busy machine and stretch the test.
    nativeCrc!.configureBackground({ threads: 2, policy: 'normal' });
    // Warm the page cache with both files (holes too), so each timed read is a steady tens of milliseconds.
    for (const path of [pathA, pathB]) {
      const device = await FileDevice.open(path, blockBytes, { readOnly: true });
      await crcDeviceRange(device, 0, fileBytes);
      await device.close();
    }
  });

  afterAll(async () => {
    nativeCrc?.configureBackground({ threads: 2, policy: 'idle' });
    await rm(directory, { recursive: true, force: true });
  });

  for (const wrapping of ['FileDevice', 'QueuedDevice'] as const) {
    it(`${wrapping}: close() during a read waits for it, and the read's CRC is its own file's, never that of a file opened on the freed descriptor`, async () => {
      for (let round = 0; round < 4; round++) {
        const file = await FileDevice.open(pathA, blockBytes, { readOnly: true });
        const device: BlockDevice = wrapping === 'FileDevice' ? file : new QueuedDevice(file);
        const fdNumber = file.fd;
        const order: string[] = [];
        const read = settle(crcDeviceRange(device, 0, fileBytes)).then((outcome) => {
          order.push('read settled');
          return outcome;
        });
        await untilJobTaken();
        await device.close();
        order.push('closed');
        // The lowest free descriptor: the device's own number, had close() freed it under the read.
        const otherFd = openSync(pathB, 'r');
        try {
          const outcome = await read;
          const context = `round ${round}: B opened on fd ${otherFd}, the device had ${fdNumber}; order ${order.join(' -> ')}`;
          if ('crc' in outcome) expect(outcome.crc, `${context}: CRC of B (${crcB}) means the read followed the reused fd`).not.toBe(crcB);
          expect(outcome, context).toEqual({ crc: crcA });
          expect(order, context).toEqual(['read settled', 'closed']);
        } finally {
          closeSync(otherFd);
        }
      }
    });
  }

  it('refuses a read asked for after close() began, before it touches the descriptor', async () => {
    const device = await FileDevice.open(pathA, blockBytes, { readOnly: true });
    const closing = device.close();
    const outcome = await settle(crcDeviceRange(device, 0, fileBytes));
    await closing;
    expect('error' in outcome).toBe(true);
    const error = (outcome as { error: unknown }).error;
    expect(error).toBeInstanceOf(StorageError);
    expect(error).toMatchObject({ code: 'EBADF' });
    expect(String((error as Error).message)).toMatch(/is closed/);
  });

  it('refuses a read that waited in the background queue while close() began, and close does not wait for it', async () => {
    const file = await FileDevice.open(pathA, blockBytes, { readOnly: true });
    const device = new QueuedDevice(file);
    // A foreground read in flight keeps the checksum read waiting in the background class.
    let releaseForeground = (): void => undefined;
    const foreground = device.queue.run('foreground', () => new Promise<void>((resolve) => (releaseForeground = resolve)));
    const read = settle(crcDeviceRange(device, 0, fileBytes));
    await new Promise((resolve) => setImmediate(resolve));
    expect(device.queue.stats().background_waiting).toBe(1);
    await device.close();
    releaseForeground();
    await foreground;
    const outcome = await read;
    expect(outcome).toMatchObject({ error: { code: 'EBADF' } });
    expect((outcome as { error: unknown }).error).toBeInstanceOf(StorageError);
  });
});
