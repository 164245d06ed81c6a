// File reads and writes on the path this process chose (io_uring, or the thread pool with
// LVNODE_FILE_IO=threadpool: `npm run test:fallback` runs this file that way too), and inline for a
// file in memory (tmpfs, /dev/shm): data against a byte-array oracle, errors as Node's, and close
// with requests in flight, for a file in each place.
import { closeSync, constants as fsConstants, existsSync, fstatSync, openSync, readFileSync, readSync, statfsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { FileDevice } from '../../src/device/fileDevice.ts';
import { type FileIo, type FileIoDone, fileIo, fileIoInfo, inlineFileIo } from '../../src/device/fileIo.ts';
import { memoryFileInlineBytesMax } from '../../src/constants.ts';
import { seededRandom } from '../seededRandom.ts';

const blockBytes = 512;
const deviceBytes = 4 * 1024 * 1024;

function call(run: (done: FileIoDone) => void): Promise<number> {
  return new Promise((resolve, reject) => run((error, bytes) => (error ? reject(error) : resolve(bytes))));
}

/** TMPFS_MAGIC, RAMFS_MAGIC: the test's own list, not the code's. */
function inMemory(directory: string): boolean {
  return [0x01021994, 0x858458f6].includes(statfsSync(directory).type);
}

// /dev/shm is tmpfs on Linux (CI's container too); without it the in-memory case has nothing to run on.
const places = [
  { place: 'the temporary folder', parent: tmpdir() },
  ...(existsSync('/dev/shm') && inMemory('/dev/shm') ? [{ place: 'memory (/dev/shm)', parent: '/dev/shm' }] : []),
];

// The addon's pread/pwrite (native/file_now.cc) and Node's readSync/writeSync (LVNODE_FILE_NOW=fs).
const inlineCalls = [{ calls: 'addon' }, { calls: 'fs' }] as const;

describe.each(inlineCalls)('a file in memory is read and written inline, with $calls calls', ({ calls }) => {
  const saved = process.env.LVNODE_FILE_NOW;
  beforeEach(() => {
    if (calls === 'fs') process.env.LVNODE_FILE_NOW = 'fs';
    else delete process.env.LVNODE_FILE_NOW;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.LVNODE_FILE_NOW;
    else process.env.LVNODE_FILE_NOW = saved;
  });

  it('says which calls it makes', () => {
    // Without the addon built (LVNODE_SKIP_NATIVE_BUILD) only Node's are there.
    const addonBuilt = existsSync(join(import.meta.dirname, '../../build/Release/lvnode_file_io.node'));
    expect(fileIoInfo().memory_files.calls).toBe(calls === 'addon' && addonBuilt ? 'addon' : 'fs');
  });

  it('reads at once with readNow: the bytes for a small request, nothing for a large one, Node’s error for a failed one', () => {
    const queued: FileIo = { read: () => expect.fail('queued'), write: () => expect.fail('queued') };
    const path = join(tmpdir(), `lvnode-readnow-${process.pid}-${calls}.img`);
    onTestFinished(() => rm(path, { force: true }));
    const bytes = Buffer.alloc(8192);
    for (let at = 0; at < bytes.length; at++) bytes[at] = (at * 7 + 3) & 0xff;
    writeFileSync(path, bytes);
    const fd = openSync(path, 'r');
    const writeOnly = openSync(path, fsConstants.O_WRONLY);
    try {
      const io = inlineFileIo(queued, 4096);
      const holder = Buffer.alloc(4096 + 64, 0xee);
      expect(io.readNow!(fd, holder, 32, 4096, 4096)).toBe(4096);
      expect(holder.subarray(32, 32 + 4096).equals(bytes.subarray(4096))).toBe(true);
      expect(holder.subarray(0, 32).equals(Buffer.alloc(32, 0xee))).toBe(true);
      expect(holder.subarray(32 + 4096).equals(Buffer.alloc(32, 0xee))).toBe(true);
      expect(io.readNow!(fd, holder, 0, 512, 8192)).toBe(0); // at the end of the file
      const large = Buffer.alloc(8192, 0xaa);
      expect(io.readNow!(fd, large, 0, 8192, 0)).toBeUndefined();
      expect(large.equals(Buffer.alloc(8192, 0xaa))).toBe(true);
      expect(() => io.readNow!(writeOnly, holder, 0, 512, 0)).toThrow(expect.objectContaining({ code: 'EBADF', errno: -9, syscall: 'read' }));
      // A range outside the buffer is refused before any syscall.
      expect(() => io.readNow!(fd, holder, 4096, 512, 0)).toThrow();
    } finally {
      closeSync(fd);
      closeSync(writeOnly);
    }
  });

  it('answers a small request before the call returns and hands a large one to the queued path', () => {
    const handed: number[] = [];
    const queued: FileIo = {
      read: (_fd, _buffer, _at, length, _position, done) => (handed.push(length), done(null, length)),
      write: (_fd, _buffer, _at, length, _position, done) => (handed.push(length), done(null, length)),
    };
    const directory = tmpdir();
    const path = join(directory, `lvnode-inline-${process.pid}.img`);
    onTestFinished(() => rm(path, { force: true }));
    writeFileSync(path, Buffer.alloc(8192, 7));
    const fd = openSync(path, 'r+');
    try {
      const io = inlineFileIo(queued, 4096);
      const before = fileIoInfo().memory_files.inline_requests;
      const target = Buffer.alloc(4096);
      let answered: number | null = null;
      io.read(fd, target, 0, 4096, 4096, (error, bytes) => (answered = error ? -1 : bytes));
      expect(answered).toBe(4096);
      expect(target.equals(Buffer.alloc(4096, 7))).toBe(true);
      answered = null;
      io.write(fd, Buffer.alloc(4096, 9), 0, 4096, 0, (error, bytes) => (answered = error ? -1 : bytes));
      expect(answered).toBe(4096);
      expect(readFileSync(path).subarray(0, 4096).equals(Buffer.alloc(4096, 9))).toBe(true);
      expect(fileIoInfo().memory_files.inline_requests).toBe(before + 2);
      expect(handed).toEqual([]);
      io.read(fd, Buffer.alloc(8192), 0, 8192, 0, () => {});
      io.write(fd, Buffer.alloc(8192), 0, 8192, 0, () => {});
      expect(handed).toEqual([8192, 8192]);
      expect(fileIoInfo().memory_files.inline_requests).toBe(before + 2);
    } finally {
      closeSync(fd);
    }
  });

  it('is what a device on a file in memory uses, and only there', async () => {
    for (const { parent } of places) {
      const directory = await mkdtemp(join(parent, 'lvnode-fileio-mode-'));
      try {
        const path = join(directory, 'disk.img');
        writeFileSync(path, Buffer.alloc(8192));
        const device = await FileDevice.open(path, blockBytes);
        const expected = inMemory(parent) && process.env.LVNODE_MEMORY_FILE_IO !== 'queued' ? 'inline' : fileIoInfo().path;
        expect(device.ioMode, parent).toBe(expected);
        await device.close();
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    }
  });
});

describe.each(places)('file I/O path, a file in $place', ({ parent }) => {
  let directory = '';
  let path = '';
  /** What a request on a bare descriptor here goes through: inline in memory, else the process's path. */
  const io = (): FileIo => (inMemory(parent) ? inlineFileIo(fileIo()) : fileIo());

  beforeEach(async () => {
    directory = await mkdtemp(join(parent, 'lvnode-fileio-'));
    path = join(directory, 'disk.img');
    writeFileSync(path, Buffer.alloc(deviceBytes));
  });

  afterEach(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('is the ring unless forced to the thread pool or refused, and says which and why', () => {
    const info = fileIoInfo();
    if (process.env.LVNODE_FILE_IO === 'threadpool') expect(info).toMatchObject({ path: 'threadpool', reason: 'LVNODE_FILE_IO=threadpool' });
    else if (info.path === 'threadpool') expect(info.reason).toMatch(/io_uring_setup refused|not built|not Linux|worker/);
    else expect(info.reason).toMatch(/^ring of \d+ entries$/);
  });

  it('matches a byte-array oracle over random batches of concurrent reads and writes of any size, and the file agrees', async () => {
    const seed = Number(process.env.LVNODE_TEST_SEED ?? Date.now() % 1_000_000);
    const next = seededRandom(seed);
    const oracle = Buffer.alloc(deviceBytes);
    const device = await FileDevice.open(path, blockBytes);
    // The file read on its own descriptor, synchronously: a write reported done must be in the
    // file by then, not merely queued for the kernel.
    const witness = openSync(path, 'r');
    try {
      for (let batch = 0; batch < 60; batch++) {
        // Ranges of one batch do not overlap: their requests run concurrently, in any order.
        const taken: Array<[number, number]> = [];
        const requests: Array<Promise<void>> = [];
        const reads: Array<{ offsetBytes: number; target: Buffer; expected: Buffer }> = [];
        const writes: Array<{ offsetBytes: number; data: Buffer }> = [];
        const count = 1 + Math.floor(next() * 40);
        for (let index = 0; index < count; index++) {
          const lengthBytes = blockBytes * (1 + Math.floor(next() * (next() < 0.2 ? 512 : 16)));
          const offsetBytes = blockBytes * Math.floor(next() * ((deviceBytes - lengthBytes) / blockBytes));
          if (taken.some(([start, end]) => offsetBytes < end && start < offsetBytes + lengthBytes)) continue;
          taken.push([offsetBytes, offsetBytes + lengthBytes]);
          if (next() < 0.5) {
            const data = Buffer.alloc(lengthBytes);
            for (let at = 0; at < lengthBytes; at++) data[at] = Math.floor(next() * 256);
            // A view at an odd place of a larger buffer: the offset inside it must be honoured.
            const holder = Buffer.alloc(lengthBytes + 64, 0xee);
            data.copy(holder, 32);
            requests.push(device.write(offsetBytes, holder.subarray(32, 32 + lengthBytes)));
            data.copy(oracle, offsetBytes);
            writes.push({ offsetBytes, data });
          } else {
            const target = Buffer.alloc(lengthBytes, 0xaa);
            reads.push({ offsetBytes, target, expected: Buffer.from(oracle.subarray(offsetBytes, offsetBytes + lengthBytes)) });
            // Half of the reads ask to be answered at once: only a file in memory, and only up to its inline size, can.
            const now = next() < 0.5 && device.readIntoNow(target, offsetBytes);
            if (now === false) requests.push(device.readInto(target, offsetBytes));
            else expect(device.ioMode === 'inline' && lengthBytes <= memoryFileInlineBytesMax, `read of ${lengthBytes} at once`).toBe(true);
          }
        }
        await Promise.all(requests);
        for (const write of writes) {
          const found = Buffer.alloc(write.data.length);
          readSync(witness, found, 0, found.length, write.offsetBytes);
          expect(found.equals(write.data), `seed ${seed}, batch ${batch}, write at ${write.offsetBytes} not in the file when reported done`).toBe(true);
        }
        for (const read of reads) expect(read.target.equals(read.expected), `seed ${seed}, batch ${batch}, read at ${read.offsetBytes}`).toBe(true);
      }
      // Written in the batches, read back in one sweep through the device and from the file itself.
      const whole = Buffer.alloc(deviceBytes);
      await device.readInto(whole, 0);
      expect(whole.equals(oracle), `seed ${seed}`).toBe(true);
    } finally {
      closeSync(witness);
      await device.close();
    }
    expect(readFileSync(path).equals(oracle), `seed ${seed}`).toBe(true);
  });

  it('answers a failed request with Node’s error (code, errno, syscall), not with success', async () => {
    const readOnly = openSync(path, 'r');
    const writeOnly = openSync(path, fsConstants.O_WRONLY); // 'w' would truncate
    try {
      const data = Buffer.alloc(4096, 1);
      await expect(call((done) => io().write(readOnly, data, 0, data.length, 0, done))).rejects.toMatchObject({ code: 'EBADF', errno: -9, syscall: 'write' });
      await expect(call((done) => io().read(writeOnly, data, 0, data.length, 0, done))).rejects.toMatchObject({ code: 'EBADF', errno: -9, syscall: 'read' });
      // A good request right after failed ones still works (the failures freed their tokens).
      const target = Buffer.alloc(4096, 9);
      await expect(call((done) => io().read(readOnly, target, 0, target.length, 0, done))).resolves.toBe(4096);
      expect(target.equals(Buffer.alloc(4096))).toBe(true);
    } finally {
      closeSync(readOnly);
      closeSync(writeOnly);
    }
  });

  it('fails a write to a read-only device with the kernel’s error, and the file keeps its bytes', async () => {
    const device = await FileDevice.open(path, blockBytes, { readOnly: true });
    try {
      // assertWritable is the bdev's job: the device itself passes the write to the kernel.
      await expect(device.write(0, Buffer.alloc(blockBytes, 5))).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      await device.close();
    }
    expect(readFileSync(path).subarray(0, blockBytes).equals(Buffer.alloc(blockBytes))).toBe(true);
  });

  it('reads zeros past the end of a file that shrank under it', async () => {
    writeFileSync(path, Buffer.alloc(deviceBytes, 3));
    const device = await FileDevice.open(path, blockBytes);
    try {
      writeFileSync(path, Buffer.alloc(8192, 3)); // truncates to 8 KiB
      const target = Buffer.alloc(16384, 0xaa);
      await device.readInto(target, 0);
      expect(target.subarray(0, 8192).equals(Buffer.alloc(8192, 3))).toBe(true);
      expect(target.subarray(8192).equals(Buffer.alloc(8192))).toBe(true);
      const atOnce = Buffer.alloc(16384, 0xaa);
      expect(device.readIntoNow(atOnce, 0)).toBe(device.ioMode === 'inline');
      if (device.ioMode === 'inline') expect(atOnce.equals(target)).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('closes only after every request in flight completed, refuses new ones, and then the descriptor is gone', async () => {
    const device = await FileDevice.open(path, blockBytes);
    const fd = device.fd;
    const writes = Array.from({ length: 64 }, (_, index) => device.write(index * 65536, Buffer.alloc(65536, index + 1)));
    const targets = Array.from({ length: 64 }, () => Buffer.alloc(4096));
    const reads = targets.map((target, index) => device.readInto(target, deviceBytes - (index + 1) * 4096));
    let closed = false;
    const closing = device.close().then(() => (closed = true));
    await expect(device.readInto(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'EBADF', name: 'DeviceClosedError' });
    if (device.ioMode === 'inline') expect(() => device.readIntoNow(Buffer.alloc(512), 0)).toThrow(expect.objectContaining({ code: 'EBADF', name: 'DeviceClosedError' }));
    else expect(device.readIntoNow(Buffer.alloc(512), 0)).toBe(false);
    const settled = await Promise.allSettled([...writes, ...reads]);
    expect(settled.every((outcome) => outcome.status === 'fulfilled')).toBe(true);
    await closing;
    expect(closed).toBe(true);
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
    const file = readFileSync(path);
    for (let index = 0; index < 64; index++) expect(file.subarray(index * 65536, (index + 1) * 65536).equals(Buffer.alloc(65536, index + 1))).toBe(true);
  });
});
