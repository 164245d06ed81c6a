// Connection slots under a flood of idle connections: connections before Connect share a small
// handshake pool, the oldest of them is closed for a newcomer, established queue pairs are never
// closed for one, and a host that connects promptly gets in and does I/O whatever the flood.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { NvmfTransportLimits } from '../../../src/transport/nvmf/target.ts';
import { type StandaloneTarget, killAllSpdk, memoryBdev, runSpdk, skipSpdk, startTarget, trid } from './harness.ts';
import { RawHost } from './rawHost.ts';

const mib = 1024 * 1024;
const hostNqn = 'nqn.2014-08.org.nvmexpress:uuid:test-host';
const hosts: RawHost[] = [];
let target: StandaloneTarget | undefined;
afterEach(async () => {
  for (const host of hosts.splice(0)) host.close();
  await target?.close();
  target = undefined;
});
afterAll(() => killAllSpdk());

async function open(limits: Partial<NvmfTransportLimits>): Promise<StandaloneTarget> {
  target = await startTarget({ bdevs: [memoryBdev('Malloc0', mib)], limits });
  return target;
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Connections the target has accepted so far: each one is open, or was evicted or refused (no
 * test here closes one itself while counting).
 */
function acceptedCount(standalone: StandaloneTarget): number {
  const figures = standalone.transport.handshakeFigures();
  return standalone.transport.connections + figures.evicted + figures.refused;
}

/**
 * Opens `count` connections that never send a byte, one at a time, each accepted by the target
 * before the next opens (so "oldest" is the order of this list).
 */
async function idleSockets(standalone: StandaloneTarget, count: number): Promise<RawHost[]> {
  const opened: RawHost[] = [];
  for (let index = 0; index < count; index++) {
    const before = acceptedCount(standalone);
    const raw = await RawHost.open(standalone.port);
    hosts.push(raw);
    opened.push(raw);
    await waitFor(() => acceptedCount(standalone) === before + 1, 'the target to accept an idle connection');
  }
  return opened;
}

/** Gives the target a few turns to close what it is going to close. */
async function settle(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 100));
}

async function connectedHost(port: number): Promise<RawHost> {
  const raw = await RawHost.open(port);
  hosts.push(raw);
  return raw;
}

/** I/O queue `qid` of controller `cntlid`, connected. */
async function ioQueue(port: number, nqn: string, cntlid: number, qid = 1): Promise<RawHost> {
  const raw = await connectedHost(port);
  await raw.icReq();
  const result = await raw.command(...raw.connectCommand(qid, nqn, hostNqn, cntlid));
  expect([result.sct, result.sc]).toEqual([0, 0]);
  return raw;
}

/** Writes a block at `lba` and reads it back through `io`. */
async function writeAndReadBack(io: RawHost, lba: number, fill: number): Promise<void> {
  const data = Buffer.alloc(512, fill);
  const write = await io.command(io.sqe(0x01, { nsid: 1, cdw10: lba, dataBytes: 512 }), data);
  expect([write.sct, write.sc]).toEqual([0, 0]);
  const read = await io.command(io.sqe(0x02, { nsid: 1, cdw10: lba, transferBytes: 512 }));
  expect(Buffer.concat(read.data).equals(data)).toBe(true);
}

describe('NVMe/TCP handshake slots', () => {
  it('closes the oldest idle connections for newer ones, and a prompt host still connects and does I/O', async () => {
    const slots = 8;
    const standalone = await open({ handshakeSlotsMax: slots, connectionsMax: 64 });
    const { port, nqn, transport } = standalone;
    const flood = await idleSockets(standalone, slots + 4);
    await settle();
    // The pool holds `slots`: the first four made room for the last four, oldest first.
    expect(flood.map((raw) => raw.closed)).toEqual([...Array<boolean>(4).fill(true), ...Array<boolean>(slots).fill(false)]);
    expect(transport.handshakeFigures()).toMatchObject({ handshaking: slots, evicted: 4, refused: 0 });

    // A real host, with the pool full: its admin queue takes the oldest idle connection's slot and
    // gives it back at Connect, so its I/O queue finds one free.
    const admin = await connectedHost(port);
    const cntlid = await admin.connectAdmin(nqn, hostNqn);
    const io = await ioQueue(port, nqn, cntlid);
    await writeAndReadBack(io, 7, 0xa5);
    expect(flood.map((raw) => raw.closed)).toEqual([...Array<boolean>(5).fill(true), ...Array<boolean>(slots - 1).fill(false)]);
    expect(transport.handshakeFigures()).toMatchObject({ handshaking: slots - 1, evicted: 5 });

    // Established queues leave the pool: a flood of twice its size displaces only itself.
    const second = await idleSockets(standalone, 2 * slots);
    await settle();
    expect(flood.every((raw) => raw.closed)).toBe(true);
    expect(second.filter((raw) => raw.closed)).toHaveLength(slots);
    expect(second.slice(slots).every((raw) => !raw.closed)).toBe(true);
    expect(admin.closed || io.closed).toBe(false);
    await writeAndReadBack(io, 8, 0x3c);
  });

  it('at the connection cap closes the oldest handshaking connection, and refuses a newcomer only when established queues fill it', async () => {
    const standalone = await open({ handshakeSlotsMax: 4, connectionsMax: 4 });
    const { port, nqn, transport } = standalone;
    const admin = await connectedHost(port);
    const cntlid = await admin.connectAdmin(nqn, hostNqn);
    const io = await ioQueue(port, nqn, cntlid);
    // Two established, two handshaking: the cap (4) is full while the pool (4) is not.
    const idle = await idleSockets(standalone, 3);
    await settle();
    expect(idle.map((raw) => raw.closed)).toEqual([true, false, false]);
    expect(transport.handshakeFigures()).toMatchObject({ handshaking: 2, evicted: 1, refused: 0 });

    // Two more established queues take the idle ones' places; then the cap holds only established queues.
    const more = [await ioQueue(port, nqn, cntlid, 2), await ioQueue(port, nqn, cntlid, 3)];
    expect(idle.every((raw) => raw.closed)).toBe(true);
    const refused = await RawHost.open(port);
    hosts.push(refused);
    await refused.waitClosed();
    expect(transport.handshakeFigures()).toMatchObject({ handshaking: 0, evicted: 3, refused: 1 });
    expect([admin, io, ...more].some((raw) => raw.closed)).toBe(false);
    await writeAndReadBack(more[1]!, 3, 0x11);
  });

  it('closes a connection that sends no Connect within the handshake deadline, and keeps a connected one past it', async () => {
    const standalone = await open({ handshakeTimeoutMs: 200 });
    const { port, nqn, transport } = standalone;
    const [idle] = await idleSockets(standalone, 1);
    const halfway = await connectedHost(port);
    await halfway.icReq();
    const admin = await connectedHost(port);
    await admin.connectAdmin(nqn, hostNqn);
    await idle!.waitClosed();
    await halfway.waitClosed();
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(admin.closed).toBe(false);
    expect(transport.handshakeFigures()).toMatchObject({ handshaking: 0, timedOut: 2 });
  });
});

describe.skipIf(skipSpdk)('NVMe/TCP handshake slots under a running flood', () => {
  it('lets spdk_nvme_perf connect and do I/O while idle connections keep arriving', async () => {
    const slots = 8;
    const bdev = memoryBdev('Malloc0', 8 * mib);
    target = await startTarget({ bdevs: [bdev], limits: { handshakeSlotsMax: slots, connectionsMax: 64 } });
    const standalone = target;
    await idleSockets(standalone, slots);
    // One more idle connection every 10 ms for as long as perf runs: the pool is always full.
    let flooding = true;
    const flood = (async () => {
      while (flooding) {
        hosts.push(await RawHost.open(standalone.port));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    try {
      const run = await runSpdk('spdk_nvme_perf', ['--no-huge', '-s', '256', '-c', '0x2', '-q', '16', '-o', '4096', '-w', 'randrw', '-M', '50', '-t', '1', '-P', '2', '-r', trid(standalone.port, standalone.nqn)]);
      expect(run.code, run.stdout + run.stderr).toBe(0);
    } finally {
      flooding = false;
      await flood;
    }
    expect(bdev.reads).toBeGreaterThan(100);
    expect(bdev.writes).toBeGreaterThan(100);
    // The flood went on throughout, displacing itself.
    expect(standalone.transport.handshakeFigures().evicted).toBeGreaterThan(20);
  });
});
