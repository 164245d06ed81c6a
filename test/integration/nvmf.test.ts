// Goal: the NVMe-oF RPCs as SPDK clients use them, on both transports (WebSocket and SPDK's Unix
// socket): Longhorn's StartExposeBdev sequence exposes an lvol, SPDK's initiator writes it and the
// node reads the same bytes back through its own RPC; SPDK's result shapes and error texts; a
// served bdev cannot be deleted; listeners stay on loopback without --nvmf-allow-remote.
import { randomBytes } from 'node:crypto';
import { rmSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { SpdkSocketClient } from '../spdkSocketClient.ts';
import { freePort, killAllSpdk, skipSpdk, spdkDd, writeSpdkDdConfig } from '../transport/nvmf/harness.ts';
import { type TestNode, rpcError, startTestNode } from './helpers.ts';

let node: TestNode;
let client: RpcClient;
let spdk: SpdkSocketClient;
const work = mkdtempSync(join(tmpdir(), 'lvnode-nvmf-rpc-'));
const nqn = 'nqn.2023-01.io.longhorn.spdk:vol1';

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 256 * 1024 * 1024, rpcSocket: true, nvmfInsecureTcp: true });
  client = await node.connect();
  spdk = await SpdkSocketClient.connect(node.running.spdkSocket!.path);
});

afterAll(async () => {
  killAllSpdk();
  await spdk?.close();
  await node.close();
  rmSync(work, { recursive: true, force: true });
});

/** The error object of a failed SPDK-socket call. */
async function spdkError(call: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await call;
  } catch (error) {
    return (error as { rpc: { code: number; message: string } }).rpc;
  }
  throw new Error('the call succeeded');
}

describe('NVMe-oF RPCs', () => {
  it('runs Longhorn’s StartExposeBdev sequence on the SPDK socket, with SPDK’s shapes and errors', async () => {
    // go-spdk-helper lists transports first and tolerates "Transport type .* already exists".
    expect(await spdk.call('nvmf_get_transports', {})).toEqual([]);
    expect(await spdk.call('nvmf_create_transport', { trtype: 'TCP' })).toBe(true);
    const again = await spdkError(spdk.call('nvmf_create_transport', { trtype: 'TCP' }));
    expect(again.code).toBe(-32603);
    expect(again.message).toMatch(/Transport type .* already exists/);
    const [transport] = await spdk.call<Array<Record<string, unknown>>>('nvmf_get_transports', { trtype: 'TCP' });
    expect(transport).toMatchObject({ trtype: 'TCP', max_queue_depth: 128, in_capsule_data_size: 4096, max_io_size: 131072, c2h_success: true });

    const lvolUuid = await spdk.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol1', size_in_mib: 16, thin_provision: true });
    expect(await spdk.call('nvmf_create_subsystem', { nqn, allow_any_host: true })).toBe(true);
    expect(await spdk.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: lvolUuid, nguid: '00112233445566778899aabbccddeeff' } })).toBe(1);
    const port = await freePort();
    const listenAddress = { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(port) };
    expect(await spdk.call('nvmf_subsystem_add_listener', { nqn, listen_address: listenAddress })).toBe(true);
    // As spdk_tgt (Longhorn's fork) answers for a subsystem without ANA reporting (checked by hand).
    expect(await spdkError(spdk.call('nvmf_subsystem_listener_set_ana_state', { nqn, listen_address: listenAddress, ana_state: 'non_optimized' }))).toMatchObject({
      code: -32603,
      message: 'error setting ANA state: -22',
    });
    expect(await spdk.call('nvmf_subsystem_get_listeners', { nqn })).toEqual([{ address: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(port) } }]);
    const subsystems = await spdk.call<Array<Record<string, unknown>>>('nvmf_get_subsystems', {});
    expect(subsystems.map((found) => found.nqn)).toEqual(['nqn.2014-08.org.nvmexpress.discovery', nqn]);
    expect(subsystems[1]).toMatchObject({
      subtype: 'NVMe',
      allow_any_host: true,
      hosts: [],
      listen_addresses: [{ trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(port) }],
      namespaces: [{ nsid: 1, bdev_name: lvolUuid, name: lvolUuid, nguid: '00112233445566778899AABBCCDDEEFF' }],
      state: 'active',
    });
    // The subsystem is an actor the inspector lists and shows, as NBD exports are.
    const { actors } = await client.call<{ actors: Array<{ actor_id: string; kind: string; value: unknown }> }>('inspect_get_actors', {});
    expect(actors).toContainEqual({ actor_id: `nvmf:${nqn}`, kind: 'nvmf_subsystem', label: `NVMe-oF subsystem ${nqn}`, value: 'active' });
  });

  it.skipIf(skipSpdk)('serves the exposed lvol to spdk_dd; the node reads back what SPDK wrote', async () => {
    const [listener] = await client.call<Array<{ address: { trsvcid: string } }>>('nvmf_subsystem_get_listeners', { nqn });
    const config = writeSpdkDdConfig(join(work, 'dd.json'), { name: 'Nvme0', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: listener!.address.trsvcid, subnqn: nqn });
    const input = join(work, 'in.bin');
    const known = randomBytes(2 * 1024 * 1024);
    writeFileSync(input, known);
    await spdkDd(config, `--if=${input}`, '--ob=Nvme0n1');
    const base64 = await client.call<string>('node_lvol_read', { name: 'lvs0/vol1', offset: 1024 * 1024, length: 512 * 1024 });
    expect(Buffer.from(base64, 'base64').equals(known.subarray(1024 * 1024, 1536 * 1024))).toBe(true);
  });

  it('deletes a bdev a namespace serves and takes the namespace away with it, as SPDK (Longhorn’s revert deletes the exposed head)', async () => {
    expect(await client.call('nvmf_subsystem_remove_ns', { nqn, nsid: 1 })).toBe(true);
    let [subsystem] = await client.call<Array<{ namespaces: unknown[] }>>('nvmf_get_subsystems', { nqn });
    expect(subsystem!.namespaces).toEqual([]);
    // Added again (by alias: a second lookup of the same lvol), then the lvol is deleted under it.
    expect(await client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'lvs0/vol1' } })).toBe(1);
    expect(await rpcError(client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'lvs0/vol1' } }))).toMatchObject({ code: -32602 });
    expect(await client.call('bdev_lvol_delete', { name: 'lvs0/vol1' })).toBe(true);
    [subsystem] = await client.call<Array<{ namespaces: unknown[] }>>('nvmf_get_subsystems', { nqn });
    expect(subsystem!.namespaces).toEqual([]);
  });

  it('reports and sets ANA states only on a subsystem created with ana_reporting, as spdk_tgt', async () => {
    const anaNqn = 'nqn.2016-06.io.spdk:ana';
    expect(await spdk.call('nvmf_create_subsystem', { nqn: anaNqn, allow_any_host: true, ana_reporting: true })).toBe(true);
    await spdk.call('bdev_malloc_create', { name: 'anaM', num_blocks: 2048, block_size: 512 });
    expect(await spdk.call('nvmf_subsystem_add_ns', { nqn: anaNqn, namespace: { bdev_name: 'anaM' } })).toBe(1);
    const listenAddress = { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(await freePort()) };
    expect(await spdk.call('nvmf_subsystem_add_listener', { nqn: anaNqn, listen_address: listenAddress })).toBe(true);
    expect(await spdk.call('nvmf_subsystem_listener_set_ana_state', { nqn: anaNqn, listen_address: listenAddress, ana_state: 'inaccessible' })).toBe(true);
    const [listener] = await spdk.call<Array<{ ana_states: Array<{ ana_group: number; ana_state: string }> }>>('nvmf_subsystem_get_listeners', { nqn: anaNqn });
    expect(listener!.ana_states).toEqual([{ ana_group: 1, ana_state: 'inaccessible' }]);
    expect(await spdk.call('nvmf_delete_subsystem', { nqn: anaNqn })).toBe(true);
    expect(await spdk.call('bdev_malloc_delete', { name: 'anaM' })).toBe(true);
  });

  it('answers SPDK’s errors on the WebSocket too', async () => {
    expect(await rpcError(client.call('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:none', namespace: { bdev_name: 'x' } }))).toMatchObject({
      code: -32602,
      message: 'Unable to find subsystem with NQN nqn.2016-06.io.spdk:none',
    });
    expect(await rpcError(client.call('nvmf_get_subsystems', { nqn: 'nqn.2016-06.io.spdk:none' }))).toMatchObject({ code: -19 });
    expect(await rpcError(client.call('nvmf_create_subsystem', { nqn }))).toMatchObject({ code: -32603, message: `Unable to create subsystem ${nqn}` });
    expect(await rpcError(client.call('nvmf_delete_subsystem', { nqn: 'nqn.2016-06.io.spdk:none' }))).toMatchObject({ code: -32602, message: 'Invalid parameters' });
    expect(await rpcError(client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'nope' } }))).toMatchObject({ code: -32602, message: 'Unable to find bdev nope' });
    expect(await rpcError(client.call('nvmf_create_subsystem', { nqn: 'not-an-nqn' }))).toMatchObject({ code: -32602, data: { field: 'nqn' } });
  });

  it('keeps listeners on loopback without --nvmf-allow-remote, saying why', async () => {
    const refused = await rpcError(client.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'TCP', adrfam: 'IPv4', traddr: '0.0.0.0', trsvcid: '4420' } }));
    expect(refused.code).toBe(-32602);
    expect(refused.message).toMatch(/--nvmf-allow-remote/);
    expect(await client.call<unknown[]>('nvmf_subsystem_get_listeners', { nqn })).toHaveLength(1);
  });

  it('refuses every NVMe/TCP listener, loopback too, on a node started without --nvmf-insecure-tcp (no credential: any local user reaches loopback)', async () => {
    const plain = await startTestNode({ diskBytes: 64 * 1024 * 1024 });
    try {
      const ws = await plain.connect();
      const plainNqn = 'nqn.2016-06.io.spdk:plain';
      expect(await ws.call('nvmf_create_subsystem', { nqn: plainNqn, allow_any_host: true })).toBe(true);
      const refused = await rpcError(ws.call('nvmf_subsystem_add_listener', { nqn: plainNqn, listen_address: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(await freePort()) } }));
      expect(refused.code).toBe(-32602);
      expect(refused.message).toMatch(/--nvmf-insecure-tcp/);
      expect(await ws.call<unknown[]>('nvmf_subsystem_get_listeners', { nqn: plainNqn })).toEqual([]);
    } finally {
      await plain.close();
    }
  });

  it('admits only added hosts when allow_any_host is false, and deletes a subsystem with its listeners', async () => {
    const closed = 'nqn.2016-06.io.spdk:closed';
    expect(await spdk.call('nvmf_create_subsystem', { nqn: closed, serial_number: 'SN1', model_number: 'M1' })).toBe(true);
    expect(await spdk.call('nvmf_subsystem_add_host', { nqn: closed, host: 'nqn.2014-08.org.nvmexpress:uuid:h1' })).toBe(true);
    const [view] = await spdk.call<Array<Record<string, unknown>>>('nvmf_get_subsystems', { nqn: closed });
    expect(view).toMatchObject({ allow_any_host: false, hosts: [{ nqn: 'nqn.2014-08.org.nvmexpress:uuid:h1' }], serial_number: 'SN1', model_number: 'M1' });
    expect(await spdk.call('nvmf_delete_subsystem', { nqn: closed })).toBe(true);
    expect(await spdkError(spdk.call('nvmf_get_subsystems', { nqn: closed }))).toMatchObject({ code: -19 });
  });

  it('answers params that do not decode as SPDK’s handlers do: -32602 "Invalid parameters" for nvmf_*, -32603 elsewhere', async () => {
    // lib/nvmf/nvmf_rpc.c answers its decode failures with -32602; the lvol and bdev handlers with -32603.
    expect(await spdkError(spdk.call('nvmf_create_subsystem', { nqn: 'nqn.2016-06.io.spdk:x', max_namespaces: 'many' }))).toMatchObject({ code: -32602, message: 'Invalid parameters' });
    expect(await spdkError(spdk.call('nvmf_subsystem_add_listener', { nqn: 'nqn.2016-06.io.spdk:x' }))).toMatchObject({ code: -32602, message: 'Invalid parameters' });
    expect(await spdkError(spdk.call('bdev_lvol_get_lvols', { lvs_name: 7 }))).toMatchObject({ code: -32603, message: 'spdk_json_decode_object failed' });
    // Nothing was created by the refused call.
    expect(await spdkError(spdk.call('nvmf_get_subsystems', { nqn: 'nqn.2016-06.io.spdk:x' }))).toMatchObject({ code: -19 });
  });

  it('accepts SPDK’s NVMe bdev settings and log controls', async () => {
    expect(await spdk.call('bdev_nvme_set_options', { action_on_timeout: 'none', timeout_us: 0, retry_count: 4, transport_retry_count: 4 })).toBe(true);
    expect(await spdk.call('bdev_nvme_set_hotplug', { enable: false })).toBe(true);
    expect(await spdk.call('log_set_level', { level: 'DEBUG' })).toBe(true);
    expect(await spdk.call('log_get_level')).toBe('DEBUG');
    expect(await spdk.call('log_set_print_level', { level: 'WARNING' })).toBe(true);
    expect(await spdk.call('log_get_print_level')).toBe('WARNING');
    expect(await spdk.call('log_set_print_level', { level: 'NOTICE' })).toBe(true);
    expect(await spdk.call('log_set_flag', { flag: 'nvmf' })).toBe(true);
    expect(await spdk.call<Record<string, boolean>>('log_get_flags')).toMatchObject({ nvmf: true, nvmf_tcp: false });
    expect(await spdk.call('log_clear_flag', { flag: 'nvmf' })).toBe(true);
    // An unknown flag on the SPDK socket is SPDK's -32602 "invalid log flag" (log_rpc.c decodes any
    // string, then refuses it); -32602 with the field on the WebSocket.
    expect(await spdkError(spdk.call('log_set_flag', { flag: 'nosuch' }))).toMatchObject({ code: -32602, message: 'invalid log flag' });
    expect(await spdkError(spdk.call('log_set_level', { level: 'LOUD' }))).toMatchObject({ code: -32602, message: 'invalid log level' });
    expect(await rpcError(client.call('log_set_flag', { flag: 'nosuch' }))).toMatchObject({ code: -32602, data: { field: 'flag' } });
  });
});
