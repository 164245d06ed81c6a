// Goal (issue 19, item 3): bdev_lvol_create_lvstore never overwrites an lvstore it was not told to.
// A bdev that holds one — loaded, damaged, written by another node or program after it was
// attached, or SPDK's own — is refused naming it: lvnode's codes on WebSocket, SPDK's -1
// "Operation not permitted" (what spdk_tgt answers for a claimed bdev) on SPDK's socket; the
// device is left byte for byte as it was. `"overwrite": true` replaces all but a loaded one.
import { readFile, truncate, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { SpdkSocketClient } from '../spdkSocketClient.ts';
import { type TestNode, rpcError, startTestNode } from './helpers.ts';

const mib = 1024 * 1024;
const bdevFileBytes = 32 * mib;
/** The super block slots and the checkpoints sit in the first metadata bytes (docs/format.md). */
const headBytes = 64 * 1024;

let node: TestNode;
let client: RpcClient;
let spdk: SpdkSocketClient;

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 64 * mib, rpcSocket: true });
  client = await node.connect();
  spdk = await SpdkSocketClient.connect(node.running.spdkSocket!.path);
});

afterAll(async () => {
  await spdk.close();
  await node.close();
});

async function sparseBdevFile(name: string): Promise<string> {
  const path = join(node.dataDir, `${name}.img`);
  await writeFile(path, '');
  await truncate(path, bdevFileBytes);
  return path;
}

async function head(path: string): Promise<Buffer> {
  return (await readFile(path)).subarray(0, headBytes);
}

async function spdkError(method: string, params: unknown): Promise<{ code: number; message: string; data?: unknown }> {
  const reply = await spdk.reply(spdk.send(method, params));
  expect(reply.error, `${method} should fail on SPDK's socket`).toBeDefined();
  return reply.error!;
}

async function lvstoreNames(): Promise<string[]> {
  const stores = await client.call<Array<{ name: string }>>('bdev_lvol_get_lvstores', {});
  return stores.map((store) => store.name).sort();
}

/** An lvstore made by this node on a file, then unloaded (its bdev deleted): the file's bytes. */
async function lvstoreImage(lvsName: string): Promise<{ bytes: Buffer; uuid: string }> {
  const path = await sparseBdevFile(`source-${lvsName}`);
  await client.call('bdev_aio_create', { name: `source-${lvsName}`, filename: path });
  const uuid = await client.call<string>('bdev_lvol_create_lvstore', { bdev_name: `source-${lvsName}`, lvs_name: lvsName, cluster_sz: mib });
  await client.call('bdev_lvol_create', { lvs_name: lvsName, lvol_name: 'kept', size_in_mib: 2 });
  await client.call('bdev_aio_delete', { name: `source-${lvsName}` });
  return { bytes: await readFile(path), uuid };
}

describe('bdev_lvol_create_lvstore on a bdev that holds an lvstore', () => {
  it('refuses one written onto the device after it was attached, naming it, and replaces it only with overwrite', async () => {
    // Another program (or node) writes an lvstore onto a device this node has attached and
    // examined as empty: the node does not know of it, the device does.
    const path = await sparseBdevFile('shared');
    expect(await client.call('bdev_aio_create', { name: 'shared', filename: path })).toBe('shared');
    const foreign = await lvstoreImage('foreign');
    const file = await open(path, 'r+');
    await file.write(foreign.bytes, 0, foreign.bytes.length, 0);
    await file.close();
    const before = await head(path);

    const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: 'shared', lvs_name: 'mine', cluster_sz: mib }));
    expect(refused.code).toBe(-17);
    expect(refused.data).toMatchObject({ bdev: 'shared', lvstore: { state: 'not loaded', uuid: foreign.uuid, name: 'foreign' } });
    expect(String((refused.data as { detail: string }).detail)).toContain(`lvstore foreign (${foreign.uuid})`);
    expect(await spdkError('bdev_lvol_create_lvstore', { bdev_name: 'shared', lvs_name: 'mine' })).toMatchObject({ code: -1, message: 'Operation not permitted' });
    expect((await head(path)).equals(before)).toBe(true);
    expect(await lvstoreNames()).not.toContain('mine');

    const uuid = await client.call<string>('bdev_lvol_create_lvstore', { bdev_name: 'shared', lvs_name: 'mine', cluster_sz: mib, overwrite: true });
    expect(uuid).not.toBe(foreign.uuid);
    expect(await lvstoreNames()).toContain('mine');
    const [bdev] = await client.call<Array<{ claimed: boolean }>>('bdev_get_bdevs', { name: 'shared' });
    expect(bdev!.claimed).toBe(true);
  });

  it('refuses a loaded lvstore naming it, with SPDK\'s claimed-bdev error on its socket, overwrite or not', async () => {
    const path = await sparseBdevFile('loaded');
    await client.call('bdev_aio_create', { name: 'loaded', filename: path });
    const uuid = await client.call<string>('bdev_lvol_create_lvstore', { bdev_name: 'loaded', lvs_name: 'inuse', cluster_sz: mib });
    const before = await head(path);
    for (const overwrite of [false, true]) {
      const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: 'loaded', lvs_name: 'other', overwrite }));
      expect(refused.code).toBe(-16);
      expect(refused.data).toMatchObject({ bdev: 'loaded', lvstore: { state: 'loaded', uuid, name: 'inuse' } });
      expect(await spdkError('bdev_lvol_create_lvstore', { bdev_name: 'loaded', lvs_name: 'other', overwrite })).toMatchObject({
        code: -1,
        message: 'Operation not permitted',
      });
    }
    expect((await head(path)).equals(before)).toBe(true);
    expect(await lvstoreNames()).toContain('inuse');
  });

  it('refuses a damaged lvstore, found at examine or on the device later, and replaces it only with overwrite', async () => {
    const damaged = await lvstoreImage('hurt');
    // A format-1 super block is written into slot 0 at create; a byte of its CRC'd header flips.
    damaged.bytes[100] = damaged.bytes[100]! ^ 0xff;
    const examined = join(node.dataDir, 'hurt.img');
    await writeFile(examined, damaged.bytes);
    await client.call('bdev_aio_create', { name: 'hurt', filename: examined });
    // The same damage written onto a device after it was attached (examine saw nothing there).
    const later = await sparseBdevFile('hurt_later');
    await client.call('bdev_aio_create', { name: 'hurt_later', filename: later });
    const file = await open(later, 'r+');
    await file.write(damaged.bytes, 0, damaged.bytes.length, 0);
    await file.close();

    for (const [bdev, path] of [
      ['hurt', examined],
      ['hurt_later', later],
    ] as const) {
      const before = await head(path);
      const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: bdev, lvs_name: `fresh_${bdev}`, cluster_sz: mib }));
      expect(refused.code).toBe(-32603);
      expect(refused.data).toMatchObject({ bdev, lvstore: { state: 'damaged' } });
      expect(String((refused.data as { detail: string }).detail)).toMatch(/damaged.*CRC mismatch/);
      expect(await spdkError('bdev_lvol_create_lvstore', { bdev_name: bdev, lvs_name: `fresh_${bdev}` })).toMatchObject({ code: -1, message: 'Operation not permitted' });
      expect((await head(path)).equals(before)).toBe(true);
      await client.call('bdev_lvol_create_lvstore', { bdev_name: bdev, lvs_name: `fresh_${bdev}`, cluster_sz: mib, overwrite: true });
    }
    expect(await lvstoreNames()).toEqual(expect.arrayContaining(['fresh_hurt', 'fresh_hurt_later']));
    // No longer an unloaded lvstore: the dashboard and `lvnode status` stop listing it.
    const unloaded = await client.call<Array<{ bdev_name: string }>>('node_get_unloaded_lvstores');
    expect(unloaded.map((entry) => entry.bdev_name)).not.toContain('hurt');
  });

  it('refuses a device that holds an SPDK lvstore, naming it from SPDK\'s own super blob', async () => {
    // The first pages of a file on which spdk_tgt created lvstore spdkpool (test/fixtures).
    const fixture = JSON.parse(await readFile(new URL('../fixtures/spdk-lvstore-head.json', import.meta.url), 'utf8')) as {
      lvs_name: string;
      lvs_uuid: string;
      gzip_base64: string;
    };
    const path = await sparseBdevFile('spdk');
    const file = await open(path, 'r+');
    await file.write(gunzipSync(Buffer.from(fixture.gzip_base64, 'base64')), 0, undefined, 0);
    await file.close();
    await client.call('bdev_aio_create', { name: 'spdk', filename: path });
    const before = await head(path);

    const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: 'spdk', lvs_name: 'mine2', cluster_sz: mib }));
    expect(refused.code).toBe(-17);
    expect(refused.data).toMatchObject({ bdev: 'spdk', lvstore: { state: 'spdk', uuid: fixture.lvs_uuid, name: fixture.lvs_name } });
    expect(String((refused.data as { detail: string }).detail)).toContain('SPDK blobstore of type LVOLSTORE named spdkpool');
    expect(await spdkError('bdev_lvol_create_lvstore', { bdev_name: 'spdk', lvs_name: 'mine2' })).toMatchObject({ code: -1, message: 'Operation not permitted' });
    expect((await head(path)).equals(before)).toBe(true);
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'spdk', lvs_name: 'mine2', cluster_sz: mib, overwrite: true });
    expect(await lvstoreNames()).toContain('mine2');
  });

  it('creates an lvstore on a device that never held one without being asked to overwrite', async () => {
    // The refusal must not catch blank devices: a sparse file and a malloc bdev.
    const path = await sparseBdevFile('blank');
    await client.call('bdev_aio_create', { name: 'blank', filename: path });
    await client.call('bdev_malloc_create', { name: 'blank_m', num_blocks: 65536, block_size: 512 });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'blank', lvs_name: 'new_a', cluster_sz: mib });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'blank_m', lvs_name: 'new_b', cluster_sz: mib });
    expect(await lvstoreNames()).toEqual(expect.arrayContaining(['new_a', 'new_b']));
  });

  it('lists overwrite among the parameters rpc_get_schema describes', async () => {
    const schema = await client.call<Record<string, { params: { properties: Record<string, { type: string }> } }>>('rpc_get_schema', {
      method: 'bdev_lvol_create_lvstore',
    });
    expect(schema.bdev_lvol_create_lvstore!.params.properties.overwrite).toMatchObject({ type: 'boolean' });
  });
});
