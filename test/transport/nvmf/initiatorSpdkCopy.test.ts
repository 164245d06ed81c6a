// Goal (issue 23): lvnode's NVMe/TCP bdevs work where any bdev does, against a target nobody here
// wrote. spdk_tgt --no-huge exports a malloc namespace and an lvol namespace; a real node attaches
// both; a snapshot is shallow-copied onto the lvol namespace and an lvol is cloned from the malloc
// one (external snapshot). The oracle is SPDK's own initiator (spdk_dd), which writes the bytes the
// clone must show and reads back what the copy wrote, so lvnode's initiator is never checked only
// against itself. Then spdk_tgt is killed in the middle of a copy: the copy fails cleanly (state
// error), the controller is deleted past its loss timeout, the source is untouched and the node
// keeps answering.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../../src/cli/rpcClient.ts';
import { type TestNode, startTestNode } from '../../integration/helpers.ts';
import { connectSpdkRpc, freePort, killAllSpdk, skipSpdk, spdkDd, startSpdk, writeSpdkDdConfig } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'lvnode-initiator-spdk-copy-'));
afterAll(() => {
  killAllSpdk();
  rmSync(work, { recursive: true, force: true });
});

const mib = 1024 * 1024;
// node_lvol_read answers at most 512 KiB per call, and node_lvol_write takes as much.
const pieceBytes = 512 * 1024;
const nqn = 'nqn.2016-06.io.spdk:lvnode-copy';

async function readLvol(client: RpcClient, name: string, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let done = 0; done < length; done += pieceBytes) {
    parts.push(Buffer.from(await client.call<string>('node_lvol_read', { name, offset: offset + done, length: Math.min(pieceBytes, length - done) }), 'base64'));
  }
  return Buffer.concat(parts);
}

async function writeLvol(client: RpcClient, name: string, offset: number, data: Buffer): Promise<void> {
  for (let done = 0; done < data.length; done += pieceBytes) {
    await client.call('node_lvol_write', { name, offset: offset + done, data: data.subarray(done, done + pieceBytes).toString('base64') });
  }
}

async function copyEnd(client: RpcClient, operationId: number): Promise<Record<string, unknown>> {
  for (;;) {
    const status = await client.call<Record<string, unknown>>('bdev_lvol_check_shallow_copy', { operation_id: operationId });
    if (status.state !== 'in progress') return status;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe.skipIf(skipSpdk)('NVMe bdevs of spdk_tgt in lvnode: copies, clones, a target killed mid-copy', () => {
  it('copies a snapshot onto an SPDK lvol namespace and clones from an SPDK malloc namespace, with SPDK’s initiator as the oracle; a kill mid-copy fails the copy cleanly', async () => {
    const socketPath = join(work, 'spdk.sock');
    const spdk = startSpdk('spdk_tgt', ['--no-huge', '-s', '1024', '-m', '0x1', '--no-pci', '--disable-cpumask-locks', '-r', socketPath]);
    let node: TestNode | undefined;
    try {
      const tgt = await connectSpdkRpc(socketPath, spdk.output);
      await tgt.call('bdev_malloc_create', { name: 'Malloc0', num_blocks: (8 * mib) / 512, block_size: 512 });
      await tgt.call('bdev_malloc_create', { name: 'Malloc1', num_blocks: (64 * mib) / 512, block_size: 512 });
      await tgt.call('bdev_lvol_create_lvstore', { bdev_name: 'Malloc1', lvs_name: 'slvs', cluster_sz: 4 * mib });
      await tgt.call('bdev_lvol_create', { lvs_name: 'slvs', lvol_name: 'dst', size_in_mib: 32, thin_provision: true });
      const port = String(await freePort());
      await tgt.call('nvmf_create_transport', { trtype: 'TCP' });
      await tgt.call('nvmf_create_subsystem', { nqn, allow_any_host: true });
      expect(await tgt.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'Malloc0' } })).toBe(1);
      expect(await tgt.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'slvs/dst' } })).toBe(2);
      await tgt.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } });

      // SPDK's initiator writes the bytes the clone will read through to (nsid 1, the malloc bdev).
      const ddAttach = { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn };
      const ddConfig = writeSpdkDdConfig(join(work, 'dd.json'), ddAttach);
      const base = randomBytes(8 * mib);
      writeFileSync(join(work, 'base.bin'), base);
      await spdkDd(ddConfig, `--if=${join(work, 'base.bin')}`, '--ob=Nvme0n1');

      node = await startTestNode({ diskBytes: 256 * mib });
      const client = await node.connect();
      const attach = { ...ddAttach, name: 'Spdk0', ctrlr_loss_timeout_sec: 2, reconnect_delay_sec: 1 };
      expect(await client.call('bdev_nvme_attach_controller', attach)).toEqual(['Spdk0n1', 'Spdk0n2']);

      // A clone whose external snapshot is SPDK's malloc namespace reads its bytes; its own writes stay its own.
      await client.call('bdev_lvol_clone_bdev', { bdev: 'Spdk0n1', lvs_name: 'lvs0', clone_name: 'esnap' });
      expect((await readLvol(client, 'lvs0/esnap', 0, base.length)).equals(base)).toBe(true);
      const own = randomBytes(64 * 1024);
      await writeLvol(client, 'lvs0/esnap', 4 * mib, own);
      const expected = Buffer.from(base);
      own.copy(expected, 4 * mib);
      expect((await readLvol(client, 'lvs0/esnap', 0, base.length)).equals(expected)).toBe(true);

      // A snapshot of three clusters (one left a hole) shallow-copied onto SPDK's lvol namespace.
      await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'src', size_in_mib: 32, thin_provision: true });
      const clusters = new Map([[0, randomBytes(4 * mib)], [2, randomBytes(4 * mib)], [5, randomBytes(4 * mib)]]);
      for (const [index, bytes] of clusters) await writeLvol(client, 'lvs0/src', index * 4 * mib, bytes);
      await client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/src', snapshot_name: 'snap' });
      const copy = await client.call<{ operation_id: number }>('bdev_lvol_start_shallow_copy', { src_lvol_name: 'lvs0/snap', dst_bdev_name: 'Spdk0n2' });
      expect(await copyEnd(client, copy.operation_id)).toMatchObject({ state: 'complete', copied_clusters: 3, total_clusters: 3 });
      // Read back by SPDK's initiator, not lvnode's.
      const readBack = join(work, 'dst.bin');
      await spdkDd(ddConfig, '--ib=Nvme0n2', `--of=${readBack}`, ['--count=32']);
      const far = readFileSync(readBack);
      for (let index = 0; index < 8; index++) {
        const slice = far.subarray(index * 4 * mib, (index + 1) * 4 * mib);
        const want = clusters.get(index) ?? Buffer.alloc(4 * mib);
        expect(slice.equals(want), `cluster ${index}`).toBe(true);
      }

      // Killed mid-copy: a second copy, slowed by a QoS limit on the NVMe bdev so it is in flight.
      await client.call('bdev_set_qos_limit', { name: 'Spdk0n2', rw_mbytes_per_sec: 4 });
      const slow = await client.call<{ operation_id: number }>('bdev_lvol_start_shallow_copy', { src_lvol_name: 'lvs0/snap', dst_bdev_name: 'Spdk0n2' });
      for (;;) {
        const status = await client.call<Record<string, unknown>>('bdev_lvol_check_shallow_copy', { operation_id: slow.operation_id });
        expect(status.state).toBe('in progress');
        if ((status.copied_clusters as number) >= 1) break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await spdk.stop();
      const failed = await copyEnd(client, slow.operation_id);
      expect(failed).toMatchObject({ state: 'error' });
      expect((failed.copied_clusters as number) < 3).toBe(true);
      // Past ctrlr_loss_timeout_sec the controller and its bdevs are gone, as SPDK deletes them.
      await expect.poll(() => client.call('bdev_nvme_get_controllers', {}), { timeout: 15_000 }).toEqual([]);
      // The source is untouched, and the node answers.
      for (const [index, bytes] of clusters) expect((await readLvol(client, 'lvs0/snap', index * 4 * mib, 4 * mib)).equals(bytes), `snapshot cluster ${index}`).toBe(true);
      expect(await client.call<unknown[]>('bdev_lvol_get_lvols', {})).not.toHaveLength(0);
    } finally {
      await node?.close();
      await spdk.stop();
    }
  }, 120_000);
});
