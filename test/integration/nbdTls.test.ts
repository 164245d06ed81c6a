// Goal: unmodified NBD clients (qemu-io, qemu-img from qemu-utils; nbdinfo, nbdcopy from libnbd-bin;
// all GnuTLS) read and write a node's exports over TCP with TLS-PSK from a psktool-format key file,
// fail without TLS or with a wrong key (and then see no data), and still connect while 1000 hostile
// connections keep trying. Skipped with the reason when a client is missing, failing instead
// under LVNODE_REQUIRE_NBD_CLIENTS=1 (CI).
import { randomFillSync } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { nbdUri } from '../../src/transport/nbd/server.ts';
import { ConnectionFlood } from '../transport/nbdFlood.ts';
import { type TestNode, startTestNode } from './helpers.ts';
import { type PskKey, libnbdTlsUri, nbdClientsSkipReason, newPskKey, qemuTlsImage, qemuTlsObject, runTool, runToolOk, writePskFile } from './nbdTools.ts';
import { readBdev } from '../../src/bdev/bdev.ts';

const mib = 1024 * 1024;
const skipReason = nbdClientsSkipReason();

let node: TestNode;
let rpc: RpcClient;
let dir: string;
let host: string;
let port: number;
let key: PskKey;
let keyFile: string;
let qemuDir: string;
let wrongFile: string;
let wrongQemuDir: string;

const libnbd = (exportName: string, pskFile = keyFile, identity = key.identity) => libnbdTlsUri(host, port, exportName, pskFile, identity);
const qemu = (exportName: string, pskDir = qemuDir, identity = key.identity) => [...qemuTlsObject(pskDir, identity), '--image-opts', qemuTlsImage(host, port, exportName)];

async function randomFile(name: string, bytes: number): Promise<{ path: string; data: Buffer }> {
  const data = randomFillSync(Buffer.alloc(bytes));
  const path = join(dir, name);
  await writeFile(path, data);
  return { path, data };
}

describe.skipIf(skipReason !== undefined)('NBD over TLS-PSK with real clients', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-tls-'));
    key = newPskKey('qemu');
    keyFile = join(dir, 'keys.psk');
    qemuDir = join(dir, 'qemu');
    await writePskFile(keyFile, [key], qemuDir);
    const wrong = newPskKey('qemu');
    wrongFile = join(dir, 'wrong.psk');
    wrongQemuDir = join(dir, 'wrong-qemu');
    await writePskFile(wrongFile, [wrong], wrongQemuDir);
    node = await startTestNode({ diskBytes: 256 * mib, nbdListen: '127.0.0.1:0', nbdTlsPskFile: keyFile });
    rpc = await node.connect();
    const address = node.running.nbdAddress!;
    if (address.kind !== 'tcp') throw new Error('expected a TCP listener');
    ({ host, port } = address);
    await rpc.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'vol', size_in_mib: 32, thin_provision: true });
    await rpc.call('nbd_start_export', { bdev_name: 'lvs0/vol', export_name: 'vol' });
  });

  afterAll(async () => {
    await node?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes and verifies a pattern over TLS (tls-creds-psk, keys.psk, identity qemu)', async () => {
    const out = await runToolOk('qemu-io', [...qemu('vol'), '-c', 'write -P 0xa5 0 4M', '-c', 'read -P 0xa5 0 4M', '-c', 'flush']);
    expect(out).toContain('wrote 4194304/4194304 bytes at offset 0');
    expect(out).not.toMatch(/fail/i);
    expect((await readBdev(node.running.node.bdev('lvs0/vol'), 0, 4 * mib)).equals(Buffer.alloc(4 * mib, 0xa5))).toBe(true);
  });

  it('qemu-img converts a file in and back out over TLS, byte for byte', async () => {
    const source = await randomFile('in.raw', 32 * mib);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', ...qemuTlsObject(qemuDir, key.identity), source.path, '--target-image-opts', qemuTlsImage(host, port, 'vol')]);
    const outPath = join(dir, 'out.raw');
    await runToolOk('qemu-img', ['convert', ...qemuTlsObject(qemuDir, key.identity), '--image-opts', qemuTlsImage(host, port, 'vol'), '-O', 'raw', outPath]);
    expect((await readFile(outPath)).equals(source.data)).toBe(true);
  });

  it('nbdinfo reports the export over TLS; nbdcopy copies in and out (nbds://qemu@…?tls-psk-file=)', async () => {
    const info = JSON.parse(await runToolOk('nbdinfo', ['--json', libnbd('vol')]));
    expect(info).toMatchObject({ TLS: true, exports: [expect.objectContaining({ 'export-name': 'vol', 'export-size': 32 * mib })] });
    const source = await randomFile('copy-in.raw', 32 * mib);
    await runToolOk('nbdcopy', [source.path, libnbd('vol')]);
    const outPath = join(dir, 'copy-out.raw');
    await runToolOk('nbdcopy', [libnbd('vol'), outPath]);
    expect((await readFile(outPath)).equals(source.data)).toBe(true);
  });

  it('refuses every client without TLS, with a wrong key or an unknown identity; none sees a byte', async () => {
    const before = await readBdev(node.running.node.bdev('lvs0/vol'), 0, mib);
    const plainUri = nbdUri(node.running.nbdAddress!, 'vol');
    const attempts = await Promise.all([
      runTool('nbdinfo', [plainUri]),
      runTool('nbdinfo', ['--list', plainUri]),
      runTool('nbdcopy', [plainUri, '-']),
      runTool('qemu-io', ['-f', 'raw', plainUri, '-c', 'read -v 0 512']),
      runTool('qemu-img', ['info', '--image-opts', `driver=nbd,host=${host},port=${port},export=vol`]),
      runTool('nbdinfo', [libnbd('vol', wrongFile)]),
      runTool('nbdcopy', [libnbd('vol', wrongFile), '-']),
      runTool('qemu-io', [...qemu('vol', wrongQemuDir), '-c', 'write -P 0x66 0 64k']),
      runTool('nbdinfo', [libnbd('vol', keyFile, 'mallory')]),
    ]);
    for (const attempt of attempts) {
      expect(attempt.code).not.toBe(0);
      expect(attempt.stdout).not.toContain('export-size');
    }
    // The clients say why: TLS is required (qemu shows the server's message).
    expect(attempts[3]!.stderr).toContain('TLS is required');
    expect(attempts[2]!.stderr).toMatch(/requires TLS/);
    expect((await readBdev(node.running.node.bdev('lvs0/vol'), 0, mib)).equals(before)).toBe(true);
  });

  it('nbdinfo still connects over TLS, 10 of 10 times, while 1000 hostile connections keep trying', async () => {
    const flood = new ConnectionFlood(node.running.nbdAddress!, { connections: 1000 });
    flood.start();
    try {
      while (flood.opened < 1000 || node.running.nbd!.connectionCount() < 500) await new Promise((resolve) => setTimeout(resolve, 10));
      const results = [];
      for (let attempt = 0; attempt < 10; attempt++) results.push(await runTool('nbdinfo', ['--size', libnbd('vol')]));
      expect(results.map((result) => (result.code === 0 ? result.stdout.trim() : result.stderr.trim()))).toEqual(Array.from({ length: 10 }, () => String(32 * mib)));
    } finally {
      await flood.stop();
    }
  });
});
