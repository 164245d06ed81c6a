// Goal: the crash-simulating device keeps exactly what a real machine would after kill -9 or a power loss.
import { describe, expect, it } from 'vitest';
import { CrashableDevice, DeviceCrashedError } from '../../src/device/crashableDevice.ts';

const blockBytes = 512;

function filled(blocks: number, byte: number): Buffer {
  return Buffer.alloc(blocks * blockBytes, byte);
}

async function readBlocks(device: CrashableDevice, offsetBytes: number, blocks: number): Promise<Buffer> {
  const target = Buffer.alloc(blocks * blockBytes);
  await device.readInto(target, offsetBytes);
  return target;
}

describe('CrashableDevice after a process crash', () => {
  it('keeps every written byte, flushed or not, and a later power loss can still drop the unflushed ones', async () => {
    const device = new CrashableDevice(4 * 1024 * 1024, blockBytes);
    await device.write(0, filled(2, 0x11));
    await device.flush();
    await device.write(2 * 1024 * 1024, filled(2, 0x22));
    const next = await device.afterProcessCrash();
    expect(await readBlocks(next, 0, 2)).toEqual(filled(2, 0x11));
    expect(await readBlocks(next, 2 * 1024 * 1024, 2)).toEqual(filled(2, 0x22));
    // The kernel kept the unflushed write, but it is still volatile.
    const powered = await next.afterPowerLoss();
    expect(await readBlocks(powered, 0, 2)).toEqual(filled(2, 0x11));
    expect(await readBlocks(powered, 2 * 1024 * 1024, 2)).toEqual(filled(2, 0));
  });

  it('fails every later I/O of the crashed device, so a dead process writes nothing', async () => {
    const device = new CrashableDevice(1024 * 1024, blockBytes);
    const next = await device.afterProcessCrash();
    await expect(device.write(0, filled(1, 0x33))).rejects.toBeInstanceOf(DeviceCrashedError);
    await expect(device.readInto(Buffer.alloc(blockBytes), 0)).rejects.toBeInstanceOf(DeviceCrashedError);
    await expect(device.flush()).rejects.toBeInstanceOf(DeviceCrashedError);
    expect(await readBlocks(next, 0, 1)).toEqual(filled(1, 0));
  });
});

describe('CrashableDevice after a power loss', () => {
  it('keeps flushed writes always, and each unflushed block as old or new content, never anything else', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const device = new CrashableDevice(1024 * 1024, blockBytes);
      await device.write(0, filled(8, 0x01));
      await device.flush();
      await device.write(0, filled(8, 0x02));
      await device.write(8 * blockBytes, filled(8, 0x03));
      device.halt();
      const after = await device.afterPowerLoss({ seed, tear: 'blocks' });
      const bytes = await readBlocks(after, 0, 16);
      for (let block = 0; block < 16; block++) {
        const content = bytes.subarray(block * blockBytes, (block + 1) * blockBytes);
        const allowed = block < 8 ? [0x01, 0x02] : [0x00, 0x03];
        expect(allowed.some((byte) => content.equals(filled(1, byte))), `seed ${seed} block ${block}`).toBe(true);
      }
    }
  });

  it('applies concurrent flushes in order: a block keeps its last flushed content', async () => {
    // Goal: two flushes in flight must not let the earlier one's older write land last.
    const device = new CrashableDevice(1024 * 1024, blockBytes);
    for (let round = 0; round < 20; round++) {
      // The earlier flush has more writes ahead of its write to block 0 than the later one.
      for (let extra = 0; extra < round % 5; extra++) await device.write(blockBytes * (extra + 1), filled(1, 0x60));
      await device.write(0, filled(1, 0x10 + round));
      const first = device.flush();
      await device.write(0, filled(1, 0x90 + round));
      const second = device.flush();
      await Promise.all([first, second]);
      expect(await readBlocks(await device.afterPowerLoss(), 0, 1), `round ${round}`).toEqual(filled(1, 0x90 + round));
    }
  });

  it("tears a write at any block with tear: 'blocks', not only a prefix", async () => {
    // Over a few seeds some torn write must keep a block without the one before it.
    let nonPrefix = false;
    for (let seed = 1; seed <= 40 && !nonPrefix; seed++) {
      const device = new CrashableDevice(1024 * 1024, blockBytes);
      await device.write(0, filled(8, 0x07));
      const bytes = await readBlocks(await device.afterPowerLoss({ seed, tear: 'blocks' }), 0, 8);
      const kept = [...Array(8).keys()].map((block) => bytes[block * blockBytes] === 0x07);
      nonPrefix = kept.some((isKept, block) => isKept && block > 0 && !kept[block - 1]);
    }
    expect(nonPrefix).toBe(true);
  });
});
