// Goal: clearing a range of a file costs no data writes (native zeroRange: hole punch, zero-range, BLKZEROOUT),
// reads back exactly like the zero-writing fallback, and refuses bad requests clearly.
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readBytes } from '../../src/device/blockDevice.ts';
import { DeviceClosedError, FileDevice, type ZeroRangeCall, type ZeroRangeMethod, nativeZeroRange } from '../../src/device/fileDevice.ts';
import { StorageError } from '../../src/errors.ts';

const mib = 1024 * 1024;
const blockBytes = 512;
// The bytes st_blocks counts in (always 512 on Linux, whatever the file system's block size).
const statBlockBytes = 512;

function pattern(lengthBytes: number, seed: number): Buffer {
  const out = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) out[index] = ((index * 31 + seed * 17 + (index >> 9)) & 0xff) | 1; // never 0
  return out;
}

/** The expected file: `base` with each range set to zeros (the model, independent of any device code). */
function zeroedModel(base: Buffer, ranges: ReadonlyArray<readonly [number, number]>): Buffer {
  const model = Buffer.from(base);
  for (const [offset, length] of ranges) model.fill(0, offset, offset + length);
  return model;
}

type ZeroOutcome = { error: NodeJS.ErrnoException | null; method: ZeroRangeMethod | null };

function zeroRange(fd: number, offsetBytes: number, lengthBytes: number): Promise<ZeroOutcome> {
  return new Promise((resolve) => nativeZeroRange!(fd, offsetBytes, lengthBytes, (error, method) => resolve({ error, method })));
}

let directory = '';
beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), 'lvnode-zero-'));
});
afterEach(async () => {
  await rm(directory, { recursive: true, force: true });
});

describe.skipIf(!nativeZeroRange)('native zeroRange', () => {
  it('punches a hole: the range reads zeros, the bytes around it are intact, the size stays and its blocks are freed', async () => {
    const path = join(directory, 'file.img');
    const base = pattern(8 * mib, 1);
    await writeFile(path, base);
    const fd = openSync(path, 'r+');
    try {
      const blocksBefore = fstatSync(fd).blocks;
      // Unaligned on purpose: the file system zeroes the partial blocks at both ends itself.
      const range = [mib + 1000, 4 * mib + 24] as const;
      expect(await zeroRange(fd, ...range)).toEqual({ error: null, method: 'punch-hole' });
      const after = fstatSync(fd);
      expect(after.size).toBe(base.length);
      // At least the whole 4 KiB blocks inside the range are given back.
      expect(blocksBefore - after.blocks).toBeGreaterThanOrEqual((4 * mib - 8192) / statBlockBytes);
      expect(readFileSync(path).equals(zeroedModel(base, [range]))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('with keepAllocated, zeroes by ZERO_RANGE: the range reads zeros and keeps its blocks', async () => {
    const path = join(directory, 'file.img');
    const base = pattern(8 * mib, 10);
    await writeFile(path, base);
    const fd = openSync(path, 'r+');
    try {
      const blocksBefore = fstatSync(fd).blocks;
      const outcome = await new Promise<ZeroOutcome>((resolve) => nativeZeroRange!(fd, mib, 4 * mib, (error, method) => resolve({ error, method }), true));
      if (outcome.error?.code === 'ENOTSUP') return; // a file system without ZERO_RANGE (tmpfs): nothing more to see
      expect(outcome).toEqual({ error: null, method: 'zero-range' });
      expect(fstatSync(fd).blocks).toBe(blocksBefore);
      expect(readFileSync(path).equals(zeroedModel(base, [[mib, 4 * mib]]))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('refuses bad arguments at the call: TypeError for wrong types, RangeError for negative, fractional, empty or overflowing ranges', () => {
    const done = (): void => undefined;
    const call = nativeZeroRange as unknown as (...args: unknown[]) => void;
    expect(() => call('3', 0, 512, done)).toThrow(TypeError);
    expect(() => call(3, 0, 512)).toThrow(TypeError);
    expect(() => call(3, 0, 512, 'not a function')).toThrow(/done must be a function/);
    expect(() => call(3, '0', 512, done)).toThrow(/offsetBytes must be a number/);
    expect(() => call(-1, 0, 512, done)).toThrow(RangeError);
    expect(() => call(3, -512, 512, done)).toThrow(/offsetBytes must be an integer/);
    expect(() => call(3, 0.5, 512, done)).toThrow(RangeError);
    expect(() => call(3, 0, 0, done)).toThrow(/lengthBytes must be an integer in 1 \.\./);
    expect(() => call(3, 0, Number.NaN, done)).toThrow(RangeError);
    expect(() => call(3, 2 ** 52, 2 ** 52, done)).toThrow(RangeError);
    expect(() => call(3, 0, 512, done, 'yes')).toThrow(/keepAllocated must be a boolean/);
  });

  it('reports refusals like fs errors: a closed descriptor, a read-only one, and "not supported" for a pipe', async () => {
    const path = join(directory, 'file.img');
    await writeFile(path, pattern(mib, 2));
    const closedFd = openSync(path, 'r');
    closeSync(closedFd);
    expect((await zeroRange(closedFd, 0, 4096)).error).toMatchObject({ code: 'EBADF', errno: -9, syscall: 'fstat' });
    const readOnlyFd = openSync(path, 'r');
    try {
      const refused = await zeroRange(readOnlyFd, 0, 4096);
      expect(refused).toMatchObject({ error: { code: 'EBADF', syscall: 'fallocate' }, method: null });
      expect(refused.error?.message).toMatch(/^EBADF: /);
    } finally {
      closeSync(readOnlyFd);
    }
    expect(readFileSync(path).equals(pattern(mib, 2))).toBe(true);
    // /proc/self/fd of a pipe is not available portably; a FIFO is: neither file nor block device.
    const { execFileSync } = await import('node:child_process');
    const fifo = join(directory, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const fifoFd = openSync(fifo, 'r+');
    try {
      expect((await zeroRange(fifoFd, 0, 4096)).error).toMatchObject({ code: 'ENOTSUP' });
    } finally {
      closeSync(fifoFd);
    }
  });

  // Overwrites the device: run with LVNODE_TEST_BLOCK_DEVICE=/dev/loopN on a scratch loop device.
  const blockDevicePath = process.env.LVNODE_TEST_BLOCK_DEVICE;
  it.skipIf(!blockDevicePath)('zeroes a block device range with BLKZEROOUT and refuses ranges off 512-byte sectors', async () => {
    const fd = openSync(blockDevicePath!, 'r+');
    try {
      const base = pattern(4 * mib, 3);
      writeSync(fd, base, 0, base.length, 0);
      expect(await zeroRange(fd, mib, 2 * mib)).toEqual({ error: null, method: 'blkzeroout' });
      const after = Buffer.alloc(base.length);
      readSync(fd, after, 0, after.length, 0);
      expect(after.equals(zeroedModel(base, [[mib, 2 * mib]]))).toBe(true);
      expect((await zeroRange(fd, 100, 512)).error).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(BLKZEROOUT)' });
    } finally {
      closeSync(fd);
    }
  });
});

describe('FileDevice.discard', () => {
  const opened: FileDevice[] = [];
  afterEach(async () => {
    for (const device of opened.splice(0)) await device.close();
  });

  async function deviceWith(base: Buffer, name: string, options: { zeroRange?: ZeroRangeCall | null } = {}): Promise<FileDevice> {
    const path = join(directory, name);
    await writeFile(path, base);
    const device = await FileDevice.open(path, blockBytes, options);
    opened.push(device);
    return device;
  }

  // Ranges inside a cluster, across 1 MiB zero-chunk boundaries, at both ends, and already-zero ones.
  const ranges = [
    [blockBytes, 3 * blockBytes],
    [mib - blockBytes, mib + 2 * blockBytes],
    [4 * mib, 4 * mib],
    [0, blockBytes],
    [12 * mib - 4096, 4096],
    [4 * mib + blockBytes, blockBytes],
  ] as const;

  it.skipIf(!nativeZeroRange)('with the addon, discarded ranges read zeros, the rest is untouched, blocks are given back and the size stays', async () => {
    const base = pattern(12 * mib, 4);
    const device = await deviceWith(base, 'native.img', { zeroRange: nativeZeroRange });
    expect(device.zeroing).toBe('native');
    const path = join(directory, 'native.img');
    const blocksBefore = (await stat(path)).blocks;
    for (const [offset, length] of ranges) await device.discard(offset, length);
    await device.flush();
    const model = zeroedModel(base, ranges);
    expect((await readBytes(device, 0, base.length)).equals(model)).toBe(true);
    expect((await readFile(path)).equals(model)).toBe(true);
    // Writing zeros would have kept every block; the 4 MiB cluster alone frees 8192 sectors.
    expect(blocksBefore - (await stat(path)).blocks).toBeGreaterThanOrEqual((4 * mib) / statBlockBytes);
    // The whole device: a hole punch of everything (no truncate to zero and back), size kept.
    await device.discard(0, device.sizeBytes);
    const info = await stat(path);
    expect(info.size).toBe(base.length);
    expect(info.blocks).toBeLessThan(64);
    expect((await readFile(path)).equals(Buffer.alloc(base.length))).toBe(true);
  });

  it('without the addon (zeros written, as LVNODE_ZEROING=writes or no build) leaves exactly the bytes the addon does', async () => {
    const base = pattern(12 * mib, 5);
    const written = await deviceWith(base, 'writes.img', { zeroRange: null });
    expect(written.zeroing).toBe('writes');
    for (const [offset, length] of ranges) await written.discard(offset, length);
    const model = zeroedModel(base, ranges);
    expect((await readBytes(written, 0, base.length)).equals(model)).toBe(true);
    if (nativeZeroRange) {
      const native = await deviceWith(base, 'native.img', { zeroRange: nativeZeroRange });
      for (const [offset, length] of ranges) await native.discard(offset, length);
      expect((await readFile(join(directory, 'native.img'))).equals(await readFile(join(directory, 'writes.img')))).toBe(true);
    }
    await written.discard(0, written.sizeBytes);
    expect((await stat(join(directory, 'writes.img'))).size).toBe(base.length);
    expect((await readBytes(written, 0, base.length)).equals(Buffer.alloc(base.length))).toBe(true);
  });

  it('LVNODE_ZEROING=writes makes devices opened under it write zeros; by default they use the addon when it is built', async () => {
    const saved = process.env.LVNODE_ZEROING;
    try {
      process.env.LVNODE_ZEROING = 'writes';
      expect((await deviceWith(pattern(mib, 6), 'env.img')).zeroing).toBe('writes');
      delete process.env.LVNODE_ZEROING;
      expect((await deviceWith(pattern(mib, 6), 'default.img')).zeroing).toBe(nativeZeroRange ? 'native' : 'writes');
    } finally {
      if (saved === undefined) delete process.env.LVNODE_ZEROING;
      else process.env.LVNODE_ZEROING = saved;
    }
  });

  it('writes zeros where the file system refuses (EOPNOTSUPP: never asks again; EINVAL: asks again) and fails on a real error', async () => {
    const base = pattern(4 * mib, 7);
    const refusing = (code: string): { call: ZeroRangeCall; calls: () => number } => {
      let calls = 0;
      const call: ZeroRangeCall = (_fd, _offset, _length, done) => {
        calls++;
        setImmediate(() => done(Object.assign(new Error(`${code}: refused, fallocate`), { code, syscall: 'fallocate' }), null));
      };
      return { call, calls: () => calls };
    };
    const unsupported = refusing('ENOTSUP');
    const first = await deviceWith(base, 'unsupported.img', { zeroRange: unsupported.call });
    await first.discard(mib, mib);
    await first.discard(3 * mib, blockBytes);
    expect(unsupported.calls()).toBe(1);
    expect(first.zeroing).toBe('writes');
    expect((await readBytes(first, 0, base.length)).equals(zeroedModel(base, [[mib, mib], [3 * mib, blockBytes]]))).toBe(true);

    const invalid = refusing('EINVAL');
    const second = await deviceWith(base, 'invalid.img', { zeroRange: invalid.call });
    await second.discard(mib, mib);
    await second.discard(0, second.sizeBytes);
    expect(invalid.calls()).toBe(2);
    expect(second.zeroing).toBe('native');
    expect((await readBytes(second, 0, base.length)).equals(Buffer.alloc(base.length))).toBe(true);

    const failing = refusing('EIO');
    const third = await deviceWith(base, 'eio.img', { zeroRange: failing.call });
    await expect(third.discard(mib, mib)).rejects.toMatchObject({ code: 'EIO' });
    // A failed discard is reported, not papered over with writes: the bytes are still there.
    expect((await readBytes(third, 0, base.length)).equals(base)).toBe(true);
  });

  it('refuses unaligned or out-of-range discards as a programmer error, and any discard after close', async () => {
    const device = await deviceWith(pattern(mib, 8), 'refuse.img');
    await expect(device.discard(100, blockBytes)).rejects.toThrow('not block aligned');
    await expect(device.discard(0, blockBytes + 1)).rejects.toThrow('not block aligned');
    await expect(device.discard(mib - blockBytes, 2 * blockBytes)).rejects.toThrow('past the end');
    await device.close();
    const refused = device.discard(0, blockBytes);
    await expect(refused).rejects.toBeInstanceOf(DeviceClosedError);
    await expect(refused).rejects.toBeInstanceOf(StorageError);
    await expect(refused).rejects.toMatchObject({ code: 'EBADF' });
    expect((await readFile(join(directory, 'refuse.img'))).equals(pattern(mib, 8))).toBe(true);
  });

  it('close() waits for a discard in flight', async () => {
    // A zeroRange that takes 30 ms, then zeroes for real: close must not release the descriptor under it.
    let finished = false;
    const slow: ZeroRangeCall = (fd, offset, length, done) => {
      setTimeout(() => {
        if (nativeZeroRange) nativeZeroRange(fd, offset, length, (error, method) => ((finished = true), done(error, method)));
        else ((finished = true), done(Object.assign(new Error('ENOTSUP'), { code: 'ENOTSUP' }), null));
      }, 30);
    };
    const base = pattern(2 * mib, 9);
    const path = join(directory, 'slow.img');
    await writeFile(path, base);
    const device = await FileDevice.open(path, blockBytes, { zeroRange: slow });
    const discard = device.discard(0, mib);
    await device.close();
    expect(finished).toBe(true);
    await discard;
    expect((await readFile(path)).equals(zeroedModel(base, [[0, mib]]))).toBe(true);
  });
});
