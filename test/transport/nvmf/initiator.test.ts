// Goal: lvnode's NVMe/TCP initiator against lvnode's own target in-process: bytes written through
// the NvmeBdev land at the right place of the target's in-memory bdev (read there directly, not
// through the initiator), reads come back, Write Zeroes and deallocate read back zeros, a range
// past the end never reaches the target, digests work, and a target that misbehaves ends the
// connection without taking the node down.
import { createServer } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InspectionHub } from '../../../src/actors/inspector.ts';
import { type NvmeAttachRequest, NvmeControllers } from '../../../src/actors/nvmeControllers.ts';
import { Registry } from '../../../src/actors/registry.ts';
import { readBdev } from '../../../src/bdev/bdev.ts';
import type { NvmeBdev } from '../../../src/bdev/nvmeBdev.ts';
import { NvmfController } from '../../../src/transport/nvmf/controller.ts';
import { tcpNvmeConnector } from '../../../src/transport/nvmf/initiator/hostController.ts';
import { attachRequest, errnoOf, memoryBdev, randomData, type StandaloneTarget, startTarget } from './harness.ts';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const request = attachRequest;

async function attached(sizeBytes: number, overrides: Partial<NvmeAttachRequest> = {}) {
  const backing = memoryBdev('mem0', sizeBytes);
  const target = await startTarget({ bdevs: [backing] });
  cleanups.push(() => target.close());
  const registry = new Registry();
  const controllers = new NvmeControllers(registry, new InspectionHub());
  const names = await controllers.attach(request(target, overrides), tcpNvmeConnector);
  cleanups.push(() => controllers.detachAll());
  const bdev = registry.findBdev(names[0]!) as NvmeBdev;
  return { backing, target, registry, controllers, names, bdev };
}

describe('NVMe/TCP initiator against lvnode’s own target', () => {
  it('attaches one bdev per namespace, named <controller>n<nsid>, with the namespace’s size and UUID', async () => {
    const { names, bdev, target, controllers } = await attached(4 * 1024 * 1024);
    expect(names).toEqual(['Nvme0n1']);
    expect(bdev.kind).toBe('nvme');
    expect(bdev.sizeBytes()).toBe(4 * 1024 * 1024);
    expect(bdev.blockSizeBytes).toBe(512);
    expect(bdev.uuid).toBe(target.target.require(target.nqn).namespaces.get(1)!.uuid);
    expect(controllers.lookup('Nvme0')!.actor.getSnapshot().value).toBe('enabled');
  });

  it('waits for CSTS.RDY after setting CC.EN before it sends anything else', async () => {
    // The target answers "not ready" to the first three CSTS reads after enabling: a host that does
    // not wait would read CSTS once and go on.
    const original = NvmfController.prototype.propertyGet;
    let notReadyLeft = 3;
    let cstsReads = 0;
    const spy = vi.spyOn(NvmfController.prototype, 'propertyGet').mockImplementation(function (this: NvmfController, offset: number, eightBytes: boolean) {
      const value = original.call(this, offset, eightBytes);
      if (offset !== 0x1c || value === undefined) return value;
      cstsReads++;
      if ((value & 1n) === 1n && notReadyLeft > 0) {
        notReadyLeft--;
        return value & ~1n;
      }
      return value;
    });
    try {
      await attached(1024 * 1024);
    } finally {
      spy.mockRestore();
    }
    expect(notReadyLeft).toBe(0);
    expect(cstsReads).toBe(4);
  });

  it('writes known bytes where the target’s bdev holds them, across in-capsule, R2T and MDTS-split sizes', async () => {
    const { backing, bdev } = await attached(4 * 1024 * 1024);
    // 512 B goes in the capsule, 64 KiB through R2T, 384 KiB is split at the target's 128 KiB MDTS.
    const cases = [
      { offsetBytes: 512, bytes: 512 },
      { offsetBytes: 65536 + 4096, bytes: 65536 },
      { offsetBytes: 1024 * 1024 + 512, bytes: 384 * 1024 },
    ];
    for (const [index, { offsetBytes, bytes }] of cases.entries()) {
      const data = randomData(index + 1, bytes);
      await bdev.write(offsetBytes, data);
      expect((await readBdev(backing, offsetBytes, bytes)).equals(data)).toBe(true);
      // What is around it stayed zero: the SLBA was the right one.
      expect((await readBdev(backing, offsetBytes - 512, 512)).every((byte) => byte === 0)).toBe(true);
      expect((await readBdev(bdev, offsetBytes, bytes)).equals(data)).toBe(true);
    }
    await bdev.flush();
  });

  it('reads what the target’s bdev holds, at the right offset, split at MDTS', async () => {
    const { backing, bdev } = await attached(4 * 1024 * 1024);
    const data = randomData(7, 512 * 1024);
    await backing.write(1024 * 1024, data);
    expect((await readBdev(bdev, 1024 * 1024, data.length)).equals(data)).toBe(true);
    expect((await readBdev(bdev, 1024 * 1024 + 4096, 4096)).equals(data.subarray(4096, 8192))).toBe(true);
  });

  it('reads zeros after Write Zeroes and after deallocate, and leaves the neighbours', async () => {
    const { backing, bdev } = await attached(1024 * 1024);
    const data = randomData(3, 64 * 1024);
    await bdev.write(0, data);
    await bdev.writeZeroes(4096, 8192);
    await bdev.unmap(32768, 4096);
    const expected = Buffer.from(data);
    expected.fill(0, 4096, 4096 + 8192);
    expected.fill(0, 32768, 32768 + 4096);
    expect((await readBdev(backing, 0, data.length)).equals(expected)).toBe(true);
    expect((await readBdev(bdev, 0, data.length)).equals(expected)).toBe(true);
  });

  it('refuses I/O past the end or unaligned with EINVAL before it reaches the target', async () => {
    const { backing, bdev } = await attached(1024 * 1024);
    const before = { reads: backing.reads, writes: backing.writes };
    expect(await errnoOf(bdev.write(1024 * 1024 - 512, Buffer.alloc(1024)))).toBe('EINVAL');
    expect(await errnoOf(bdev.readInto(1024 * 1024, Buffer.alloc(512)))).toBe('EINVAL');
    expect(await errnoOf(bdev.readInto(100, Buffer.alloc(512)))).toBe('EINVAL');
    expect(await errnoOf(bdev.writeZeroes(1024 * 1024 - 512, 1024))).toBe('EINVAL');
    expect({ reads: backing.reads, writes: backing.writes }).toEqual(before);
  });

  it('keeps 64 commands in flight on one queue and completes each with its own data', async () => {
    const { bdev } = await attached(4 * 1024 * 1024);
    const pieces = Array.from({ length: 64 }, (_, index) => randomData(100 + index, 4096));
    await Promise.all(pieces.map((piece, index) => bdev.write(index * 8192, piece)));
    const read = await Promise.all(pieces.map((_, index) => readBdev(bdev, index * 8192, 4096)));
    read.forEach((data, index) => expect(data.equals(pieces[index]!)).toBe(true));
  });

  it('moves the same bytes with header and data digests on', async () => {
    const { backing, bdev } = await attached(1024 * 1024, { headerDigest: true, dataDigest: true });
    const data = randomData(11, 40 * 1024);
    await bdev.write(8192, data);
    expect((await readBdev(backing, 8192, data.length)).equals(data)).toBe(true);
    expect((await readBdev(bdev, 8192, data.length)).equals(data)).toBe(true);
  });

  it('fails attach with EIO (SPDK’s -5) for an unknown subsystem, and leaves no controller or bdev behind', async () => {
    const backing = memoryBdev('mem0', 1024 * 1024);
    const target = await startTarget({ bdevs: [backing] });
    cleanups.push(() => target.close());
    const registry = new Registry();
    const controllers = new NvmeControllers(registry, new InspectionHub());
    const wrong = request(target);
    expect(await errnoOf(controllers.attach({ ...wrong, trid: { ...wrong.trid, subnqn: 'nqn.2016-06.io.spdk:nothere' } }, tcpNvmeConnector))).toBe('EIO');
    expect(controllers.list()).toEqual([]);
    expect(registry.moduleBdevs.size).toBe(0);
  });

  it('refuses detach with EBUSY while a namespace bdev is held, and takes the bdevs away after', async () => {
    const { bdev, registry, controllers } = await attached(1024 * 1024);
    const hold = bdev.claims.open('NBD export test');
    expect(await errnoOf(controllers.detach('Nvme0'))).toBe('EBUSY');
    hold.release();
    const actor = controllers.lookup('Nvme0')!.actor;
    await controllers.detach('Nvme0');
    expect(actor.getSnapshot().value).toBe('detached');
    expect(registry.lookupBdev('Nvme0n1')).toBeUndefined();
    expect(await errnoOf(controllers.detach('Nvme0'))).toBe('ENODEV');
  });

  it('fails the controller when the target goes away: I/O answers EIO, the process goes on', async () => {
    const { bdev, target, controllers } = await attached(1024 * 1024);
    await target.close();
    await expect.poll(() => controllers.lookup('Nvme0')!.actor.getSnapshot().value).toBe('failed');
    expect(await errnoOf(bdev.readInto(0, Buffer.alloc(512)))).toBe('EIO');
  });

  it('ends the connection cleanly on PDUs a target must not send, and attach answers EIO', async () => {
    // A fake target: a correct ICResp, then each case's bad PDU in answer to the first command.
    const icResp = Buffer.alloc(128);
    icResp.writeUInt8(0x01, 0);
    icResp.writeUInt8(128, 2);
    icResp.writeUInt32LE(128, 4);
    icResp.writeUInt32LE(131072, 12);
    const completionFor = (cid: number) => {
      const pdu = Buffer.alloc(24);
      pdu.writeUInt8(0x05, 0);
      pdu.writeUInt8(24, 2);
      pdu.writeUInt32LE(24, 4);
      pdu.writeUInt16LE(cid, 20);
      return pdu;
    };
    const cases: Array<{ name: string; answer: (cid: number) => Buffer }> = [
      { name: 'a completion for a command id not in flight', answer: (cid) => completionFor(cid + 1) },
      { name: 'a PDU length past the limit', answer: (cid) => Buffer.concat([completionFor(cid).subarray(0, 4), Buffer.from([0xff, 0xff, 0xff, 0x7f])]) },
      { name: 'a header length that is not the type’s', answer: (cid) => Object.assign(completionFor(cid), { 2: 30 }) },
      { name: 'data for a command that reads nothing', answer: (cid) => Buffer.concat([Buffer.from([0x07, 0x0c, 24, 24, 32, 0, 0, 0]), Buffer.from([cid & 0xff, cid >> 8]), Buffer.alloc(14), Buffer.alloc(8)]) },
      { name: 'an unknown PDU type', answer: () => Buffer.from([0x42, 0, 8, 0, 8, 0, 0, 0]) },
    ];
    for (const { name, answer } of cases) {
      const server = createServer((socket) => {
        let buffered = Buffer.alloc(0);
        let answered = false;
        socket.on('error', () => undefined);
        socket.on('data', (chunk) => {
          buffered = Buffer.concat([buffered, chunk]);
          if (buffered.length >= 128 && buffered[0] === 0x00 && !answered) {
            socket.write(icResp);
            buffered = buffered.subarray(128);
            answered = true;
          }
          if (answered && buffered.length >= 72) {
            socket.write(answer(buffered.readUInt16LE(10)));
            buffered = Buffer.alloc(0);
          }
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as { port: number }).port;
      const controllers = new NvmeControllers(new Registry(), new InspectionHub());
      const fake = { port, nqn: 'nqn.2016-06.io.spdk:fake' } as StandaloneTarget;
      try {
        expect(await errnoOf(controllers.attach(request(fake), tcpNvmeConnector)), name).toBe('EIO');
        expect(controllers.list(), name).toEqual([]);
      } finally {
        server.close();
      }
    }
  });
});
