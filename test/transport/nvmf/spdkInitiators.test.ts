// lvnode's NVMe/TCP target driven by initiators nobody here wrote: spdk_nvme_perf (random and
// sequential load, digests on, several I/O queues), spdk_tgt's bdev_nvme (attach), spdk_dd
// (write known data, read it back) and spdk_nvme_discover. The oracle for data is the memory
// bdev's own bytes, read past the NVMe path.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connectSpdkRpc, killAllSpdk, memoryBdev, runSpdk, skipSpdk, spdkDd, startSpdk, startTarget, trid, writeSpdkDdConfig } from './harness.ts';

const mib = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), 'lvnode-nvmf-'));
afterAll(() => {
  killAllSpdk();
  rmSync(work, { recursive: true, force: true });
});

/** IOPS and MiB/s from spdk_nvme_perf's Total line. */
function perfTotals(stdout: string): { iops: number; mibPerSec: number } {
  const match = /Total\s*:\s*([\d.]+)\s+([\d.]+)/.exec(stdout);
  if (!match) throw new Error(`no Total line in spdk_nvme_perf output:\n${stdout}`);
  return { iops: Number(match[1]), mibPerSec: Number(match[2]) };
}

describe.skipIf(skipSpdk)('NVMe/TCP target with SPDK initiators', () => {
  it('serves spdk_nvme_perf 4 KiB random read/write at queue depth 128 over two I/O queues with header and data digests', async () => {
    const bdev = memoryBdev('Malloc0', 32 * mib);
    const target = await startTarget({ bdevs: [bdev] });
    try {
      const run = await runSpdk('spdk_nvme_perf', ['--no-huge', '-s', '256', '-c', '0x2', '-q', '128', '-o', '4096', '-w', 'randrw', '-M', '50', '-t', '1', '-P', '2', '-H', '-I', '-r', trid(target.port, target.nqn)]);
      expect(run.code, run.stdout + run.stderr).toBe(0);
      const { iops } = perfTotals(run.stdout);
      expect(iops).toBeGreaterThan(1000);
      // Both directions reached the bdev, not a cache in front of it.
      expect(bdev.reads).toBeGreaterThan(100);
      expect(bdev.writes).toBeGreaterThan(100);
      // spdk_nvme_perf spreads its 128 across the two queues: each held 64 or more at once, never
      // more than the queue's 128 entries allow.
      expect(target.transport.queueDepthPeak()).toBeGreaterThanOrEqual(64);
      expect(target.transport.queueDepthPeak()).toBeLessThanOrEqual(128);
      // Reads took their buffers from the byte budget (4 KiB writes come in the capsule), and gave them back.
      expect(target.transport.payloadFigures().peakBytes).toBeGreaterThan(0);
      expect(target.transport.payloadFigures().inUseBytes).toBe(0);
    } finally {
      await target.close();
    }
  });

  it('serves spdk_nvme_perf 128 KiB sequential writes (R2T/H2CData) and reads (C2HData)', async () => {
    const bdev = memoryBdev('Malloc0', 32 * mib);
    const target = await startTarget({ bdevs: [bdev] });
    try {
      for (const pattern of ['write', 'read']) {
        const run = await runSpdk('spdk_nvme_perf', ['--no-huge', '-s', '256', '-c', '0x2', '-q', '16', '-o', '131072', '-w', pattern, '-t', '1', '-r', trid(target.port, target.nqn)]);
        expect(run.code, run.stdout + run.stderr).toBe(0);
        expect(perfTotals(run.stdout).mibPerSec).toBeGreaterThan(10);
      }
      // The writes' payloads were read from the socket into their commands' buffers, not into the
      // connection's read buffer to be copied out: only the few KiB that come with an H2CData
      // header are (a read stops early while large payloads are awaited).
      const { inPlaceBytes, copiedBytes } = target.transport.payloadFigures();
      expect(inPlaceBytes + copiedBytes).toBeGreaterThan(16 * mib);
      expect(copiedBytes / (inPlaceBytes + copiedBytes)).toBeLessThan(0.1);
      expect(target.transport.payloadFigures().inUseBytes).toBe(0);
    } finally {
      await target.close();
    }
  });

  it('lets spdk_dd write known data through bdev_nvme and read the same bytes back', async () => {
    const bdev = memoryBdev('Malloc0', 16 * mib, { blockSizeBytes: 4096 });
    const target = await startTarget({ bdevs: [bdev] });
    try {
      const config = writeSpdkDdConfig(join(work, 'dd.json'), { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(target.port), subnqn: target.nqn, hdgst: true, ddgst: true });
      const input = join(work, 'in.bin');
      const output = join(work, 'out.bin');
      const known = randomBytes(8 * mib);
      writeFileSync(input, known);
      await spdkDd(config, `--if=${input}`, '--ob=Nvme0n1');
      // The bdev holds exactly the file, read past the NVMe path.
      const stored = Buffer.alloc(known.length);
      await bdev.readInto(0, stored);
      expect(stored.equals(known)).toBe(true);
      await spdkDd(config, '--ib=Nvme0n1', `--of=${output}`, ['--count=8']);
      expect(readFileSync(output).equals(known)).toBe(true);
    } finally {
      await target.close();
    }
  });

  it('is attached by spdk_tgt (bdev_nvme_attach_controller) as a bdev of the namespace size', async () => {
    const bdev = memoryBdev('Malloc0', 8 * mib, { blockSizeBytes: 512 });
    const target = await startTarget({ bdevs: [bdev] });
    const socketPath = join(work, 'spdk.sock');
    const spdk = startSpdk('spdk_tgt', ['--no-huge', '-s', '1024', '-m', '0x2', '--no-pci', '--disable-cpumask-locks', '-r', socketPath]);
    try {
      const client = await connectSpdkRpc(socketPath, spdk.output);
      const names = await client.call<string[]>('bdev_nvme_attach_controller', { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(target.port), subnqn: target.nqn });
      expect(names).toEqual(['Nvme0n1']);
      const [info] = await client.call<Array<{ num_blocks: number; block_size: number; uuid: string }>>('bdev_get_bdevs', { name: 'Nvme0n1' });
      expect(info).toMatchObject({ num_blocks: (8 * mib) / 512, block_size: 512 });
      // The namespace's UUID (Identify descriptors) is the bdev's.
      expect(info!.uuid).toBe(bdev.uuid);
      expect(target.target.require(target.nqn).controllerCount()).toBe(1);
      await client.call('bdev_nvme_detach_controller', { name: 'Nvme0' });
      await client.close();
    } finally {
      await spdk.stop();
      await target.close();
    }
  });

  // spdk_nvme_discover has no --no-huge option and cannot start without hugepages (DPDK's EAL
  // says "Cannot get hugepage information"), so where there are none SPDK's other discovery
  // client is used: spdk_tgt's bdev_nvme_start_discovery reads the discovery log page and
  // attaches every subsystem it lists.
  it('is discovered by spdk_nvme_discover, or by spdk_tgt bdev_nvme_start_discovery without hugepages', async () => {
    const bdev = memoryBdev('Malloc0', 4 * mib);
    const target = await startTarget({ bdevs: [bdev] });
    const socketPath = join(work, 'spdk-discovery.sock');
    let spdk: ReturnType<typeof startSpdk> | undefined;
    try {
      const run = await runSpdk('spdk_nvme_discover', ['-r', trid(target.port)]);
      if (run.code === 0) {
        expect(run.stdout + run.stderr).toContain(target.nqn);
        return;
      }
      expect(run.stdout + run.stderr).toMatch(/hugepage/i);
      spdk = startSpdk('spdk_tgt', ['--no-huge', '-s', '1024', '-m', '0x2', '--no-pci', '--disable-cpumask-locks', '-r', socketPath]);
      const client = await connectSpdkRpc(socketPath, spdk.output);
      await client.call('bdev_nvme_start_discovery', { name: 'disc', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(target.port), wait_for_attach: true });
      const [info] = await client.call<Array<{ name: string; referrals: unknown[]; ctrlrs: Array<{ name: string }> }>>('bdev_nvme_get_discovery_info');
      expect(info!.name).toBe('disc');
      const bdevs = await client.call<Array<{ name: string; uuid: string; num_blocks: number }>>('bdev_get_bdevs');
      // The subsystem the discovery log listed was attached: its namespace is a bdev of spdk_tgt.
      expect(bdevs.map((found) => found.uuid)).toContain(bdev.uuid);
      await client.call('bdev_nvme_stop_discovery', { name: 'disc' });
      await client.close();
    } finally {
      await spdk?.stop();
      await target.close();
    }
  });
});

