// A namespace on a real file (an aio bdev: FileDevice behind its queue), on the file I/O path this
// process chose (io_uring, or the thread pool under LVNODE_FILE_IO=threadpool): spdk_dd's bytes
// land in the file as sent, 128 KiB payloads included (read from the socket straight into the
// command's buffer), and come back; a failed file read or write reaches the host as a media error.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BaseBdev } from '../../../src/bdev/baseBdev.ts';
import { FileDevice } from '../../../src/device/fileDevice.ts';
import { type FileIo, fileIo } from '../../../src/device/fileIo.ts';
import { QueuedDevice } from '../../../src/device/queuedDevice.ts';
import { killAllSpdk, skipSpdk, spdkDd, startTarget, writeSpdkDdConfig } from './harness.ts';
import { RawHost } from './rawHost.ts';

const mib = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), 'lvnode-nvmf-file-'));
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => {
  killAllSpdk();
  rmSync(work, { recursive: true, force: true });
});

/** An aio bdev on a zeroed file of `sizeBytes`, as bdev_aio_create makes one. */
async function fileBdev(name: string, sizeBytes: number, options: { readOnlyFile?: boolean; io?: FileIo } = {}): Promise<{ bdev: BaseBdev; path: string }> {
  const path = join(work, `${name}.img`);
  writeFileSync(path, Buffer.alloc(sizeBytes));
  const device = await FileDevice.open(path, 4096, { readOnly: options.readOnlyFile ?? false, ...(options.io ? { io: options.io } : {}) });
  cleanups.push(() => device.close());
  // readOnlyDevice false even for a read-only file: the write must reach the kernel and fail there.
  const bdev = new BaseBdev({ name, uuid: `uuid-${name}`, kind: 'aio', device: new QueuedDevice(device), filename: path, readOnlyDevice: false });
  return { bdev, path };
}

async function served(bdev: BaseBdev) {
  const target = await startTarget({ bdevs: [bdev] });
  cleanups.push(() => target.close());
  return target;
}

async function ioQueue(port: number, nqn: string): Promise<RawHost> {
  const admin = await RawHost.open(port);
  cleanups.push(async () => admin.close());
  const cntlid = await admin.connectAdmin(nqn);
  const io = await RawHost.open(port);
  cleanups.push(async () => io.close());
  await io.icReq();
  const connected = await io.command(...io.connectCommand(1, nqn, 'nqn.2014-08.org.nvmexpress:uuid:test-host', cntlid));
  expect(connected.sc).toBe(0);
  return io;
}

describe('NVMe/TCP namespace on a file', () => {
  it.skipIf(skipSpdk)('stores spdk_dd’s bytes in the file exactly (1 MiB requests, with and without data digests) and reads them back', async () => {
    const { bdev, path } = await fileBdev('aio0', 16 * mib);
    const target = await served(bdev);
    for (const digests of [false, true]) {
      const attach = { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(target.port), subnqn: target.nqn, hdgst: digests, ddgst: digests };
      const config = writeSpdkDdConfig(join(work, `dd-${digests}.json`), attach);
      const input = join(work, 'in.bin');
      const output = join(work, 'out.bin');
      const known = randomBytes(8 * mib);
      writeFileSync(input, known);
      await spdkDd(config, `--if=${input}`, '--ob=Nvme0n1');
      // The oracle: the file itself, read past lvnode.
      expect(readFileSync(path).subarray(0, known.length).equals(known), `digests ${digests}`).toBe(true);
      await spdkDd(config, '--ib=Nvme0n1', `--of=${output}`, ['--count=8']);
      expect(readFileSync(output).equals(known), `digests ${digests}`).toBe(true);
    }
  });

  it('answers a write the kernel refuses with Write Fault, and the file keeps its bytes', async () => {
    const { bdev, path } = await fileBdev('ro0', mib, { readOnlyFile: true });
    const { port, nqn } = await served(bdev);
    const io = await ioQueue(port, nqn);
    const result = await io.command(io.sqe(0x01, { nsid: 1, cdw10: 0, dataBytes: 4096 }), Buffer.alloc(4096, 0x77));
    expect([result.sct, result.sc]).toEqual([2, 0x80]); // Media and Data Integrity Errors: Write Fault
    expect(readFileSync(path).equals(Buffer.alloc(mib))).toBe(true);
  });

  it('answers a read the file fails with Unrecovered Read Error and no data', async () => {
    // The file path's own callback with EIO for reads past 512 KiB, as a failing disk answers.
    const failing: FileIo = {
      read: (fd, buffer, at, length, position, done) => {
        if (position >= 512 * 1024) return setImmediate(() => done(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', errno: -5, syscall: 'read' }), 0));
        fileIo().read(fd, buffer, at, length, position, done);
      },
      write: (fd, buffer, at, length, position, done) => fileIo().write(fd, buffer, at, length, position, done),
    };
    const { bdev } = await fileBdev('eio0', mib, { io: failing });
    const { port, nqn } = await served(bdev);
    const io = await ioQueue(port, nqn);
    const good = await io.command(io.sqe(0x02, { nsid: 1, cdw10: 0, transferBytes: 4096 }));
    expect([good.sct, good.sc]).toEqual([0, 0]);
    expect(Buffer.concat(good.data).equals(Buffer.alloc(4096))).toBe(true);
    const bad = await io.command(io.sqe(0x02, { nsid: 1, cdw10: 128 + 1, transferBytes: 4096 }));
    expect([bad.sct, bad.sc]).toEqual([2, 0x81]); // Unrecovered Read Error
    expect(bad.data).toEqual([]);
  });
});
