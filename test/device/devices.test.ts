// Block devices: FileDevice on a real temporary file, MemoryDevice, and SimulatedDevice's faults.
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { memoryFileInlineBytesMax, mibBytes } from '../../src/constants.ts';
import { addon } from '../../src/addon.ts';
import { readBytes, writeDurable } from '../../src/device/blockDevice.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import { fileLocksAvailable } from '../../src/device/fileLock.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { SimulatedDevice, SimulatedIoError } from '../../src/device/simulatedDevice.ts';

const blockBytes = 512;
type WriteDurableCall = (fd: number, data: Uint8Array, position: number, done: (error: unknown) => void) => void;
const nativeWriteDurable = (addon?.writeDurable as WriteDurableCall | undefined) ?? null;

function pattern(lengthBytes: number, seed: number): Buffer {
  const out = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) out[index] = (index * 31 + seed * 17 + (index >> 9)) & 0xff;
  return out;
}

describe('FileDevice', () => {
  let directory = '';
  const opened: FileDevice[] = [];

  beforeEach(async () => {
    directory = await mkdtemp(join(tmpdir(), 'lvnode-device-'));
  });

  afterEach(async () => {
    for (const device of opened.splice(0)) await device.close().catch(() => undefined);
    await rm(directory, { recursive: true, force: true });
  });

  async function openDevice(path: string, options: { readOnly?: boolean } = {}): Promise<FileDevice> {
    const device = await FileDevice.open(path, blockBytes, options);
    opened.push(device);
    return device;
  }

  it('creates a sparse file that takes (almost) no disk space until written', async () => {
    // Goal: the default 1 GiB disk costs nothing up front (SPEC §1).
    const path = join(directory, 'disk.img');
    await FileDevice.createSparse(path, 64 * mibBytes);
    const info = await stat(path);
    expect(info.size).toBe(64 * mibBytes);
    expect(info.blocks * 512).toBeLessThan(mibBytes);
    // Creating again never shrinks or clears an existing, larger file.
    await writeFile(path, pattern(blockBytes, 1), { flag: 'r+' });
    await FileDevice.createSparse(path, 32 * mibBytes);
    expect((await stat(path)).size).toBe(64 * mibBytes);
    const device = await openDevice(path);
    expect((await readBytes(device, 0, blockBytes)).equals(pattern(blockBytes, 1))).toBe(true);
    // ...but extends a smaller one.
    await FileDevice.createSparse(path, 80 * mibBytes);
    expect((await stat(path)).size).toBe(80 * mibBytes);
  });

  it('reads back what it wrote, at any block-aligned offset, and zeros where nothing was written', async () => {
    // Goal: positional read/write round-trip on a real file.
    const path = join(directory, 'disk.img');
    await FileDevice.createSparse(path, 4 * mibBytes);
    const device = await openDevice(path);
    expect(device.kind).toBe('file');
    expect(device.sizeBytes).toBe(4 * mibBytes);
    expect(device.blockSizeBytes).toBe(blockBytes);
    const first = pattern(3 * blockBytes, 2);
    const second = pattern(mibBytes + blockBytes, 3);
    await device.write(blockBytes, first);
    await device.write(2 * mibBytes, second);
    expect((await readBytes(device, blockBytes, first.length)).equals(first)).toBe(true);
    expect((await readBytes(device, 2 * mibBytes, second.length)).equals(second)).toBe(true);
    expect((await readBytes(device, 0, blockBytes)).equals(Buffer.alloc(blockBytes))).toBe(true);
    const straddling = await readBytes(device, 0, 5 * blockBytes);
    expect(straddling.subarray(blockBytes, 4 * blockBytes).equals(first)).toBe(true);
    expect(straddling.subarray(4 * blockBytes).equals(Buffer.alloc(blockBytes))).toBe(true);
    await device.flush();
    // Plain file I/O on the same file sees the bytes: they reached the file, not a cache of ours.
    const onDisk = await readFile(path);
    expect(onDisk.subarray(2 * mibBytes, 2 * mibBytes + second.length).equals(second)).toBe(true);
  });

  it('holds an exclusive lock on its file: a second device on it is refused, naming the holder, until the first closes', async () => {
    // Goal: two nodes (or two bdevs) never write one file (SPEC §9).
    const path = join(directory, 'disk.img');
    await FileDevice.createSparse(path, mibBytes);
    const first = await openDevice(path);
    expect(first.locked).toBe(fileLocksAvailable);
    if (fileLocksAvailable) {
      await expect(FileDevice.open(path, blockBytes)).rejects.toThrow(/locked by this node \(pid \d+\)/);
      await first.close();
      const second = await FileDevice.open(path, blockBytes);
      expect(second.locked).toBe(true);
      await second.close();
    }
  });

  it('discards a range to zeros, and the whole device at once, keeping its size', async () => {
    // Goal: unmap/write_zeroes semantics: discarded ranges read zeros, the rest is untouched.
    const path = join(directory, 'disk.img');
    await FileDevice.createSparse(path, 4 * mibBytes);
    const device = await openDevice(path);
    const data = pattern(3 * mibBytes, 4);
    await device.write(0, data);
    await device.discard(blockBytes, mibBytes + 2 * blockBytes); // spans a zero-chunk boundary
    const after = await readBytes(device, 0, 3 * mibBytes);
    expect(after.subarray(0, blockBytes).equals(data.subarray(0, blockBytes))).toBe(true);
    expect(after.subarray(blockBytes, mibBytes + 3 * blockBytes).equals(Buffer.alloc(mibBytes + 2 * blockBytes))).toBe(true);
    expect(after.subarray(mibBytes + 3 * blockBytes).equals(data.subarray(mibBytes + 3 * blockBytes))).toBe(true);

    await device.discard(0, device.sizeBytes);
    expect((await stat(path)).size).toBe(4 * mibBytes);
    expect((await readBytes(device, 0, 3 * mibBytes)).equals(Buffer.alloc(3 * mibBytes))).toBe(true);
    // Still writable afterwards.
    await device.write(mibBytes, pattern(blockBytes, 5));
    expect((await readBytes(device, mibBytes, blockBytes)).equals(pattern(blockBytes, 5))).toBe(true);
  });

  it('refuses a missing file and a directory', async () => {
    // Goal: bdev_aio_create on a bad path fails cleanly instead of creating something.
    const missing = join(directory, 'missing.img');
    await expect(FileDevice.open(missing, blockBytes)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(missing)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(FileDevice.open(directory, blockBytes)).rejects.toThrow('not a regular file');
  });

  it('rounds an odd file size down to whole blocks and refuses I/O outside it', async () => {
    // Goal: the device never exposes a partial trailing block.
    const path = join(directory, 'odd.img');
    await writeFile(path, Buffer.alloc(3 * 4096 + 100));
    const device = await FileDevice.open(path, 4096);
    opened.push(device);
    expect(device.sizeBytes).toBe(3 * 4096);
    await expect(device.readInto(Buffer.alloc(4096), 3 * 4096)).rejects.toThrow('past the end');
    await expect(device.write(100, Buffer.alloc(4096))).rejects.toThrow('not block aligned');
  });

  it('writes durably in one request: the bytes read back, also from the file; refused outside the device, on a read-only file and after close', async () => {
    // Goal: the journal's write + flush as one call (one pool trip with the addon) keeps what write and flush promise.
    const path = join(directory, 'durable.img');
    await FileDevice.createSparse(path, mibBytes);
    const device = await openDevice(path);
    const data = pattern(3 * blockBytes, 8);
    await device.writeDurable(4 * blockBytes, data);
    expect((await readBytes(device, 4 * blockBytes, data.length)).equals(data)).toBe(true);
    expect((await readFile(path)).subarray(4 * blockBytes, 7 * blockBytes).equals(data)).toBe(true);
    await expect(device.writeDurable(mibBytes, data)).rejects.toThrow('past the end');
    await expect(device.writeDurable(100, data)).rejects.toThrow('not block aligned');
    const readOnlyPath = join(directory, 'durable-ro.img');
    await FileDevice.createSparse(readOnlyPath, mibBytes);
    const readOnly = await openDevice(readOnlyPath, { readOnly: true });
    await expect(readOnly.writeDurable(0, pattern(blockBytes, 9))).rejects.toMatchObject({ code: 'EBADF' });
    await device.close();
    await expect(device.writeDurable(0, data)).rejects.toMatchObject({ code: 'EBADF' });
  });

  it.skipIf(!nativeWriteDurable)('native writeDurable reports a failed write as a Node-style error (code, errno, syscall)', async () => {
    // Goal: the addon's errors map like fs errors (fromDeviceError reads .code).
    const error = await new Promise<unknown>((resolve) => nativeWriteDurable!(1_000_000, Buffer.alloc(512), 0, resolve));
    expect(error).toMatchObject({ code: 'EBADF', errno: -9, syscall: 'write' });
    expect(() => nativeWriteDurable!(-1, Buffer.alloc(512), 0, () => {})).toThrow('fd');
    expect(() => nativeWriteDurable!(0, 'text' as unknown as Buffer, 0, () => {})).toThrow('Uint8Array');
  });

  it('refuses writes through a read-only handle', async () => {
    // Goal: a read-only aio bdev cannot change its file.
    const path = join(directory, 'ro.img');
    await FileDevice.createSparse(path, mibBytes);
    const device = await openDevice(path, { readOnly: true });
    await expect(device.write(0, pattern(blockBytes, 6))).rejects.toThrow();
    expect((await readBytes(device, 0, blockBytes)).equals(Buffer.alloc(blockBytes))).toBe(true);
  });
});

describe('writeDurable on a device without its own', () => {
  it('writes, then flushes, in that order, and fails if the write fails without flushing', async () => {
    // Goal: every device can take a journal append; the fallback is exactly the pair it replaces.
    const calls: string[] = [];
    const device = new MemoryDevice(mibBytes, blockBytes);
    const write = device.write.bind(device);
    device.write = async (offset, data) => {
      calls.push('write');
      await write(offset, data);
    };
    device.flush = async () => {
      calls.push('flush');
    };
    await writeDurable(device, 0, pattern(blockBytes, 10));
    expect(calls).toEqual(['write', 'flush']);
    expect((await readBytes(device, 0, blockBytes)).equals(pattern(blockBytes, 10))).toBe(true);
    calls.length = 0;
    await expect(writeDurable(device, 3, pattern(blockBytes, 10))).rejects.toThrow('not block aligned');
    expect(calls).toEqual(['write']);
  });
});

describe('MemoryDevice', () => {
  it('stores writes across its 1 MiB chunks and discards partial and whole chunks to zeros', async () => {
    // Goal: the sparse chunk map behaves like one flat buffer.
    const device = new MemoryDevice(4 * mibBytes, blockBytes);
    const data = pattern(2 * mibBytes, 7);
    await device.write(mibBytes - blockBytes, data);
    expect((await readBytes(device, mibBytes - blockBytes, data.length)).equals(data)).toBe(true);
    expect((await readBytes(device, 0, blockBytes)).equals(Buffer.alloc(blockBytes))).toBe(true);
    await device.discard(mibBytes, mibBytes); // one whole chunk
    await device.discard(mibBytes - blockBytes, blockBytes); // part of another
    const after = await readBytes(device, mibBytes - blockBytes, data.length);
    expect(after.subarray(0, mibBytes + blockBytes).equals(Buffer.alloc(mibBytes + blockBytes))).toBe(true);
    expect(after.subarray(mibBytes + blockBytes).equals(data.subarray(mibBytes + blockBytes))).toBe(true);
  });

  it('answers a read at once across its chunks, up to the inline size; a simulated device never does', async () => {
    // Goal: readIntoNow gives readInto's bytes, declines (false, target untouched) above
    // memoryFileInlineBytesMax, and leaves fault injection and latency to the simulated device.
    const device = new MemoryDevice(4 * mibBytes, blockBytes);
    const data = pattern(64 * 1024, 3);
    await device.write(mibBytes - 32 * 1024, data);
    const target = Buffer.alloc(data.length + 2 * blockBytes, 0xaa);
    expect(device.readIntoNow(target, mibBytes - 32 * 1024 - blockBytes)).toBe(true);
    expect(target.equals(Buffer.concat([Buffer.alloc(blockBytes), data, Buffer.alloc(blockBytes)]))).toBe(true);
    const large = Buffer.alloc(memoryFileInlineBytesMax + blockBytes, 0xaa);
    expect(device.readIntoNow(large, 0)).toBe(false);
    expect(large.equals(Buffer.alloc(large.length, 0xaa))).toBe(true);
    expect(() => device.readIntoNow(Buffer.alloc(blockBytes), 4 * mibBytes)).toThrow('past the end');
    const simulated = new SimulatedDevice(mibBytes, blockBytes);
    expect(simulated.readIntoNow()).toBe(false);
    expect(simulated.counts.reads).toBe(0);
  });

  it('refuses misaligned and out-of-range I/O as a programmer error', async () => {
    // Goal: the device trusts callers to validate, and asserts when they did not.
    const device = new MemoryDevice(mibBytes, blockBytes);
    await expect(device.write(1, Buffer.alloc(blockBytes))).rejects.toThrow('not block aligned');
    await expect(device.readInto(Buffer.alloc(blockBytes), mibBytes)).rejects.toThrow('past the end');
  });
});

describe('SimulatedDevice', () => {
  it('fails exactly the Nth write and the Nth read with EIO', async () => {
    // Goal: fault injection is precise, so tests can hit one chosen I/O.
    const device = new SimulatedDevice(mibBytes, blockBytes);
    device.setFaults({ failWriteAt: 2, failReadAt: 1 });
    await device.write(0, pattern(blockBytes, 1));
    await expect(device.write(blockBytes, pattern(blockBytes, 2))).rejects.toBeInstanceOf(SimulatedIoError);
    await device.write(2 * blockBytes, pattern(blockBytes, 3));
    await expect(readBytes(device, 0, blockBytes)).rejects.toMatchObject({ code: 'EIO' });
    expect((await readBytes(device, 0, 3 * blockBytes)).equals(
      Buffer.concat([pattern(blockBytes, 1), Buffer.alloc(blockBytes), pattern(blockBytes, 3)]),
    )).toBe(true);
    expect(device.counts).toMatchObject({ writes: 3, reads: 2 });
  });

  it('holds I/O until released', async () => {
    // Goal: tests can keep an I/O in flight for as long as they need.
    const device = new SimulatedDevice(mibBytes, blockBytes);
    device.hold();
    let written = false;
    const write = device.write(0, pattern(blockBytes, 4)).then(() => {
      written = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(written).toBe(false);
    device.release();
    await write;
    expect((await readBytes(device, 0, blockBytes)).equals(pattern(blockBytes, 4))).toBe(true);
  });
});
