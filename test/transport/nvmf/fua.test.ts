// Goal: a Write or Write Zeroes with FUA (CDW12 bit 30) completes only once the bdev has flushed
// it: lvnode's controller reports a volatile write cache, so without FUA a write is durable only
// after a Flush, and with FUA the host relies on it being durable at its completion. The bdev's
// flush is held open here: the FUA command's completion must wait for it, a plain write's must not.
import { afterEach, describe, expect, it } from 'vitest';
import { type StandaloneTarget, memoryBdev, startTarget } from './harness.ts';
import { RawHost } from './rawHost.ts';

const fua = 1 << 30;
let target: StandaloneTarget | undefined;
let raw: RawHost | undefined;
afterEach(async () => {
  raw?.close();
  await target?.close();
});

/** A RAM bdev whose flush waits until released; records writes and flushes in order. */
function gatedBdev() {
  const bdev = memoryBdev('Malloc0', 1024 * 1024);
  const events: string[] = [];
  let release: () => void = () => {};
  const write = bdev.write.bind(bdev);
  const writeZeroes = bdev.writeZeroes.bind(bdev);
  bdev.write = async (offsetBytes, data) => {
    events.push('write');
    await write(offsetBytes, data);
  };
  bdev.writeZeroes = async (offsetBytes, lengthBytes) => {
    events.push('writeZeroes');
    await writeZeroes(offsetBytes, lengthBytes);
  };
  bdev.flush = () => {
    events.push('flush');
    return new Promise<void>((resolve) => (release = () => (events.push('flushed'), resolve())));
  };
  return { bdev, events, releaseFlush: () => release() };
}

async function ioQueue(port: number, nqn: string): Promise<RawHost> {
  const admin = await RawHost.open(port);
  const cntlid = await admin.connectAdmin(nqn);
  const io = await RawHost.open(port);
  await io.icReq();
  const result = await io.command(...io.connectCommand(1, nqn, 'nqn.2014-08.org.nvmexpress:uuid:test-host', cntlid));
  expect(result.sc).toBe(0);
  raw = io;
  return io;
}

/** Sends a command; `early`: its completion came while the bdev's flush was still held (200 ms). */
async function completesWithoutFlush(io: RawHost, sqe: Buffer, data?: Buffer): Promise<{ early: boolean; done: Promise<unknown> }> {
  const done = io.command(sqe, data);
  const early = await Promise.race([done.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 200))]);
  return { early, done };
}

describe('NVMe/TCP FUA', () => {
  it('answers a Write with FUA only after the bdev flushed it; a plain write without a flush', async () => {
    const { bdev, events, releaseFlush } = gatedBdev();
    target = await startTarget({ bdevs: [bdev] });
    const io = await ioQueue(target.port, target.nqn);

    // A plain write completes with its flush still held (none is asked for).
    expect(await io.command(io.sqe(0x01, { nsid: 1, cdw10: 0, cdw12: 0, dataBytes: 512 }), Buffer.alloc(512, 1))).toMatchObject({ sct: 0, sc: 0 });
    expect(events).toEqual(['write']);

    const forced = await completesWithoutFlush(io, io.sqe(0x01, { nsid: 1, cdw10: 8, cdw12: fua, dataBytes: 512 }), Buffer.alloc(512, 2));
    expect(forced.early).toBe(false);
    expect(events).toEqual(['write', 'write', 'flush']);
    releaseFlush();
    expect(await forced.done).toMatchObject({ sct: 0, sc: 0 });
    expect(events).toEqual(['write', 'write', 'flush', 'flushed']);
  });

  it('answers a Write Zeroes with FUA only after the bdev flushed it', async () => {
    const { bdev, events, releaseFlush } = gatedBdev();
    target = await startTarget({ bdevs: [bdev] });
    const io = await ioQueue(target.port, target.nqn);
    const forced = await completesWithoutFlush(io, io.sqe(0x08, { nsid: 1, cdw10: 16, cdw12: fua | 7 }));
    expect(forced.early).toBe(false);
    expect(events).toEqual(['writeZeroes', 'flush']);
    releaseFlush();
    expect(await forced.done).toMatchObject({ sct: 0, sc: 0 });
  });
});
