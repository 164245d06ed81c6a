// Goal: unmodified NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy from Debian) read and write
// lvols and bdevs of a real node over a loopback socket: patterns verify, copies compare byte for
// byte, holes show in maps and are skipped, read-only and full volumes fail as they should, and
// a checksum registered over RPC equals a CRC-64 computed here over the bytes the client wrote.
import { randomFillSync } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { startNode } from '../../src/cli/serve.ts';
import { crc64 } from '../../src/checksum/crc64.ts';
import { type NbdAddress, formatNbdAddress, nbdUri } from '../../src/transport/nbd/server.ts';
import { type TestNode, rpcError, startTestNode } from './helpers.ts';
import { InteractiveQemuIo, nbdClientsSkipReason, runTool, runToolOk } from './nbdTools.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const mib = 1024 * 1024;
const skipReason = nbdClientsSkipReason();

let node: TestNode;
let rpc: RpcClient;
let address: NbdAddress;
let dir: string;

const uri = (exportName: string) => nbdUri(address, exportName);

async function lvolExport(name: string, sizeMib: number, thin: boolean, store = 'lvs0'): Promise<string> {
  await rpc.call('bdev_lvol_create', { lvs_name: store, lvol_name: name, size_in_mib: sizeMib, thin_provision: thin });
  return rpc.call<string>('nbd_start_export', { bdev_name: `${store}/${name}`, export_name: name });
}

async function randomFile(name: string, bytes: number): Promise<{ path: string; data: Buffer }> {
  const data = randomFillSync(Buffer.alloc(bytes));
  const path = join(dir, name);
  await writeFile(path, data);
  return { path, data };
}

/** `nbdinfo --map` lines as [offset, length, type]. */
function parseMap(text: string): Array<[number, number, number]> {
  return text
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
}

describe.skipIf(skipReason !== undefined)('NBD with real clients', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-'));
    node = await startTestNode({ diskBytes: 1024 * mib, nbdListen: '127.0.0.1:0', nbdInsecureTcp: true });
    rpc = await node.connect();
    address = node.running.nbdAddress!;
  });

  afterAll(async () => {
    await node?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes and verifies patterns, FUA and zeroes; a wrong pattern fails verification', async () => {
    await lvolExport('q', 16, false);
    const out = await runToolOk('qemu-io', [
      '-f', 'raw', uri('q'),
      '-c', 'write -P 0xab 0 4M',
      '-c', 'read -P 0xab 0 4M',
      '-c', 'write -f -P 0x11 8M 64k',
      '-c', 'write -z 4M 1M',
      '-c', 'read -P 0 4M 1M',
      '-c', 'flush',
    ]);
    expect(out).toContain('wrote 4194304/4194304 bytes at offset 0');
    expect(out).toContain('read 4194304/4194304 bytes at offset 0');
    expect(out).not.toMatch(/fail/i);
    expect((await readBdev(node.running.node.bdev('lvs0/q'), 0, 4 * mib)).equals(Buffer.alloc(4 * mib, 0xab))).toBe(true);
    expect((await readBdev(node.running.node.bdev('lvs0/q'), 8 * mib, 65536)).equals(Buffer.alloc(65536, 0x11))).toBe(true);
    const wrong = await runTool('qemu-io', ['-f', 'raw', uri('q'), '-c', 'read -P 0xcd 0 4k']);
    expect(wrong.stdout + wrong.stderr).toContain('Pattern verification failed');
  });

  it('qemu-img convert copies a file in and back out byte for byte', async () => {
    await lvolExport('img', 32, false);
    const source = await randomFile('img-in.raw', 32 * mib);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source.path, uri('img')]);
    const outPath = join(dir, 'img-out.raw');
    await runToolOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('img'), outPath]);
    expect((await readFile(outPath)).equals(source.data)).toBe(true);
    expect((await readBdev(node.running.node.bdev('lvs0/img'), 17 * mib, mib)).equals(source.data.subarray(17 * mib, 18 * mib))).toBe(true);
  });

  it('nbdinfo reports size, block sizes, multi-conn and the read-only flag of a snapshot', async () => {
    await lvolExport('info', 12, true);
    await rpc.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/info', snapshot_name: 'info-snap' });
    await rpc.call('nbd_start_export', { bdev_name: 'lvs0/info-snap', export_name: 'info-snap' });
    const writable = JSON.parse(await runToolOk('nbdinfo', ['--json', uri('info')])).exports[0];
    expect(writable).toMatchObject({
      'export-name': 'info',
      'export-size': 12 * mib,
      is_read_only: false,
      can_multi_conn: true,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 32 * mib,
    });
    expect(writable.contexts).toContain('base:allocation');
    const snapshot = JSON.parse(await runToolOk('nbdinfo', ['--json', uri('info-snap')])).exports[0];
    expect(snapshot).toMatchObject({ is_read_only: true, 'export-size': 12 * mib, can_trim: false });
  });

  it('nbdinfo --map and qemu-img map see the holes of a thin lvol', async () => {
    await lvolExport('thin', 64, true);
    await runToolOk('qemu-io', ['-f', 'raw', uri('thin'), '-c', 'write -P 0x42 8M 4M']);
    expect(parseMap(await runToolOk('nbdinfo', ['--map', uri('thin')]))).toEqual([
      [0, 8 * mib, 3],
      [8 * mib, 4 * mib, 0],
      [12 * mib, 52 * mib, 3],
    ]);
    const map = JSON.parse(await runToolOk('qemu-img', ['map', '-f', 'raw', '--output=json', uri('thin')])) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
    expect(map.map(({ start, length, data, zero }) => ({ start, length, data, zero }))).toEqual([
      { start: 0, length: 8 * mib, data: false, zero: true },
      { start: 8 * mib, length: 4 * mib, data: true, zero: false },
      { start: 12 * mib, length: 52 * mib, data: false, zero: true },
    ]);
  });

  it('nbdcopy copies in over several connections, and copies out skipping holes', async () => {
    await lvolExport('copy', 32, false);
    const source = await randomFile('copy-in.raw', 32 * mib);
    await runToolOk('nbdcopy', [source.path, uri('copy')]);
    const outPath = join(dir, 'copy-out.raw');
    await runToolOk('nbdcopy', [uri('copy'), outPath]);
    expect((await readFile(outPath)).equals(source.data)).toBe(true);

    // The thin lvol of the previous test holds one 4 MiB cluster in 64 MiB.
    const before = (await rpc.call<Array<{ bytes_read: number }>>('nbd_get_exports', { export_name: 'thin' }))[0]!.bytes_read;
    const thinPath = join(dir, 'thin-out.raw');
    await runToolOk('nbdcopy', [uri('thin'), thinPath]);
    const thin = await readFile(thinPath);
    const expected = Buffer.alloc(64 * mib);
    expected.fill(0x42, 8 * mib, 12 * mib);
    expect(thin.equals(expected)).toBe(true);
    const after = (await rpc.call<Array<{ bytes_read: number }>>('nbd_get_exports', { export_name: 'thin' }))[0]!.bytes_read;
    // Only the allocated cluster was read: block status told nbdcopy where the holes are.
    expect(after - before).toBe(4 * mib);
  });

  it('refuses writes to a snapshot export; qemu-io -r still reads it', async () => {
    await lvolExport('ro', 8, true);
    await runToolOk('qemu-io', ['-f', 'raw', uri('ro'), '-c', 'write -P 0x77 0 1M']);
    await rpc.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/ro', snapshot_name: 'ro-snap' });
    await rpc.call('nbd_start_export', { bdev_name: 'lvs0/ro-snap', export_name: 'ro-snap' });
    const write = await runTool('qemu-io', ['-f', 'raw', uri('ro-snap'), '-c', 'write -P 1 0 4k']);
    expect(write.code).not.toBe(0);
    expect(write.stderr).toContain('Permission denied');
    const source = await randomFile('ro-in.raw', mib);
    const copy = await runTool('nbdcopy', [source.path, uri('ro-snap')]);
    expect(copy.code).not.toBe(0);
    expect(copy.stderr).toContain('read-only');
    const read = await runToolOk('qemu-io', ['-r', '-f', 'raw', uri('ro-snap'), '-c', 'read -P 0x77 0 1M']);
    expect(read).toContain('read 1048576/1048576');
  });

  it('refuses to delete an exported lvol (-16); stopping the export disconnects a connected qemu-io', async () => {
    await lvolExport('busy', 8, true);
    const qemu = new InteractiveQemuIo(uri('busy'));
    expect(await qemu.command('read 0 512', /read 512\/512|failed/)).toContain('read 512/512');
    const busy = await rpcError(rpc.call('bdev_lvol_delete', { name: 'lvs0/busy' }));
    expect(busy).toMatchObject({ code: -16, message: 'Device or resource busy' });
    expect(String((busy.data as { detail?: string }).detail)).toContain('NBD export busy');
    expect(await rpc.call('nbd_stop_export', { export_name: 'busy' })).toBe(true);
    expect(await qemu.command('read 0 512', /read 512\/512|failed/)).toContain('read failed');
    await qemu.quit();
    const gone = await runTool('nbdinfo', [uri('busy')]);
    expect(gone.code).not.toBe(0);
    expect(await rpc.call('bdev_lvol_delete', { name: 'lvs0/busy' })).toBe(true);
  });

  it('reports ENOSPC to qemu-io when a thin lvol finds no free cluster', async () => {
    await rpc.call('bdev_malloc_create', { name: 'small', num_blocks: 49152, block_size: 512 });
    await rpc.call('bdev_lvol_create_lvstore', { bdev_name: 'small', lvs_name: 'tiny', cluster_sz: 4 * mib });
    await lvolExport('full', 64, true, 'tiny');
    const result = await runTool('qemu-io', ['-f', 'raw', uri('full'), '-c', 'write -P 1 0 32M']);
    expect(result.stdout + result.stderr).toContain('No space left on device');
  });

  it('a checksum registered over RPC equals CRC-64 over the bytes qemu-img wrote; nbdcopy reads them back', async () => {
    await lvolExport('ck', 64, false);
    const source = await randomFile('ck-in.raw', 64 * mib);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source.path, uri('ck')]);
    await rpc.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/ck', snapshot_name: 'ck-snap' });
    expect(await rpc.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/ck-snap' })).toBe(true);
    const { checksum } = await rpc.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name: 'lvs0/ck-snap' });
    // A thick lvol owns every cluster, in order: the chained CRC is the CRC of the whole image.
    expect(checksum).toBe(crc64(source.data));
    await rpc.call('nbd_start_export', { bdev_name: 'lvs0/ck-snap', export_name: 'ck-snap' });
    const outPath = join(dir, 'ck-out.raw');
    await runToolOk('nbdcopy', [uri('ck-snap'), outPath]);
    expect((await readFile(outPath)).equals(source.data)).toBe(true);
  });
});

describe.skipIf(skipReason !== undefined)('the NBD listener', () => {
  it('serves on a Unix socket, and a busy TCP port fails the start naming it', async () => {
    const socketDir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-sock-'));
    const socketPath = join(socketDir, 'nbd.sock');
    const unixNode = await startTestNode({ diskBytes: 64 * mib, nbdListen: socketPath });
    const tcpNode = await startTestNode({ diskBytes: 64 * mib, nbdListen: '127.0.0.1:0', nbdInsecureTcp: true });
    try {
      const client = await unixNode.connect();
      await client.call('bdev_malloc_create', { name: 'm', num_blocks: 8192, block_size: 512 });
      await client.call('nbd_start_export', { bdev_name: 'm' });
      const info = JSON.parse(await runToolOk('nbdinfo', ['--json', nbdUri(unixNode.running.nbdAddress!, 'm')])).exports[0];
      expect(info).toMatchObject({ 'export-size': 4 * mib, is_read_only: false });
      const busy = formatNbdAddress(tcpNode.running.nbdAddress!);
      await expect(startNode({ dataDir: join(socketDir, 'other'), listen: '127.0.0.1:0', defaultDiskBytes: 64 * mib, nbdListen: busy, nbdInsecureTcp: true })).rejects.toThrow(
        `cannot listen for NBD on ${busy}: EADDRINUSE`,
      );
    } finally {
      await unixNode.close();
      await tcpNode.close();
      await rm(socketDir, { recursive: true, force: true });
    }
  });
});
