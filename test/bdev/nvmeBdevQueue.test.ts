// Goal: an NVMe bdev keeps SPEC §6.6's two classes as a local device does: a background read (a
// checksum walk or copy reading an lvstore on it) is not sent to the controller while client I/O
// is in flight, and goes once it is done; a background read still waiting is called off by its
// signal. Unit test: the namespace's wire side is a fake that holds reads until released.
import { describe, expect, it } from 'vitest';
import { NvmeBdev, type NvmeNamespaceIo } from '../../src/bdev/nvmeBdev.ts';
import { IoAbortedError } from '../../src/device/ioQueue.ts';

function heldNamespace() {
  const sent: string[] = [];
  const releases: Array<() => void> = [];
  const held = (what: string) => {
    sent.push(what);
    return new Promise<void>((resolve) => releases.push(resolve));
  };
  const io: NvmeNamespaceIo = {
    nsid: 1,
    blockSizeBytes: 512,
    blockCount: 2048,
    uuid: undefined,
    transferBytesMax: 128 * 1024,
    writeProtected: false,
    read: (lba) => held(`read ${lba}`),
    write: (lba) => held(`write ${lba}`),
    flush: () => held('flush'),
    writeZeroes: (lba) => held(`zeroes ${lba}`),
    deallocate: (lba) => held(`deallocate ${lba}`),
  };
  return { io, sent, releaseAll: () => releases.splice(0).forEach((release) => release()) };
}

const turns = async (count: number) => {
  for (let turn = 0; turn < count; turn++) await new Promise((resolve) => setImmediate(resolve));
};

describe('NVMe bdev I/O classes', () => {
  it('holds a background read while client I/O is in flight, then sends it', async () => {
    const { io, sent, releaseAll } = heldNamespace();
    const bdev = new NvmeBdev('Nvme0n1', '00000000-0000-4000-8000-000000000001', io);
    const client = bdev.write(0, Buffer.alloc(512));
    const background = bdev.readInto(4096, Buffer.alloc(512), { background: true });
    await turns(5);
    expect(sent).toEqual(['write 0']);
    expect(bdev.queueStats()).toMatchObject({ foreground_in_flight: 1, background_waiting: 1 });
    releaseAll();
    await client;
    await turns(5);
    expect(sent).toEqual(['write 0', 'read 8']);
    releaseAll();
    await background;
  });

  it('sends a client read at once beside a background read, and calls off a waiting one', async () => {
    const { io, sent, releaseAll } = heldNamespace();
    const bdev = new NvmeBdev('Nvme0n1', '00000000-0000-4000-8000-000000000001', io);
    const client = bdev.readInto(0, Buffer.alloc(512));
    const abort = new AbortController();
    const waiting = bdev.readInto(512, Buffer.alloc(512), { background: true, signal: abort.signal });
    abort.abort();
    await expect(waiting).rejects.toBeInstanceOf(IoAbortedError);
    releaseAll();
    await client;
    // Nothing but the client read reached the controller; a background read on an idle bdev goes at once.
    const lone = bdev.readInto(1024, Buffer.alloc(512), { background: true });
    await turns(2);
    expect(sent).toEqual(['read 0', 'read 2']);
    releaseAll();
    await lone;
  });
});
