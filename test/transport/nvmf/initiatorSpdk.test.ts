// Goal: lvnode's NVMe/TCP initiator against SPDK's own target (spdk_tgt over a malloc bdev): it
// attaches, writes known bytes (in-capsule, R2T and MDTS-split sizes), reads them back on a second
// controller (its own connection and Identify), with and without digests, keeps them across a
// reset, fails over to a second listener when spdk_tgt drops the first, and detaches. Skipped
// without SPDK's programs, like the other SPDK tests.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InspectionHub } from '../../../src/actors/inspector.ts';
import { type NvmeAttachRequest, NvmeControllers } from '../../../src/actors/nvmeControllers.ts';
import { Registry } from '../../../src/actors/registry.ts';
import { readBdev } from '../../../src/bdev/bdev.ts';
import { tcpNvmeConnector } from '../../../src/transport/nvmf/initiator/hostController.ts';
import { SpdkSocketClient } from '../../spdkSocketClient.ts';
import { connectSpdkRpc, freePort, killAllSpdk, skipSpdk, startSpdk } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'lvnode-initiator-spdk-'));
afterAll(() => {
  killAllSpdk();
  rmSync(work, { recursive: true, force: true });
});


describe.skipIf(skipSpdk)('NVMe/TCP initiator against spdk_tgt', () => {
  it('writes known bytes to an SPDK malloc namespace and reads them back, with and without digests, across a reset and a failover', async () => {
    const socketPath = join(work, 'spdk.sock');
    const spdk = startSpdk('spdk_tgt', ['--no-huge', '-s', '1024', '-m', '0x1', '--no-pci', '--disable-cpumask-locks', '-r', socketPath]);
    const registry = new Registry();
    const controllers = new NvmeControllers(registry, new InspectionHub());
    let rpc: SpdkSocketClient | undefined;
    try {
      rpc = await connectSpdkRpc(socketPath, spdk.output);
      const nqn = 'nqn.2016-06.io.spdk:cnode1';
      const port = String(await freePort());
      await rpc.call('nvmf_create_transport', { trtype: 'TCP' });
      await rpc.call('bdev_malloc_create', { name: 'Malloc0', num_blocks: 16384, block_size: 512 });
      await rpc.call('nvmf_create_subsystem', { nqn, allow_any_host: true });
      await rpc.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'Malloc0' } });
      await rpc.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } });
      const request = (name: string, digests: boolean): NvmeAttachRequest => ({
        name,
        trid: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn },
        // One host NQN per controller: SPDK refuses (-17) a second controller with the same transport ID and host NQN.
        hostnqn: `nqn.2014-08.org.nvmexpress:uuid:lvnode-spdk-test-${name}`,
        headerDigest: digests,
        dataDigest: digests,
        ctrlrLossTimeoutSec: 0,
        reconnectDelaySec: 0,
        fastIoFailTimeoutSec: 0,
        multipath: 'disable',
      });
      expect(await controllers.attach(request('Nvme0', false), tcpNvmeConnector)).toEqual(['Nvme0n1']);
      expect(await controllers.attach(request('Nvme1', true), tcpNvmeConnector)).toEqual(['Nvme1n1']);
      const plain = registry.findBdev('Nvme0n1');
      const digested = registry.findBdev('Nvme1n1');
      expect(plain.sizeBytes()).toBe(16384 * 512);
      expect(plain.uuid).toBe(digested.uuid);
      const cases = [
        { offsetBytes: 512, data: randomBytes(512) },
        { offsetBytes: 65536, data: randomBytes(64 * 1024) },
        { offsetBytes: 1024 * 1024 + 512, data: randomBytes(384 * 1024) },
      ];
      // Written on one controller, read on the other: two connections, each with its own Identify.
      for (const { offsetBytes, data } of cases) await plain.write(offsetBytes, data);
      for (const { offsetBytes, data } of cases) expect((await readBdev(digested, offsetBytes, data.length)).equals(data)).toBe(true);
      await digested.write(4 * 1024 * 1024, cases[2]!.data);
      expect((await readBdev(plain, 4 * 1024 * 1024, cases[2]!.data.length)).equals(cases[2]!.data)).toBe(true);
      await plain.writeZeroes(65536, 4096);
      expect((await readBdev(digested, 65536, 8192)).equals(Buffer.concat([Buffer.alloc(4096), cases[1]!.data.subarray(4096, 8192)]))).toBe(true);
      await plain.flush();

      // Reset (bdev_nvme_reset_controller): the bytes written before read back after it, and
      // bytes written after it read back on the other controller (its own connection).
      const cntlid = controllers.lookup('Nvme0')!.actor.getSnapshot().context.cntlid;
      await controllers.reset('Nvme0');
      expect(controllers.lookup('Nvme0')!.actor.getSnapshot()).toMatchObject({ value: 'enabled', context: { resets: 1 } });
      expect(controllers.lookup('Nvme0')!.actor.getSnapshot().context.cntlid).not.toBe(cntlid);
      // What the namespace holds now: the cases, less the 4 KiB zeroed above.
      const held = cases.map(({ offsetBytes, data }) => ({ offsetBytes, data: offsetBytes === 65536 ? Buffer.concat([Buffer.alloc(4096), data.subarray(4096)]) : data }));
      for (const { offsetBytes, data } of held) expect((await readBdev(plain, offsetBytes, data.length)).equals(data)).toBe(true);
      const afterReset = randomBytes(96 * 1024);
      await plain.write(6 * 1024 * 1024, afterReset);
      expect((await readBdev(digested, 6 * 1024 * 1024, afterReset.length)).equals(afterReset)).toBe(true);

      // Failover: a second listener added as a path; spdk_tgt drops the first (its connections
      // go with it) and the same bytes read back through the second.
      const port2 = String(await freePort());
      await rpc.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port2 } });
      const second = request('Nvme0', false);
      expect(await controllers.attach({ ...second, multipath: 'failover', trid: { ...second.trid, trsvcid: port2 } }, tcpNvmeConnector)).toEqual([]);
      await rpc.call('nvmf_subsystem_remove_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } });
      expect((await readBdev(plain, 6 * 1024 * 1024, afterReset.length)).equals(afterReset)).toBe(true);
      expect(controllers.lookup('Nvme0')!.paths[0]!.trsvcid).toBe(port2);
      expect(controllers.lookup('Nvme0')!.actor.getSnapshot().value).toBe('enabled');

      await controllers.detach('Nvme0');
      await controllers.detach('Nvme1');
      expect(registry.moduleBdevs.size).toBe(0);
    } finally {
      await controllers.detachAll();
      await rpc?.close();
      await spdk.stop();
    }
  });
});
