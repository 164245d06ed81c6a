// Goal: a walk's read-ahead that began on the addon's thread can be ended early (halt): the job
// stops at its next piece and reports ECANCELED instead of a CRC, nothing stays running, and
// crcDeviceRange turns that into IoAbortedError; a job still queued is cancel()'s, not halt()'s.
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crcDeviceRange } from '../../src/checksum/clusterCrc.ts';
import { nativeCrc } from '../../src/checksum/native.ts';
import { FileDevice } from '../../src/device/fileDevice.ts';
import { IoAbortedError } from '../../src/device/ioQueue.ts';
import { QueuedDevice } from '../../src/device/queuedDevice.ts';

// Sparse: reading its holes costs no disk, but still takes the thread a while (a copy per piece).
const fileBytes = 8 * 1024 * 1024 * 1024;
const native = nativeCrc?.halt ? nativeCrc : null;
let dir = '';
let path = '';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lvnode-halt-'));
  path = join(dir, 'sparse.img');
  const handle = await open(path, 'w');
  await handle.truncate(fileBytes);
  await handle.close();
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function untilRunning(): Promise<void> {
  while (native!.backgroundStats().running === 0) await new Promise((resolve) => setImmediate(resolve));
}

describe.skipIf(native === null)('native halt', () => {
  it('ends a running file job early with ECANCELED and leaves nothing running', async () => {
    native!.configureBackground({ threads: 1, policy: 'normal' });
    const handle = await open(path, 'r');
    try {
      const before = native!.backgroundStats();
      let jobId = -1;
      const outcome = new Promise<{ error: NodeJS.ErrnoException | null; crc: bigint }>((resolve) => {
        jobId = native!.submitFileCrc(handle.fd, 0, fileBytes, (error, crc) => resolve({ error, crc }));
      });
      await untilRunning();
      expect(native!.cancel(jobId)).toBe(false); // running: cancel cannot drop it
      expect(native!.halt!(jobId)).toBe(true);
      const { error } = await outcome;
      expect(error?.code).toBe('ECANCELED');
      const after = native!.backgroundStats();
      expect(after).toMatchObject({ running: 0, queued: 0 });
      // A halted job's bytes are not counted as CRC'd.
      expect(after.bytes).toBe(before.bytes);
      expect(native!.halt!(jobId)).toBe(false); // delivered: nothing left to halt
    } finally {
      await handle.close();
    }
  });

  it('makes crcDeviceRange reject with IoAbortedError when halted after its read began', async () => {
    native!.configureBackground({ threads: 1, policy: 'normal' });
    const device = new QueuedDevice(await FileDevice.open(path, 512, { readOnly: true }));
    try {
      const halt = new AbortController();
      const range = crcDeviceRange(device, 0, fileBytes, undefined, halt.signal);
      await untilRunning();
      halt.abort();
      await expect(range).rejects.toBeInstanceOf(IoAbortedError);
      expect(native!.backgroundStats()).toMatchObject({ running: 0, queued: 0 });
      // Without a halt the same device still gives a value: nothing was left broken.
      await expect(crcDeviceRange(device, 0, 4096)).resolves.toBeTypeOf('bigint');
    } finally {
      await device.close();
    }
  });
});
