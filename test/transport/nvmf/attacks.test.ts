// The target under hostile or mistaken hosts: malformed PDUs end the connection with a
// C2HTermReq naming the fault (and the target goes on serving others), bad digests are caught,
// unknown subsystems and disallowed hosts are refused at Connect, and I/O outside a namespace or
// to a read-only one is refused with the NVMe status for it (the bdev untouched).
import { afterEach, describe, expect, it } from 'vitest';
import type { Bdev } from '../../../src/bdev/bdev.ts';
import { type StandaloneTarget, memoryBdev, startTarget } from './harness.ts';
import { RawHost } from './rawHost.ts';

const mib = 1024 * 1024;
const hosts: RawHost[] = [];
let target: StandaloneTarget | undefined;
afterEach(async () => {
  for (const host of hosts.splice(0)) host.close();
  await target?.close();
  target = undefined;
});

async function open(bdevs: Bdev[] = [memoryBdev('Malloc0', mib)], options: { allowAnyHost?: boolean; hosts?: string[] } = {}): Promise<StandaloneTarget> {
  target = await startTarget({ bdevs, ...options });
  return target;
}

async function host(port: number): Promise<RawHost> {
  const raw = await RawHost.open(port);
  hosts.push(raw);
  return raw;
}

/** Expects a C2HTermReq with `fes` and then the connection closed. */
async function expectTerminated(raw: RawHost, fes: number): Promise<void> {
  const pdu = await raw.next();
  expect(pdu?.type).toBe(0x03);
  expect(pdu!.bytes.readUInt16LE(8)).toBe(fes);
  await raw.waitClosed();
}

/** An I/O queue connected to the subsystem, with controller `cntlid`. */
async function ioQueue(port: number, nqn: string, cntlid: number, options: { dataDigest?: boolean } = {}): Promise<RawHost> {
  const raw = await host(port);
  await raw.icReq({ dataDigest: options.dataDigest });
  const result = await raw.command(...raw.connectCommand(1, nqn, 'nqn.2014-08.org.nvmexpress:uuid:test-host', cntlid));
  expect(result.sc).toBe(0);
  return raw;
}

describe('NVMe/TCP target under malformed PDUs', () => {
  it('terminates a connection whose first PDU is not an ICReq (PDU sequence error)', async () => {
    const { port } = await open();
    const raw = await host(port);
    raw.write(raw.capsule(raw.sqe(0x06)));
    await expectTerminated(raw, 0x02);
  });

  it('terminates on a wrong header length, and still serves the next host', async () => {
    const { port, nqn } = await open();
    const raw = await host(port);
    await raw.icReq();
    const pdu = raw.capsule(raw.sqe(0x06));
    pdu.writeUInt8(64, 2); // HLEN must be 72 for a CapsuleCmd
    raw.write(pdu);
    await expectTerminated(raw, 0x01);
    const next = await host(port);
    expect(await next.connectAdmin(nqn)).toBeGreaterThan(0);
  });

  it('terminates on a PDU longer than the largest it accepts (data transfer limit exceeded)', async () => {
    const { port } = await open();
    const raw = await host(port);
    await raw.icReq();
    const header = Buffer.alloc(8);
    header.writeUInt8(0x04, 0);
    header.writeUInt8(72, 2);
    header.writeUInt8(72, 3);
    header.writeUInt32LE(0x7fff_ffff, 4);
    raw.write(header);
    await expectTerminated(raw, 0x05);
  });

  it('waits for the rest of a truncated PDU and is closed by the host without harm', async () => {
    const { port, nqn } = await open();
    const raw = await host(port);
    await raw.icReq();
    raw.write(raw.capsule(raw.sqe(0x06)).subarray(0, 40));
    await new Promise((resolve) => setTimeout(resolve, 50));
    raw.close();
    const next = await host(port);
    expect(await next.connectAdmin(nqn)).toBeGreaterThan(0);
  });

  it('terminates on a bad header digest', async () => {
    const { port } = await open();
    const raw = await host(port);
    await raw.icReq({ headerDigest: true });
    expect(raw.headerDigest).toBe(true);
    raw.write(raw.capsule(raw.sqe(0x06), undefined, { corruptHeaderDigest: true }));
    await expectTerminated(raw, 0x03);
  });

  it('fails a write whose data digest is wrong (Transient Transport Error) and leaves the bdev unwritten', async () => {
    const bdev = memoryBdev('Malloc0', mib, { blockSizeBytes: 512 });
    const { port, nqn } = await open([bdev]);
    const admin = await host(port);
    const cntlid = await admin.connectAdmin(nqn);
    const io = await ioQueue(port, nqn, cntlid, { dataDigest: true });
    const data = Buffer.alloc(512, 0xab);
    const bad = await io.command(io.sqe(0x01, { nsid: 1, dataBytes: 512 }), data, { corruptDataDigest: true });
    expect([bad.sct, bad.sc]).toEqual([0, 0x22]);
    expect(bdev.writes).toBe(0);
    const good = await io.command(io.sqe(0x01, { nsid: 1, dataBytes: 512 }), data);
    expect([good.sct, good.sc]).toEqual([0, 0]);
    expect(bdev.writes).toBe(1);
  });
});

describe('NVMe/TCP target admission and namespace bounds', () => {
  it('refuses Connect to an unknown subsystem NQN (Invalid Parameters, in the data at SUBNQN)', async () => {
    const { port } = await open();
    const raw = await host(port);
    await raw.icReq();
    const result = await raw.command(...raw.connectCommand(0, 'nqn.2016-06.io.spdk:nobody', 'nqn.2014-08.org.nvmexpress:uuid:h'));
    expect([result.sct, result.sc]).toEqual([1, 0x82]);
    expect(result.dw0).toBe((1 << 16) | 256);
  });

  it('admits only added host NQNs when allow_any_host is false', async () => {
    const allowed = 'nqn.2014-08.org.nvmexpress:uuid:allowed';
    const { port, nqn } = await open(undefined, { allowAnyHost: false, hosts: [allowed] });
    const stranger = await host(port);
    await stranger.icReq();
    const refused = await stranger.command(...stranger.connectCommand(0, nqn, 'nqn.2014-08.org.nvmexpress:uuid:stranger'));
    expect([refused.sct, refused.sc]).toEqual([1, 0x84]);
    const friend = await host(port);
    expect(await friend.connectAdmin(nqn, allowed)).toBeGreaterThan(0);
  });

  it('refuses I/O past the namespace end with LBA Out of Range, and reads what was written', async () => {
    const bdev = memoryBdev('Malloc0', mib, { blockSizeBytes: 512 });
    const { port, nqn } = await open([bdev]);
    const admin = await host(port);
    const io = await ioQueue(port, nqn, await admin.connectAdmin(nqn));
    const lastLba = mib / 512 - 1;
    const past = await io.command(io.sqe(0x02, { nsid: 1, cdw10: lastLba, cdw12: 1, transferBytes: 1024 }));
    expect([past.sct, past.sc]).toEqual([0, 0x80]);
    expect(bdev.reads).toBe(0);
    const data = Buffer.alloc(512, 0x5a);
    expect((await io.command(io.sqe(0x01, { nsid: 1, cdw10: lastLba, dataBytes: 512 }), data)).sc).toBe(0);
    const read = await io.command(io.sqe(0x02, { nsid: 1, cdw10: lastLba, transferBytes: 512 }));
    expect(Buffer.concat(read.data).equals(data)).toBe(true);
    const unknown = await io.command(io.sqe(0x02, { nsid: 7, transferBytes: 512 }));
    expect([unknown.sct, unknown.sc]).toEqual([0, 0x0b]);
  });

  it('refuses writes to a read-only namespace (Namespace Is Write Protected) and says so in Identify', async () => {
    const bdev = memoryBdev('Snap0', mib, { readOnly: true });
    const { port, nqn } = await open([bdev]);
    const admin = await host(port);
    const cntlid = await admin.connectAdmin(nqn);
    const identify = await admin.command(admin.sqe(0x06, { nsid: 1, cdw10: 0x00, transferBytes: 4096 }));
    expect(Buffer.concat(identify.data)[99]! & 1).toBe(1);
    const io = await ioQueue(port, nqn, cntlid);
    const write = await io.command(io.sqe(0x01, { nsid: 1, dataBytes: 512 }), Buffer.alloc(512, 1));
    expect([write.sct, write.sc]).toEqual([0, 0x20]);
    expect(bdev.writes).toBe(0);
    const zeroes = await io.command(io.sqe(0x08, { nsid: 1, cdw12: 7 }));
    expect([zeroes.sct, zeroes.sc]).toEqual([0, 0x20]);
  });

  it('holds the namespace bdev open, removably: deleting the bdev takes the namespace away, as SPDK', async () => {
    const bdev = memoryBdev('Malloc0', mib);
    const { nqn } = await open([bdev]);
    expect(bdev.claims.list()).toEqual([{ type: 'open', holder: `NVMe-oF namespace 1 of ${nqn}` }]);
    expect(() => bdev.claims.assertDeletable()).not.toThrow();
    target!.target.bdevRemoved('Malloc0');
    expect(target!.target.require(nqn).namespaces.size).toBe(0);
    expect(bdev.claims.size).toBe(0);
  });
});

describe('NVMe/TCP controller life', () => {
  it('destroys a controller whose host sends nothing for its keep-alive timeout, and keeps one that sends Keep Alive', async () => {
    const { port, nqn } = await open();
    const silent = await host(port);
    await silent.connectAdmin(nqn, undefined, 300);
    const alive = await host(port);
    await alive.connectAdmin(nqn, undefined, 300);
    const startMs = Date.now();
    while (Date.now() - startMs < 900) {
      expect((await alive.command(alive.sqe(0x18))).sc).toBe(0);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await silent.waitClosed(100);
    expect(alive.closed).toBe(false);
    expect(target!.target.require(nqn).controllerCount()).toBe(1);
  });

  it('completes a held Asynchronous Event Request when a namespace is added, and lists it as changed', async () => {
    const { port, nqn } = await open();
    const admin = await host(port);
    await admin.connectAdmin(nqn);
    const aer = admin.sqe(0x0c);
    admin.write(admin.capsule(aer));
    await new Promise((resolve) => setTimeout(resolve, 50));
    target!.target.require(nqn).addNamespace(memoryBdev('Malloc1', mib), {});
    const event = await admin.next();
    expect(event?.type).toBe(0x05);
    expect(event!.bytes.readUInt16LE(20)).toBe(aer.readUInt16LE(2));
    // Notice (type 2), namespace attribute changed (0), log page 04h.
    expect(event!.bytes.readUInt32LE(8)).toBe(0x00040002);
    const log = await admin.command(admin.sqe(0x02, { cdw10: 0x04 | (((4096 / 4) - 1) << 16), transferBytes: 4096 }));
    expect(Buffer.concat(log.data).readUInt32LE(0)).toBe(2);
  });

  it('terminates a host that sends more commands than its queue has entries', async () => {
    const { port, nqn } = await open();
    const admin = await host(port);
    const cntlid = await admin.connectAdmin(nqn);
    const io = await ioQueue(port, nqn, cntlid);
    // The queue has 32 entries (SQSIZE 31): 40 one-block reads sent at once overflow it.
    const burst = Buffer.concat(Array.from({ length: 40 }, () => io.capsule(io.sqe(0x02, { nsid: 1, transferBytes: 512 }))));
    io.write(burst);
    for (;;) {
      const pdu = await io.next();
      if (pdu === undefined) throw new Error('closed without a C2HTermReq');
      if (pdu.type === 0x03) {
        expect(pdu.bytes.readUInt16LE(8)).toBe(0x02);
        break;
      }
    }
    await io.waitClosed();
  });

  it('terminates on H2CData outside the range its R2T asked for', async () => {
    const { port, nqn } = await open();
    const admin = await host(port);
    const io = await ioQueue(port, nqn, await admin.connectAdmin(nqn));
    io.write(io.capsule(io.sqe(0x01, { nsid: 1, cdw12: 15, transferBytes: 8192 })));
    const r2t = await io.next();
    expect(r2t?.type).toBe(0x09);
    const ttag = r2t!.bytes.readUInt16LE(10);
    const pdu = Buffer.alloc(24 + 4096);
    pdu.writeUInt8(0x06, 0);
    pdu.writeUInt8(0x04, 1);
    pdu.writeUInt8(24, 2);
    pdu.writeUInt8(24, 3);
    pdu.writeUInt32LE(pdu.length, 4);
    pdu.writeUInt16LE(r2t!.bytes.readUInt16LE(8), 8);
    pdu.writeUInt16LE(ttag, 10);
    pdu.writeUInt32LE(6144, 12); // DATAO past what was received so far (0), and running past 8192
    pdu.writeUInt32LE(4096, 16);
    io.write(pdu);
    await expectTerminated(io, 0x04);
  });

  it('disconnects the hosts of a removed listener and keeps the port for another subsystem on it', async () => {
    const { port, nqn } = await open();
    const other = 'nqn.2016-06.io.spdk:other';
    target!.target.createSubsystem({ nqn: other, serialNumber: 'S2', modelNumber: 'M2', allowAnyHost: true, maxNamespaces: 4, minCntlid: 1, maxCntlid: 0xffef, anaReporting: false });
    const address = { trtype: 'TCP' as const, adrfam: 'IPv4' as const, traddr: '127.0.0.1', trsvcid: String(port) };
    await target!.target.addListener(other, address);
    const first = await host(port);
    await first.connectAdmin(nqn);
    const second = await host(port);
    await second.connectAdmin(other);
    await target!.target.removeListener(nqn, address);
    await first.waitClosed();
    expect(second.closed).toBe(false);
    expect((await second.command(second.sqe(0x18))).sc).toBe(0);
    // The port still serves the other subsystem, and no longer the first.
    const late = await host(port);
    await late.icReq();
    const refused = await late.command(...late.connectCommand(0, nqn, 'nqn.2014-08.org.nvmexpress:uuid:h'));
    expect([refused.sct, refused.sc]).toEqual([1, 0x82]);
  });
});
