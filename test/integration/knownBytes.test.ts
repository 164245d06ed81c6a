// Goal: the checks a new user would run from outside: a snapshot of a thick lvol on a file whose
// bytes are known (written into the file's data clusters from outside) has the checksum computed outside
// lvnode over those bytes; and `lvnode demo` runs the SPEC §6.9 story to a matching checksum.
import { spawn } from 'node:child_process';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCRC64 } from 'hash-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { type TestNode, startTestNode } from './helpers.ts';

const mib = 1024 * 1024;
let node: TestNode;
let client: RpcClient;

beforeAll(async () => {
  node = await startTestNode({ diskBytes: 512 * mib });
  client = await node.connect();
});

afterAll(async () => {
  await node.close();
});

describe('checks from outside', () => {
  it('checksums a thick lvol on known file bytes exactly as computed outside lvnode', async () => {
    // A 64 MiB file whose every 4 MiB cluster is the same known 4 MiB pattern (so the value does
    // not depend on where lvnode places the lvol's clusters).
    const cluster = Buffer.alloc(4 * mib);
    for (let offset = 0; offset < cluster.length; offset += 4) cluster.writeUInt32LE((offset * 2654435761) >>> 0, offset);
    const path = join(node.dataDir, 'known.img');
    await writeFile(path, Buffer.concat(Array.from({ length: 16 }, () => cluster)));
    await client.call('bdev_aio_create', { name: 'known', filename: path });
    await client.call('bdev_lvol_create_lvstore', { bdev_name: 'known', lvs_name: 'kn', clear_method: 'none' });
    const [store] = await client.call<Array<{ total_data_clusters: number }>>('bdev_lvol_get_lvstores', { lvs_name: 'kn' });
    const clusters = store!.total_data_clusters;
    await client.call('bdev_lvol_create', { lvs_name: 'kn', lvol_name: 'thick', size_in_mib: clusters * 4, thin_provision: false, clear_method: 'none' });
    // The create zeroed its clusters (a new owner never sees old bytes); the known bytes go back
    // into every data cluster from outside, through the file itself (the node caches nothing).
    const file = await open(path, 'r+');
    try {
      for (let index = 16 - clusters; index < 16; index++) await file.write(cluster, 0, cluster.length, index * cluster.length);
      await file.datasync();
    } finally {
      await file.close();
    }
    await client.call('bdev_lvol_snapshot', { lvol_name: 'kn/thick', snapshot_name: 'snap' });
    expect(await client.call('bdev_lvol_register_snapshot_checksum', { name: 'kn/snap' })).toBe(true);
    const { checksum } = await client.call<{ checksum: bigint }>('bdev_lvol_get_snapshot_checksum', { name: 'kn/snap' });
    const hasher = await createCRC64('d800000000000000');
    hasher.init();
    for (let index = 0; index < clusters; index++) hasher.update(cluster);
    expect(checksum).toBe(BigInt(`0x${hasher.digest('hex')}`));
  });

  it('runs `lvnode demo` against the node: stop, re-register to the locally computed value, preempting delete', async () => {
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) => {
      const child = spawn(process.execPath, ['bin/lvnode.mjs', 'demo', '--url', node.running.url, '--data-dir', node.dataDir, '--size-mib', '128']);
      let out = '';
      child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
      child.on('close', (exitCode) => resolve({ code: exitCode ?? -1, stdout: out }));
    });
    expect(code).toBe(0);
    expect(stdout).toContain('"Interrupted system call"');
    expect(stdout).toContain('matches the value computed here');
    expect(stdout).toContain('preempted by bdev_lvol_delete');
  });
});
