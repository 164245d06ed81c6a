// Goal: the JSON-RPC surface over a real socket: SPDK shapes and error codes for bdevs, lvstores
// and lvols; malformed input answered clearly while the node and the connection survive;
// the inspection stream shows an lvol's checksum transitions in order.
import { fileIoInfo } from '../../src/device/fileIo.ts';
import { spawn } from 'node:child_process';
import { copyFile, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { InspectionRecord } from '../../src/actors/inspector.ts';
import { nativeCrc } from '../../src/checksum/native.ts';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { parseJson } from '../../src/transport/json64.ts';
import { type TestNode, authHeaders, rpcError, startTestNode } from './helpers.ts';

let node: TestNode;
let client: RpcClient;

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 256 * 1024 * 1024 });
  client = await node.connect();
});

afterAll(async () => {
  await node.close();
});

/** Sends raw text on a fresh socket and returns the first reply, parsed exactly. */
async function rawExchange(text: string): Promise<Record<string, unknown>> {
  const socket = new WebSocket(node.running.url, authHeaders(node.running));
  await new Promise((resolve) => socket.once('open', resolve));
  const reply = new Promise<string>((resolve) => socket.once('message', (data) => resolve(data.toString())));
  socket.send(text);
  const parsed = parseJson(await reply) as Record<string, unknown>;
  socket.close();
  return parsed;
}

describe('bdevs, lvstores and lvols over RPC', () => {
  it('serves the embedded default: file bdev disk0 claimed by lvstore lvs0 with 4 MiB clusters', async () => {
    const [disk] = await client.call<Array<Record<string, unknown>>>('bdev_get_bdevs', { name: 'disk0' });
    expect(disk).toMatchObject({ name: 'disk0', product_name: 'AIO disk', block_size: 512, claimed: true });
    const [store] = await client.call<Array<Record<string, unknown>>>('bdev_lvol_get_lvstores', { lvs_name: 'lvs0' });
    expect(store).toMatchObject({ name: 'lvs0', base_bdev: 'disk0', cluster_size: 4 * 1024 * 1024, block_size: 512 });
    expect(await rpcError(client.call('bdev_malloc_delete', { name: 'disk0' }))).toMatchObject({ code: -19 }); // not a malloc bdev
  });

  it('bdev_get_bdevs {name, timeout} waits for the bdev to appear, then answers -110', async () => {
    // Goal (SPDK: bdev_rpc.c): timeout 0 is -19 at once; a bdev that appears within the timeout is
    // returned as soon as it does; one that does not is -110 "Connection timed out".
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'late' }))).toMatchObject({ code: -19 });
    const waiting = client.call<Array<{ name: string }>>('bdev_get_bdevs', { name: 'late', timeout: 5000 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await client.call('bdev_malloc_create', { name: 'late', num_blocks: 2048, block_size: 512 });
    expect((await waiting).map((bdev) => bdev.name)).toEqual(['late']);
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'never', timeout: 100 }))).toMatchObject({ code: -110, message: 'Connection timed out' });
    await client.call('bdev_malloc_delete', { name: 'late' });
  });

  it('creates malloc and file bdevs, refuses a missing file, and deletes unclaimed bdevs', async () => {
    expect(await client.call('bdev_malloc_create', { name: 'm0', num_blocks: 32768, block_size: 512 })).toBe('m0');
    expect(await rpcError(client.call('bdev_malloc_create', { name: 'm0', num_blocks: 8, block_size: 512 }))).toMatchObject({ code: -17 });
    const missing = await rpcError(client.call('bdev_aio_create', { name: 'f0', filename: join(node.dataDir, 'absent.img') }));
    expect(missing.code).toBe(-2);
    expect(String((missing.data as { detail?: string }).detail)).toContain('absent.img');
    const path = join(node.dataDir, 'f0.img');
    await writeFile(path, Buffer.alloc(8 * 1024 * 1024));
    expect(await client.call('bdev_aio_create', { name: 'f0', filename: path, block_size: 4096 })).toBe('f0');
    const [file] = await client.call<Array<Record<string, unknown>>>('bdev_get_bdevs', { name: 'f0' });
    expect(file).toMatchObject({ block_size: 4096, num_blocks: 2048, driver_specific: { aio: { filename: path } } });
    expect(await client.call('bdev_aio_delete', { name: 'f0' })).toBe(true);
    expect(await client.call('bdev_malloc_delete', { name: 'm0' })).toBe(true);
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'm0' }))).toMatchObject({ code: -19, message: 'No such device' });
  });

  it('runs an lvstore through create, rename, lvol life cycle and delete with SPDK shapes', async () => {
    await client.call('bdev_malloc_create', { name: 'm1', num_blocks: 131072, block_size: 512 });
    const lvsUuid = await client.call<string>('bdev_lvol_create_lvstore', { bdev_name: 'm1', lvs_name: 'pool', cluster_sz: 1048576 });
    expect(await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: 'm1', lvs_name: 'other' }))).toMatchObject({ code: -16 });
    expect(await client.call('bdev_lvol_rename_lvstore', { old_name: 'pool', new_name: 'pool2' })).toBe(true);
    const uuid = await client.call<string>('bdev_lvol_create', { uuid: lvsUuid, lvol_name: 'v', size_in_mib: 3, thin_provision: true });
    expect(await rpcError(client.call('bdev_lvol_create', { lvs_name: 'pool2', lvol_name: 'v', size_in_mib: 1 }))).toMatchObject({
      code: -17,
      message: 'File exists',
    });
    const [bdev] = await client.call<Array<Record<string, unknown>>>('bdev_get_bdevs', { name: 'pool2/v' });
    expect(bdev).toMatchObject({
      name: uuid,
      aliases: ['pool2/v'],
      product_name: 'Logical Volume',
      num_blocks: (3 * 1048576) / 512,
      driver_specific: { lvol: { lvol_store_uuid: lvsUuid, base_bdev: 'm1', thin_provision: true, num_allocated_clusters: 0, snapshot: false } },
    });
    expect(await client.call('node_lvol_write', { name: uuid, offset: 1048576, fill_byte: 0xcc, length: 1048576, fua: true })).toBe(true);
    const head = Buffer.from(await client.call<string>('node_lvol_read', { name: uuid, offset: 1048576, length: 512 }), 'base64');
    expect(head.equals(Buffer.alloc(512, 0xcc))).toBe(true);
    const snapUuid = await client.call<string>('bdev_lvol_snapshot', { lvol_name: 'pool2/v', snapshot_name: 's', xattrs: { user_created: 'true' } });
    const [snapBdev] = await client.call<Array<{ driver_specific: { lvol: Record<string, unknown> } }>>('bdev_get_bdevs', { name: snapUuid });
    expect(snapBdev!.driver_specific.lvol).toMatchObject({ snapshot: true, num_allocated_clusters: 1, clones: ['v'] });
    expect(await client.call('bdev_lvol_get_xattr', { name: 'pool2/s', xattr_name: 'user_created' })).toBe('true');
    expect(await rpcError(client.call('bdev_lvol_get_xattr', { name: 'pool2/s', xattr_name: 'missing' }))).toMatchObject({
      code: -32603,
      message: 'No such file or directory',
    });
    expect(await client.call('bdev_lvol_register_snapshot_range_checksums', { name: 'pool2/s' })).toBe(true);
    const ranges = await client.call<Array<{ cluster_index: number; checksum: bigint | number }>>('bdev_lvol_get_snapshot_range_checksums', {
      name: 'pool2/s',
      cluster_start_index: 1,
      cluster_count: 2,
    });
    // 1 MiB of 0xCC is a known answer (SPEC §6.1); cluster 2 is not owned.
    expect(ranges).toEqual([
      { cluster_index: 1, checksum: 3922247888305263001n },
      { cluster_index: 2, checksum: 0 },
    ]);
    expect((await client.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name: 'pool2/s' })).checksum).toBe(3922247888305263001n);
    expect(await rpcError(client.call('bdev_lvol_get_snapshot_range_checksums', { name: 'pool2/s', cluster_start_index: 3, cluster_count: 1 }))).toMatchObject({ code: -22 });
    const lvols = await client.call<Array<Record<string, unknown>>>('bdev_lvol_get_lvols', { lvs_name: 'pool2' });
    expect(lvols.map((lvol) => [lvol.name, lvol.is_snapshot, lvol.is_clone])).toEqual([
      ['v', false, true],
      ['s', true, false],
    ]);
    expect(await client.call('bdev_lvol_delete_lvstore', { lvs_name: 'pool2' })).toBe(true);
    expect(await client.call('bdev_malloc_delete', { name: 'm1' })).toBe(true);
  });

  it('streams an lvol actor’s checksum transitions in order through inspect_subscribe', async () => {
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'watched', size_in_mib: 12, thin_provision: false });
    const snapshot = await client.call<string>('bdev_lvol_snapshot', { lvol_name: 'lvs0/watched', snapshot_name: 'watched-snap' });
    const events: InspectionRecord[] = [];
    client.on('inspect_events', (params) => events.push(...(params as { events: InspectionRecord[] }).events));
    expect(await client.call('inspect_subscribe', {})).toBe(true);
    expect(await client.call('bdev_lvol_register_snapshot_checksum', { name: snapshot })).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await client.call('inspect_unsubscribe', {});
    const states = events
      .filter((event) => event.actor_id === snapshot && event.type === 'snapshot' && event.actor === snapshot)
      .map((event) => (event.snapshot as { value: { checksum: string } }).value.checksum);
    const transitions = states.filter((state, index) => index === 0 || state !== states[index - 1]);
    expect(transitions).toEqual(['queued', 'computing', 'storing', 'done']);
    // One step per cluster: three clusters, three step completions; the last one ends the walk
    // (SPEC §6.4: no step after it, so no moment where a stop could abort a finished walk).
    const steps = events.filter((event) => event.actor_id === snapshot && event.type === 'event' && (event.event as { type: string }).type === 'xstate.done.actor.clusterStep');
    expect(steps).toHaveLength(3);
    expect(events.map((event) => event.seq)).toEqual([...events.map((event) => event.seq)].sort((x, y) => x - y));
  });

  it('reports a copy of a loaded lvstore as a name clash, not as damage, and never overwrites it', async () => {
    // Goal (hostile finding 8): a foreign lvstore whose name clashed was reported as "damaged metadata".
    const original = join(node.dataDir, 'clash-a.img');
    const copy = join(node.dataDir, 'clash-b.img');
    await writeFile(original, Buffer.alloc(0));
    await truncate(original, 32 * 1024 * 1024);
    await client.call('bdev_aio_create', { name: 'clash_a', filename: original });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'clash_a', lvs_name: 'clash', cluster_sz: 1024 * 1024 });
    await copyFile(original, copy);
    const copyBefore = await readFile(copy);
    await client.call('bdev_aio_create', { name: 'clash_b', filename: copy });
    const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: 'clash_b', lvs_name: 'other' }));
    expect(refused.code).toBe(-17);
    expect((refused.data as { detail: string }).detail).toMatch(/same name clash is already loaded/);
    expect((refused.data as { detail: string }).detail).not.toMatch(/damaged/);
    expect((await readFile(copy)).equals(copyBefore)).toBe(true);
  });

  it('allocates the metadata area of a new lvstore for real, not as a hole of the sparse file', async () => {
    // Goal (hostile finding 6): with the journal region left sparse, a full file system answered
    // the next metadata append with ENOSPC. disk0 is 2 GiB: its metadata area is 1/64 of it.
    const info = await stat(join(node.dataDir, 'disk0.img'));
    expect(info.blocks * 512).toBeGreaterThanOrEqual(info.size / 64);
  });

  it('reports request counts, latencies, event-loop delay and checksum walks in node_get_stats', async () => {
    await client.call('rpc_get_methods', {});
    await rpcError(client.call('bdev_get_bdevs', { name: 'nope' }));
    const stats = await client.call<{
      requests: Record<string, { calls: number; errors: number; latency_ms_p99: number }>;
      event_loop_delay_ms: { p99: number };
      checksums: { by_state: Record<string, number> };
      connections: number;
    }>('node_get_stats', {});
    expect(stats.requests.rpc_get_methods!.calls).toBeGreaterThanOrEqual(1);
    expect(stats.requests.bdev_get_bdevs!.errors).toBeGreaterThanOrEqual(1);
    expect(stats.requests.bdev_get_bdevs!.latency_ms_p99).toBeGreaterThanOrEqual(0);
    expect(stats.event_loop_delay_ms.p99).toBeGreaterThanOrEqual(0);
    expect(stats.connections).toBeGreaterThanOrEqual(1);
    expect(Object.values(stats.checksums.by_state).reduce((sum, count) => sum + count, 0)).toBeGreaterThan(0);
  });

  it('reports the CRC path, the scheduler and each device queue in node_get_stats', async () => {
    const stats = await client.call<{
      crc: { implementation: string; kernel: string };
      background: { state: string; running: number; queued: number; max_concurrent_checksums: number };
      devices: Record<string, { foreground_in_flight: number; background_in_flight: number; background_waiting: number }>;
    }>('node_get_stats', {});
    // `npm test` runs this file twice: with the addon, and with LVNODE_CRC=fallback forcing the
    // TypeScript path. The node in this process loads the addon exactly when this test does.
    expect(stats.crc.implementation).toBe(nativeCrc ? 'native' : 'fallback');
    if (process.env.LVNODE_CRC === 'fallback') expect(nativeCrc).toBeNull();
    expect(stats.background).toMatchObject({ running: 0, queued: 0 });
    expect(stats.background.max_concurrent_checksums).toBeGreaterThanOrEqual(1);
    expect(stats.devices.disk0).toMatchObject({ background_in_flight: 0, background_waiting: 0 });
  });

  it('reports which file I/O path the node uses in node_get_stats (io_uring, or the thread pool and why)', async () => {
    const { file_io } = await client.call<{ file_io: { path: string; reason: string } }>('node_get_stats', {});
    // `npm test` runs this file on the default path; LVNODE_FILE_IO=threadpool forces the fallback.
    const expected = process.env.LVNODE_FILE_IO === 'threadpool' ? 'threadpool' : fileIoInfo().path;
    expect(file_io).toMatchObject({ path: expected, reason: expect.any(String) });
    expect(['io_uring', 'threadpool']).toContain(file_io.path);
    // Where the addon is built and the kernel allows io_uring (this machine, CI), the ring is used.
    if (process.env.LVNODE_REQUIRE_FILE_RING === '1') expect(file_io.path).toBe('io_uring');
  });

  it('sets and reads the background options; refuses bad ones and keeps the old', async () => {
    const before = await client.call<{ max_concurrent_checksums: number; checksum_rate_mib_per_sec: number }>('node_get_background_options', {});
    for (const bad of [{ max_concurrent_checksums: 0 }, { max_concurrent_checksums: 1.5 }, { checksum_rate_mib_per_sec: -1 }, { unknown: 1 }]) {
      expect((await rpcError(client.call('node_set_background_options', bad))).code).toBe(-32602);
    }
    expect(await client.call('node_get_background_options', {})).toEqual(before);
    expect(await client.call('node_set_background_options', { checksum_rate_mib_per_sec: 64 })).toBe(true);
    expect(await client.call('node_get_background_options', {})).toEqual({ ...before, checksum_rate_mib_per_sec: 64 });
    await client.call('node_set_background_options', before);
  });

  it('publishes every method with its JSON Schema', async () => {
    const methods = await client.call<string[]>('rpc_get_methods', {});
    expect(methods).toContain('bdev_lvol_stop_snapshot_checksum');
    const schema = await client.call<Record<string, { params: { properties: Record<string, unknown>; additionalProperties: boolean } }>>('rpc_get_schema', {});
    expect(Object.keys(schema).sort()).toEqual([...methods].sort());
    expect(schema.bdev_lvol_create!.params.properties).toHaveProperty('size_in_mib');
    expect(schema.bdev_lvol_create!.params.additionalProperties).toBe(false);
  });
});

describe('bad input', () => {
  it('answers malformed JSON with -32700 and keeps the connection working', async () => {
    expect(await rawExchange('{"jsonrpc":"2.0","id":1,"method":')).toMatchObject({ id: null, error: { code: -32700 } });
    client.sendRaw('not json at all');
    expect(await client.call('rpc_get_methods', {})).toContain('bdev_get_bdevs');
  });

  it('rejects unknown methods, unknown keys and wrong types clearly, changing nothing', async () => {
    expect(await rpcError(client.call('bdev_does_not_exist', {}))).toMatchObject({ code: -32601 });
    const unknownKey = await rpcError(client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'x', size_in_mib: 4, colour: 'red' }));
    expect(unknownKey).toMatchObject({ code: -32602, data: { field: 'colour' } });
    const wrongType = await rpcError(client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'x', size_in_mib: 'four' }));
    expect(wrongType).toMatchObject({ code: -32602, data: { field: 'size_in_mib' } });
    expect(await rpcError(client.call('bdev_get_bdevs', { name: 'lvs0/x' }))).toMatchObject({ code: -19 });
  });

  it('refuses bad names, cluster sizes, selectors and xattrs with -32602 naming the field, changing nothing', async () => {
    // Goal (hostile-input findings): these were -22 or silently accepted; each is now a params
    // error with data.field, and none of them changes what a listing shows.
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'named', size_in_mib: 4, thin_provision: true });
    const before = JSON.stringify(await client.call('bdev_lvol_get_lvols', {}), (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'n'.repeat(256), size_in_mib: 4 }, 'lvol_name'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'a/b', size_in_mib: 4 }, 'lvol_name'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'nul\u0000', size_in_mib: 4 }, 'lvol_name'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'line\nbreak', size_in_mib: 4 }, 'lvol_name'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'evil\u202egnp.exe', size_in_mib: 4 }, 'lvol_name'],
      ['bdev_lvol_create', { lvol_name: 'noselector', size_in_mib: 4 }, 'lvs_name'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'empty', size_in_mib: 0 }, 'size_in_mib'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vast', size_in_mib: 2 ** 43 + 1 }, 'size_in_mib'],
      ['bdev_lvol_resize', { name: 'lvs0/named', size_in_mib: 2 ** 43 + 1 }, 'size_in_mib'],
      ['bdev_lvol_create', { lvs_name: 'lvs0', uuid: 'x', lvol_name: 'both', size_in_mib: 4 }, 'lvs_name'],
      ['bdev_lvol_create_lvstore', { bdev_name: 'disk0', lvs_name: 'odd', cluster_sz: 3 * 1024 * 1024 + 512 }, 'cluster_sz'],
      ['bdev_lvol_rename', { old_name: 'lvs0/named', new_name: 'x/y' }, 'new_name'],
      ['bdev_lvol_snapshot', { lvol_name: 'lvs0/named', snapshot_name: 'tab\there' }, 'snapshot_name'],
      ['bdev_lvol_set_xattr', { name: 'lvs0/named', xattr_name: '', xattr_value: 'v' }, 'xattr_name'],
      ['bdev_lvol_set_xattr', { name: 'lvs0/named', xattr_name: 'k'.repeat(256), xattr_value: 'v' }, 'xattr_name'],
      ['bdev_lvol_set_xattr', { name: 'lvs0/named', xattr_name: 'k', xattr_value: 'v'.repeat(64 * 1024 + 1) }, 'xattr_value'],
      ['bdev_lvol_set_xattr', { name: 'lvs0/named', xattr_name: 'k', xattr_value: 'lone \ud800 surrogate' }, 'xattr_value'],
    ];
    for (const [method, params, field] of cases) {
      // JSON.stringify writes NUL and the lone surrogate as \u escapes; the node parses them back.
      const raw = JSON.stringify({ jsonrpc: '2.0', id: 7, method, params });
      const reply = (await rawExchange(raw)) as { error?: { code: number; data?: { field?: string } } };
      expect(reply.error, `${method} ${JSON.stringify(params)}`).toMatchObject({ code: -32602, data: { field } });
    }
    const after = JSON.stringify(await client.call('bdev_lvol_get_lvols', {}), (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
    expect(after).toBe(before);
  });

  it('bounds payload memory by bytes: 64 MiB fills wait their turn, and 64 MiB + 1 is refused first', async () => {
    // Goal (hostile finding 3): a ~110-byte request allocated 64 MiB, 40 in flight took RSS to
    // 2.7 GB, and an oversized one allocated before it was refused.
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'budget', size_in_mib: 64, thin_provision: false });
    const tooBig = await rpcError(client.call('node_lvol_write', { name: 'lvs0/budget', offset: 0, fill_byte: 1, length: 64 * 1024 * 1024 + 1 }));
    expect(tooBig).toMatchObject({ code: -32602, data: { field: 'length' } });
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
    const writes = Array.from({ length: 12 }, (_, index) =>
      client.call('node_lvol_write', { name: 'lvs0/budget', offset: 0, fill_byte: index + 1, length: 64 * 1024 * 1024 }),
    );
    await Promise.all(writes);
    clearInterval(sampler);
    // Twelve unbounded would be 768 MiB at once; the per-connection budget is 128 MiB.
    expect(peak - baseline).toBeLessThan(512 * 1024 * 1024);
  });

  it('answers rpc_get_schema for a prototype member name as an unknown method, not an internal error', async () => {
    for (const method of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      expect(await rpcError(client.call('rpc_get_schema', { method })), method).toMatchObject({ code: -32602, data: { field: 'method' } });
    }
  });

  it('parses 64-bit parameters exactly and refuses ones beyond 2^53 where a number is needed', async () => {
    const tooBig = await rpcError(client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'y', size_in_mib: 18446744073709551615n }));
    expect(tooBig).toMatchObject({ code: -32602, data: { field: 'size_in_mib' } });
  });

  it('answers batches as arrays, in any order, and ignores notifications', async () => {
    const reply = await rawExchange(
      '[{"jsonrpc":"2.0","id":"a","method":"rpc_get_methods"},{"jsonrpc":"2.0","method":"rpc_get_methods"},{"jsonrpc":"2.0","id":"b","method":"nope"}]',
    );
    expect(Array.isArray(reply)).toBe(true);
    const byId = Object.fromEntries((reply as unknown as Array<{ id: string }>).map((item) => [item.id, item]));
    expect(Object.keys(byId).sort()).toEqual(['a', 'b']);
    expect(byId.b).toMatchObject({ error: { code: -32601 } });
  });

  it('closes a connection that sends a frame over the limit and keeps serving the others', async () => {
    const socket = new WebSocket(node.running.url, authHeaders(node.running));
    await new Promise((resolve) => socket.once('open', resolve));
    const closed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
    socket.send('x'.repeat(2 * 1024 * 1024));
    expect(await closed).toBe(1009);
    expect(await client.call('rpc_get_methods', {})).toContain('bdev_get_bdevs');
  });
});

describe('lvnode rpc (the CLI client)', () => {
  function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ['bin/lvnode.mjs', 'rpc', ...args, '--url', node.running.url, '--data-dir', node.dataDir], { cwd: process.cwd() });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    });
  }

  it('prints the result as JSON and exits 0', async () => {
    const { code, stdout } = await runCli(['bdev_lvol_get_lvstores', '{"lvs_name":"lvs0"}']);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)[0].name).toBe('lvs0');
  });

  it('prints the error and exits 1 on failure', async () => {
    const { code, stderr } = await runCli(['bdev_lvol_delete', '{"name":"lvs0/none"}']);
    expect(code).toBe(1);
    expect(JSON.parse(stderr)).toMatchObject({ code: -19, message: 'No such device' });
  });

  it('prints usage for --help after a command instead of a parser error', async () => {
    const { code, stdout, stderr } = await runCli(['--help']);
    expect(code).toBe(0);
    expect(stdout).toContain('lvnode rpc METHOD');
    expect(stderr).toBe('');
  });
});
