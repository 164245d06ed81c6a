// Goal: the NVMe/TCP initiator through a real node and its RPCs: an lvol exposed over lvnode's own
// NVMe-oF target is attached by the same node with bdev_nvme_attach_controller, shows up as the
// bdev Nvme0n1, takes a shallow copy of a snapshot whose bytes then read back from the exposed
// lvol (the far end, read with node_lvol_read, not through the initiator); SPDK's shapes and
// errors; the controller is an inspectable actor; detach removes the bdev.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { seededRandom } from '../seededRandom.ts';
import { freePort } from '../transport/nvmf/harness.ts';
import { type TestNode, rpcError, startTestNode } from './helpers.ts';

let node: TestNode;
let client: RpcClient;
const nqn = 'nqn.2023-01.io.longhorn.spdk:replica-dst';

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 256 * 1024 * 1024, nvmfInsecureTcp: true });
  client = await node.connect();
});

afterAll(async () => {
  await node.close();
});

function randomData(seed: number, bytes: number): Buffer {
  const random = seededRandom(seed);
  return Buffer.from(Array.from({ length: bytes }, () => Math.floor(random() * 256)));
}

async function readLvol(name: string, offset: number, length: number): Promise<Buffer> {
  return Buffer.from(await client.call<string>('node_lvol_read', { name, offset, length }), 'base64');
}

describe('bdev_nvme_attach_controller against the node’s own target', () => {
  it('attaches an exposed lvol as Nvme0n1, copies a snapshot onto it, and the far lvol holds the bytes', async () => {
    const dstUuid = await client.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'dst', size_in_mib: 16, thin_provision: true });
    expect(await client.call('nvmf_create_transport', { trtype: 'TCP' })).toBe(true);
    expect(await client.call('nvmf_create_subsystem', { nqn, allow_any_host: true })).toBe(true);
    expect(await client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: dstUuid } })).toBe(1);
    const port = String(await freePort());
    expect(await client.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } })).toBe(true);

    // As Longhorn's engine attaches a replica.
    const attach = { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn, ctrlr_loss_timeout_sec: 15, reconnect_delay_sec: 2, fast_io_fail_timeout_sec: 10, multipath: 'disable' };
    expect(await client.call('bdev_nvme_attach_controller', attach)).toEqual(['Nvme0n1']);
    expect(await rpcError(client.call('bdev_nvme_attach_controller', attach))).toMatchObject({ code: -114 });
    const [bdev] = await client.call<Array<Record<string, unknown>>>('bdev_get_bdevs', { name: 'Nvme0n1' });
    expect(bdev).toMatchObject({ name: 'Nvme0n1', product_name: 'NVMe disk', block_size: 512, num_blocks: (16 * 1024 * 1024) / 512, uuid: dstUuid, claimed: false });

    const controllers = await client.call<Array<Record<string, unknown>>>('bdev_nvme_get_controllers', {});
    expect(controllers).toEqual([
      {
        name: 'Nvme0',
        ctrlrs: [
          expect.objectContaining({
            state: 'enabled',
            trid: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn },
            cntlid: expect.any(Number),
            host: { nqn: expect.stringMatching(/^nqn\./), addr: '127.0.0.1', svcid: expect.stringMatching(/^\d+$/) },
            ctrlr_loss_timeout_sec: 15,
          }),
        ],
      },
    ]);
    expect(await client.call('bdev_nvme_get_controllers', { name: 'Nvme0' })).toEqual(controllers);
    expect(await rpcError(client.call('bdev_nvme_get_controllers', { name: 'Nvme9' }))).toMatchObject({ code: -19 });
    const { actors } = await client.call<{ actors: Array<{ actor_id: string; kind: string; value: unknown }> }>('inspect_get_actors', {});
    expect(actors).toContainEqual({ actor_id: 'nvme:Nvme0', kind: 'nvme_controller', label: 'NVMe controller Nvme0', value: 'enabled' });

    // A snapshot owning clusters 0 and 2 (4 MiB clusters), copied onto the remote namespace.
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'src', size_in_mib: 16, thin_provision: true });
    const first = randomData(1, 256 * 1024);
    const second = randomData(2, 128 * 1024);
    const secondOffset = 8 * 1024 * 1024 + 4096;
    await client.call('node_lvol_write', { name: 'lvs0/src', offset: 0, data: first.toString('base64') });
    await client.call('node_lvol_write', { name: 'lvs0/src', offset: secondOffset, data: second.toString('base64') });
    await client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/src', snapshot_name: 'snap' });
    const { operation_id } = await client.call<{ operation_id: number }>('bdev_lvol_start_shallow_copy', { src_lvol_name: 'lvs0/snap', dst_bdev_name: 'Nvme0n1' });
    let status: Record<string, unknown>;
    for (;;) {
      status = await client.call<Record<string, unknown>>('bdev_lvol_check_shallow_copy', { operation_id });
      if (status.state !== 'in progress') break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(status).toMatchObject({ state: 'complete', copied_clusters: 2, total_clusters: 2 });
    expect((await readLvol('lvs0/dst', 0, first.length)).equals(first)).toBe(true);
    expect((await readLvol('lvs0/dst', secondOffset, second.length)).equals(second)).toBe(true);
    expect((await readLvol('lvs0/dst', secondOffset - 4096, 4096)).every((byte) => byte === 0)).toBe(true);

    expect(await client.call('bdev_nvme_detach_controller', { name: 'Nvme0' })).toBe(true);
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'Nvme0n1' }))).toMatchObject({ code: -19 });
    expect(await client.call('bdev_nvme_get_controllers', {})).toEqual([]);
    expect(await rpcError(client.call('bdev_nvme_detach_controller', { name: 'Nvme0' }))).toMatchObject({ code: -19 });
  });

  it('removes the bdev of a controller whose target goes away past ctrlr_loss_timeout_sec, and deletes the controller as SPDK does', async () => {
    const lostNqn = 'nqn.2023-01.io.longhorn.spdk:replica-lost';
    const uuid = await client.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'lost', size_in_mib: 4, thin_provision: true });
    await client.call('nvmf_create_transport', { trtype: 'TCP' }).catch(() => undefined);
    expect(await client.call('nvmf_create_subsystem', { nqn: lostNqn, allow_any_host: true })).toBe(true);
    expect(await client.call('nvmf_subsystem_add_ns', { nqn: lostNqn, namespace: { bdev_name: uuid } })).toBe(1);
    const port = String(await freePort());
    expect(await client.call('nvmf_subsystem_add_listener', { nqn: lostNqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port } })).toBe(true);
    const attach = { name: 'Nvme2', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port, subnqn: lostNqn, ctrlr_loss_timeout_sec: 1, reconnect_delay_sec: 1, num_io_queues: 2 };
    expect(await client.call('bdev_nvme_attach_controller', attach)).toEqual(['Nvme2n1']);

    // The target side goes away for good: the controller reconnects in vain, then is deleted.
    expect(await client.call('nvmf_delete_subsystem', { nqn: lostNqn })).toBe(true);
    await expect.poll(async () => client.call('bdev_nvme_get_controllers', {}), { timeout: 10_000 }).toEqual([]);
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'Nvme2n1' }))).toMatchObject({ code: -19 });
    expect(await rpcError(client.call('bdev_nvme_detach_controller', { name: 'Nvme2' }))).toMatchObject({ code: -19 });
  });

  it('answers -19 for a controller that cannot be reached (as spdk_tgt does), and lists nothing after', async () => {
    const port = String(await freePort());
    const refused = await rpcError(client.call('bdev_nvme_attach_controller', { name: 'Nvme1', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn }));
    expect(refused.code).toBe(-19);
    expect(await client.call('bdev_nvme_get_controllers', {})).toEqual([]);
    // SPDK's rules for the reconnect parameters, before anything connects.
    const reconnect = { name: 'Nvme1', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn };
    for (const bad of [
      { ctrlr_loss_timeout_sec: 5 },
      { ctrlr_loss_timeout_sec: -1 },
      { ctrlr_loss_timeout_sec: 5, reconnect_delay_sec: 10 },
      { ctrlr_loss_timeout_sec: 10, reconnect_delay_sec: 2, fast_io_fail_timeout_sec: 1 },
      { ctrlr_loss_timeout_sec: 10, reconnect_delay_sec: 2, fast_io_fail_timeout_sec: 11 },
      { reconnect_delay_sec: 2 },
    ]) {
      expect(await rpcError(client.call('bdev_nvme_attach_controller', { ...reconnect, ...bad })), JSON.stringify(bad)).toMatchObject({ code: -22 });
    }
    expect(await rpcError(client.call('bdev_nvme_attach_controller', { ...reconnect, ctrlr_loss_timeout_sec: -1, reconnect_delay_sec: 1, fast_io_fail_timeout_sec: 1 }))).toMatchObject({ code: -19 });
    expect(await rpcError(client.call('bdev_nvme_attach_controller', { name: 'Nvme1', trtype: 'rdma', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn }))).toMatchObject({ code: -32602 });
  });
});
