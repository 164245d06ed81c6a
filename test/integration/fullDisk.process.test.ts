// Goal (issue 19, items 3 and 8): a full file system never costs a volume, proven on the real
// `lvnode serve` process with a data directory on a real, small, full file system (a tmpfs):
// a bdev whose config cannot be saved is refused with -28 and nothing changes, a restart on the
// full file system loads every lvstore it had, and create_lvstore cannot then wipe them. A node
// whose final flush fails (its disk is a thin-provisioned volume that ran out of space: ext4 on a
// loop device whose backing file sits on a full tmpfs) says so and exits non-zero.
//
// Needs root (mount, losetup); CI runs as root, so there it always runs.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, statfs, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { rpcError } from './helpers.ts';
import { type NodeProcess, killAllNodes, spawnNode } from './processNode.ts';
import { loopUnavailable, mountUnavailable } from '../mountable.ts';

const run = promisify(execFile);
const kib = 1024;
const mib = 1024 * kib;
if (mountUnavailable) console.log(`fullDisk.process.test.ts skipped: it mounts small file systems (${mountUnavailable}; CI runs as root)`);
else if (loopUnavailable) console.log(`fullDisk.process.test.ts: the shutdown test skipped (${loopUnavailable})`);

/** Undone newest first after each test, failed or not: nodes, then mounts, loop devices, directories. */
let cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  await killAllNodes();
  for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => console.log(`cleanup failed: ${String(error)}`));
  cleanups = [];
});

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-fulldisk-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

interface SmallFileSystem {
  readonly dir: string;
  /** Takes every free block (a file of zeros, then small ones for what is left). */
  fill(): Promise<void>;
  /** Gives them back. */
  free(): Promise<void>;
}

async function freeBytes(dir: string): Promise<number> {
  const info = await statfs(dir);
  return info.bavail * info.bsize;
}

/** A tmpfs of `sizeBytes`, mounted for this test only. */
async function smallFileSystem(sizeBytes: number): Promise<SmallFileSystem> {
  const dir = await scratchDir();
  await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes}`, 'tmpfs', dir]);
  cleanups.push(() => run('umount', ['-l', dir]));
  const fillers: string[] = [];
  return {
    dir,
    fill: async () => {
      const big = join(dir, 'fill.zeros');
      fillers.push(big);
      await run('fallocate', ['-l', String(await freeBytes(dir)), big]);
      for (let index = 0; (await freeBytes(dir)) > 0; index++) {
        const small = join(dir, `fill-${index}.zeros`);
        fillers.push(small);
        await writeFile(small, Buffer.alloc(4 * kib)).catch(() => undefined);
      }
      expect(await freeBytes(dir)).toBe(0);
    },
    free: async () => {
      for (const filler of fillers.splice(0)) await unlink(filler).catch(() => undefined);
    },
  };
}

async function bdevNames(client: RpcClient): Promise<string[]> {
  const bdevs = await client.call<Array<{ name: string; product_name: string }>>('bdev_get_bdevs', {});
  return bdevs.filter((bdev) => bdev.product_name !== 'Logical Volume').map((bdev) => bdev.name).sort();
}

async function lvstoreNames(client: RpcClient): Promise<string[]> {
  const stores = await client.call<Array<{ name: string }>>('bdev_lvol_get_lvstores', {});
  return stores.map((store) => store.name).sort();
}

function savedBdevNames(configText: string): string[] {
  const config = JSON.parse(configText) as { subsystems: Array<{ config: Array<{ params: { name: string } }> }> };
  return config.subsystems.flatMap((subsystem) => subsystem.config.map((call) => call.params.name)).sort();
}

/** Bytes no two offsets share, so a misplaced or stale cluster shows. */
function pattern(lengthBytes: number, seed: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) bytes[index] = (index * 31 + seed * 7 + (index >> 9)) & 0xff;
  return bytes;
}

/** Per call, so a request's base64 stays under the 1 MiB frame limit. */
const ioChunkBytes = 256 * kib;

async function write(client: RpcClient, name: string, offsetBytes: number, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; at += ioChunkBytes) {
    const chunk = data.subarray(at, at + ioChunkBytes).toString('base64');
    expect(await client.call('node_lvol_write', { name, offset: offsetBytes + at, data: chunk, fua: true })).toBe(true);
  }
}

async function read(client: RpcClient, name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < lengthBytes; at += ioChunkBytes) {
    const length = Math.min(ioChunkBytes, lengthBytes - at);
    parts.push(Buffer.from(await client.call<string>('node_lvol_read', { name, offset: offsetBytes + at, length }), 'base64'));
  }
  return Buffer.concat(parts);
}

/** A node with two lvstores on files in `dataDir`: lvs0 on the default disk0, lvs1 on bdev second. */
async function nodeWithTwoLvstores(dataDir: string): Promise<{ node: NodeProcess; first: Buffer; second: Buffer }> {
  const node = await spawnNode({ dataDir, diskSize: '64M' });
  const client = await node.connect();
  await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol', size_in_mib: 8, thin_provision: false });
  const first = pattern(mib, 1);
  await write(client, 'lvs0/vol', 4 * mib, first);
  const secondFile = join(dataDir, 'second.img');
  await writeFile(secondFile, '');
  await truncate(secondFile, 16 * mib);
  await client.call('bdev_aio_create', { name: 'second', filename: secondFile });
  await client.call('bdev_lvol_create_lvstore', { bdev_name: 'second', lvs_name: 'lvs1', cluster_sz: mib });
  await client.call('bdev_lvol_create', { lvs_name: 'lvs1', lvol_name: 'thin', size_in_mib: 4, thin_provision: true });
  const second = pattern(512 * kib, 2);
  await write(client, 'lvs1/thin', mib, second);
  return { node, first, second };
}

describe.skipIf(mountUnavailable !== null)('a full data-dir file system', () => {
  it('refuses bdev creates and deletes it cannot record with -28, leaving the node and lvnode-config.json as they were', async () => {
    const fs = await smallFileSystem(32 * mib);
    const dataDir = join(fs.dir, 'data');
    let node = await spawnNode({ dataDir, diskSize: '64M' });
    let client = await node.connect();
    expect(await client.call('bdev_malloc_create', { name: 'kept', num_blocks: 2048, block_size: 512 })).toBe('kept');
    // A file elsewhere: only the config write needs the full file system.
    const outside = join(await scratchDir(), 'outside.img');
    await writeFile(outside, '');
    await truncate(outside, 16 * mib);
    const configPath = join(dataDir, 'lvnode-config.json');
    const configBefore = await readFile(configPath, 'utf8');
    const bdevsBefore = await bdevNames(client);
    const optionsBefore = await client.call('node_get_background_options', {});
    await fs.fill();

    for (const [method, params] of [
      ['bdev_malloc_create', { name: 'm_full', num_blocks: 2048, block_size: 512 }],
      ['bdev_aio_create', { name: 'a_full', filename: outside }],
      ['bdev_malloc_delete', { name: 'kept' }],
      ['node_set_background_options', { max_concurrent_checksums: 3 }],
    ] as const) {
      const refused = await rpcError(client.call(method, params));
      expect({ method, code: refused.code, message: refused.message }).toEqual({ method, code: -28, message: 'No space left on device' });
    }
    expect(await bdevNames(client)).toEqual(bdevsBefore);
    expect(await client.call('node_get_background_options', {})).toEqual(optionsBefore);
    expect(await readFile(configPath, 'utf8')).toBe(configBefore);
    expect((await readdir(dataDir)).filter((name) => name.endsWith('.tmp'))).toEqual([]);

    // Nothing was left half made: the same name and file attach now (the file's lock was let go).
    await fs.free();
    expect(await client.call('bdev_aio_create', { name: 'a_full', filename: outside })).toBe('a_full');
    expect(await client.call('bdev_malloc_delete', { name: 'kept' })).toBe(true);
    expect(savedBdevNames(await readFile(configPath, 'utf8'))).toEqual(['a_full', 'disk0']);
    expect((await node.terminate()).code).toBe(0);
    node = await spawnNode({ dataDir, diskSize: '64M' });
    client = await node.connect();
    expect(await bdevNames(client)).toEqual(['a_full', 'disk0']);
  });

  it('restarts on it with every lvstore loaded, its bytes intact, and create_lvstore refusing to overwrite them', async () => {
    const fs = await smallFileSystem(48 * mib);
    const dataDir = join(fs.dir, 'data');
    let { node, first, second } = await nodeWithTwoLvstores(dataDir);
    expect((await node.terminate()).code).toBe(0);
    const configBefore = await readFile(join(dataDir, 'lvnode-config.json'), 'utf8');
    await fs.fill();

    node = await spawnNode({ dataDir, diskSize: '64M' });
    const client = await node.connect();
    expect(await lvstoreNames(client)).toEqual(['lvs0', 'lvs1']);
    expect(await client.call('node_get_unloaded_lvstores', {})).toEqual([]);
    expect((await read(client, 'lvs0/vol', 4 * mib, mib)).equals(first)).toBe(true);
    expect((await read(client, 'lvs1/thin', mib, 512 * kib)).equals(second)).toBe(true);
    expect(node.logLines().filter((line) => /config call failed/.test(String(line.msg)))).toEqual([]);
    for (const [bdev, lvstore] of [
      ['disk0', 'lvs0'],
      ['second', 'lvs1'],
    ] as const) {
      for (const overwrite of [false, true]) {
        const refused = await rpcError(client.call('bdev_lvol_create_lvstore', { bdev_name: bdev, lvs_name: 'wipe', overwrite }));
        expect(refused.code).toBe(-16);
        expect(String((refused.data as { detail: string }).detail)).toContain(`lvstore ${lvstore}`);
      }
    }
    // The saved list was read, not rewritten.
    expect(await readFile(join(dataDir, 'lvnode-config.json'), 'utf8')).toBe(configBefore);
    expect((await node.terminate()).code).toBe(0);
  });

  it('starts on it after its lock file and saved bdev list were lost, loading lvs0 from disk0.img', async () => {
    // Every write a start makes: the lock file (made anew, with our PID), the default disk
    // (re-used), the bdev list (saved at the end). None may stop the node from loading its data.
    const fs = await smallFileSystem(48 * mib);
    const dataDir = join(fs.dir, 'data');
    let { node, first } = await nodeWithTwoLvstores(dataDir);
    expect((await node.terminate()).code).toBe(0);
    await rm(join(dataDir, 'lvnode.lock'));
    await rm(join(dataDir, 'lvnode-config.json'));
    await fs.fill();

    node = await spawnNode({ dataDir, diskSize: '64M' });
    const client = await node.connect();
    expect(await lvstoreNames(client)).toEqual(['lvs0']);
    expect((await read(client, 'lvs0/vol', 4 * mib, mib)).equals(first)).toBe(true);
    expect(node.logLines().some((line) => line.level === 'error' && /bdev list could not be saved/.test(String(line.msg)))).toBe(true);
    // Once there is room again, the next bdev change saves the list (disk0 included).
    await fs.free();
    await client.call('bdev_malloc_create', { name: 'after', num_blocks: 2048, block_size: 512 });
    expect(savedBdevNames(await readFile(join(dataDir, 'lvnode-config.json'), 'utf8'))).toEqual(['after', 'disk0']);
    expect((await node.terminate()).code).toBe(0);
  });
});

describe.skipIf(loopUnavailable !== null)('shutdown', () => {
  it('exits non-zero and names the device when the final flush fails (a thin-provisioned volume out of space)', async () => {
    // ext4 on a loop device whose backing file is sparse on a small tmpfs: once the tmpfs is
    // full, ext4 still takes writes into its page cache, and the flush that would write them
    // fails (ENOSPC or EIO), as on a thin-provisioned LUN that ran out of space.
    const host = await smallFileSystem(24 * mib);
    const backing = join(host.dir, 'thin-volume.img');
    await writeFile(backing, '');
    await truncate(backing, 64 * mib);
    const loop = (await run('losetup', ['-f', '--show', backing])).stdout.trim();
    cleanups.push(() => run('losetup', ['-d', loop]));
    await run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=1,lazy_journal_init=1', loop]);
    const volume = join(host.dir, 'volume');
    await mkdir(volume);
    await run('mount', [loop, volume]);
    cleanups.push(() => run('umount', ['-l', volume]));
    const dataDir = join(volume, 'data');
    const node = await spawnNode({ dataDir, diskSize: '32M' });
    const client = await node.connect();
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol', size_in_mib: 8, thin_provision: false });
    await host.fill();
    // Acknowledged into the page cache (no FUA): only the shutdown flush makes it durable.
    expect(await client.call('node_lvol_write', { name: 'lvs0/vol', offset: 0, fill_byte: 0x5a, length: 2 * mib })).toBe(true);

    const exit = await node.terminate();
    expect(exit.code).toBe(1);
    const failures = node.logLines().filter((line) => line.level === 'error' && /shutdown could not flush/.test(String(line.msg)));
    expect(failures.map((line) => [line.bdev, line.step])).toContainEqual(['disk0', 'flush']);
    expect(node.stderr()).toMatch(/lvnode serve: shutdown could not flush or close 1 device\(s\).*bdev disk0: flush failed/);
  });
});
