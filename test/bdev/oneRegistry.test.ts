// Goal (issue 22 item 1): every base bdev and lvol is one `Bdev` found by one lookup, and one
// claim mechanism answers for exports, lvstores and esnap clones alike — checked here through the
// node's method table and `node.bdev(name)`, against answers written out by hand.
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageNode } from '../../src/actors/node.ts';
import type { Bdev } from '../../src/bdev/bdev.ts';
import { BdevClaims } from '../../src/bdev/bdevClaims.ts';
import type { MeteredBdev } from '../../src/bdev/bdevIo.ts';
import { StorageError } from '../../src/errors.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';
import { call, errnoOf, nodeHarness } from '../integration/tableCalls.ts';

const mib = 1024 * 1024;

/** A 1 MiB bdev as an NVMe module registers one (a namespace), over `bytes`, which a test reads directly. */
function memoryNvmeBdevWithBytes(name: string, uuid: string): { bdev: Bdev; bytes: Buffer } {
  const bytes = Buffer.alloc(mib);
  const bdev: Bdev = {
    kind: 'nvme',
    name,
    uuid,
    aliases: () => [],
    blockSizeBytes: 512,
    sizeBytes: () => bytes.length,
    readOnly: () => false,
    readInto: async (offsetBytes, target) => void bytes.copy(target, 0, offsetBytes, offsetBytes + target.length),
    write: async (offsetBytes, data) => void bytes.set(data, offsetBytes),
    flush: async () => {},
    unmap: async () => {},
    writeZeroes: async () => {},
    extents: (offsetBytes, lengthBytes) => [{ offsetBytes, lengthBytes, allocated: true }],
    claims: new BdevClaims(() => name),
  };
  return { bdev, bytes };
}
const clusterBytes = 1 * mib;
const harness = nodeHarness(71);
afterEach(() => harness.cleanup());

/** A node with malloc bdevs `disk` (lvstore `lvs`, lvol `vol`) and `ext`, and an NBD "listener". */
async function setup(): Promise<{ node: StorageNode; table: MethodTable; volId: string }> {
  const { node, table } = harness.newNode();
  await call(table, 'bdev_malloc_create', { name: 'disk', num_blocks: (64 * mib) / 512, block_size: 512 });
  await call(table, 'bdev_malloc_create', { name: 'ext', num_blocks: (4 * mib) / 512, block_size: 512, uuid: '11111111-2222-4333-8444-555555555555' });
  await call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'lvs', cluster_sz: clusterBytes });
  const volId = await call<string>(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'vol', size_in_mib: 8, thin_provision: true });
  // No socket is needed to hold exports: the NBD server only looks them up.
  node.nbd.setListening('test');
  return { node, table, volId };
}

async function errorOf(work: Promise<unknown> | (() => unknown)): Promise<StorageError> {
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (error) {
    if (error instanceof StorageError) return error;
    throw error;
  }
  throw new Error('expected a StorageError');
}

describe('one bdev registry', () => {
  it('finds base bdevs by name or UUID and lvols by UUID or alias, and names a missing one', async () => {
    const { node, volId } = await setup();
    expect(node.bdev('ext')).toBe(node.bdev('11111111-2222-4333-8444-555555555555'));
    expect(node.bdev('lvs/vol').name).toBe(volId);
    expect(node.bdev(volId).aliases()).toEqual(['lvs/vol']);
    expect(node.bdev(volId).kind).toBe('lvol');
    expect(node.bdev('disk').kind).toBe('malloc');
    const missing = await errorOf(() => node.bdev('lvs/nope'));
    expect(missing.errno).toBe('ENODEV');
    expect(missing.detail).toBe('bdev lvs/nope does not exist');
    expect(node.bdevList().map((bdev) => bdev.name).sort()).toEqual(['disk', 'ext', volId].sort());
  });

  it('refuses to delete an lvol exported over NBD with EBUSY naming the export, and allows it once stopped', async () => {
    const { node, table } = await setup();
    node.nbd.start('lvs/vol', 'e1');
    const busy = await errorOf(call(table, 'bdev_lvol_delete', { name: 'lvs/vol' }));
    expect(busy.errno).toBe('EBUSY');
    expect(busy.detail).toContain('in use by NBD export e1');
    expect(await errnoOf(call(table, 'bdev_lvol_delete_lvstore', { lvs_name: 'lvs' }))).toBe('EBUSY');
    await node.nbd.stop('e1');
    expect(await call(table, 'bdev_lvol_delete', { name: 'lvs/vol' })).toBe(true);
  });

  it('keeps an export working after its lvol and lvstore are renamed, and remembers its claims between lookups', async () => {
    const { node, table, volId } = await setup();
    node.nbd.start('lvs/vol', 'e2');
    await call(table, 'bdev_lvol_rename', { old_name: 'lvs/vol', new_name: 'renamed' });
    await call(table, 'bdev_lvol_rename_lvstore', { old_name: 'lvs', new_name: 'lvs2' });
    const exported = node.nbd.lookup('e2')!.bdev;
    await exported.write(clusterBytes, Buffer.alloc(4096, 0x3c));
    const back = Buffer.alloc(4096);
    await node.bdev('lvs2/renamed').readInto(clusterBytes, back);
    expect(back.equals(Buffer.alloc(4096, 0x3c))).toBe(true);
    expect(exported.aliases()).toEqual(['lvs2/renamed']);
    // A fresh lookup sees the export's open: claims outlive the bdev objects.
    expect(node.bdev(volId).claims.list()).toEqual([{ type: 'open', holder: 'NBD export e2' }]);
  });

  it('refuses a second claim of a base bdev an lvstore holds: SPDK\'s claimed-bdev error, and EPERM for any other claimer', async () => {
    const { node, table } = await setup();
    const refused = await errorOf(call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'disk', lvs_name: 'again' }));
    expect(refused.errno).toBe('EBUSY');
    // data.lvstore is what the SPDK socket maps to -1 "Operation not permitted" (errorMapping.ts).
    expect(refused.data).toMatchObject({ bdev: 'disk', lvstore: { state: 'loaded', name: 'lvs' } });
    expect((await errorOf(() => node.bdev('disk').claims.claim('read_many_write_none', 'test'))).errno).toBe('EPERM');
    // Its lvstore is its only writer: an export of it reads only, and its writes are refused.
    node.nbd.start('disk', 'raw');
    const raw = node.nbd.lookup('raw')!.bdev;
    expect(raw.readOnly()).toBe(true);
    expect(await errnoOf(raw.write(0, Buffer.alloc(512)))).toBe('EPERM');
    const [listed] = await call<Array<Record<string, unknown>>>(table, 'bdev_get_bdevs', { name: 'disk' });
    expect(listed).toMatchObject({ claimed: true, claim_type: 'exclusive_write' });
  });

  it('holds an external snapshot read_many_write_none while esnap clones use it: writes through NBD fail EPERM, deletion still degrades', async () => {
    const { node, table } = await setup();
    node.nbd.start('ext', 'x');
    const ext = node.nbd.lookup('x')!.bdev;
    await ext.write(0, Buffer.alloc(4096, 0x77));
    const cloneId = await call<string>(table, 'bdev_lvol_clone_bdev', { bdev: 'ext', lvs_name: 'lvs', clone_name: 'c' });
    expect(ext.readOnly()).toBe(true);
    const refused = await errorOf(ext.write(0, Buffer.alloc(512)));
    expect(refused.errno).toBe('EPERM');
    expect(refused.detail).toContain('held read-only by esnap clones of lvstore lvs');
    const [listed] = await call<Array<Record<string, unknown>>>(table, 'bdev_get_bdevs', { name: 'ext' });
    expect(listed).toMatchObject({ claimed: true, claim_type: 'read_many_write_none' });
    // No lvstore may be created on it meanwhile.
    expect(await errnoOf(call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'ext', lvs_name: 'onext' }))).not.toBe('no error');
    const read = Buffer.alloc(4096);
    await node.bdev(cloneId).readInto(0, read);
    expect(read.equals(Buffer.alloc(4096, 0x77))).toBe(true);
    // The last clone gone, the hold is released and the bdev is writable again.
    await call(table, 'bdev_lvol_delete', { name: 'lvs/c' });
    expect(ext.readOnly()).toBe(false);
    await ext.write(0, Buffer.alloc(512, 1));
    // The hold does not keep the external snapshot from being deleted: its clones degrade (EIO).
    const again = await call<string>(table, 'bdev_lvol_clone_bdev', { bdev: 'ext', lvs_name: 'lvs', clone_name: 'c2' });
    await node.nbd.stop('x');
    expect(await call(table, 'bdev_malloc_delete', { name: 'ext' })).toBe(true);
    expect(await errnoOf(node.bdev(again).readInto(0, Buffer.alloc(512)))).toBe('EIO');
  });

  it('holds a copy destination open while the copy runs: no lvstore is created under it, and it is released at the end', async () => {
    // Goal: copies consume a Bdev like every other consumer; the open is removable (a delete stops the copy).
    const { node, table } = await setup();
    await call(table, 'bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'src', size_in_mib: 4, thin_provision: false });
    for (let cluster = 0; cluster < 4; cluster++) await node.bdev('lvs/src').write(cluster * clusterBytes, Buffer.alloc(clusterBytes, cluster + 1));
    await call(table, 'bdev_lvol_snapshot', { lvol_name: 'lvs/src', snapshot_name: 'snap' });
    const { operation_id: operationId } = await call<{ operation_id: number }>(table, 'bdev_lvol_start_deep_copy', { src_lvol_name: 'lvs/snap', dst_bdev_name: 'ext' });
    expect(node.bdev('ext').claims.list()).toEqual([{ type: 'open', holder: `copy ${operationId}` }]);
    const refused = await errorOf(call(table, 'bdev_lvol_create_lvstore', { bdev_name: 'ext', lvs_name: 'under' }));
    expect(refused.errno).toBe('EBUSY');
    expect(refused.detail).toContain(`in use by copy ${operationId}`);
    // The open is removable: deleting the destination stops the copy instead of failing EBUSY.
    const ext = node.bdev('ext');
    expect(await call(table, 'bdev_malloc_delete', { name: 'ext' })).toBe(true);
    expect(node.copies.list().find((status) => status.operation_id === operationId)?.machine_state).toBe('stopped');
    expect(ext.claims.list()).toEqual([]);
    // A destination claimed by an lvstore is refused before anything is written.
    expect(await errnoOf(call(table, 'bdev_lvol_start_deep_copy', { src_lvol_name: 'lvs/snap', dst_bdev_name: 'disk' }))).toBe('EPERM');
  });

  it('finds and lists a bdev a module registers (an NVMe namespace) by the same lookup, and keeps its name taken', async () => {
    const { node, table } = await setup();
    const { bdev: nvme } = memoryNvmeBdevWithBytes('Nvme0n1', '22222222-3333-4444-8555-666666666666');
    node.registry.moduleBdevs.set(nvme.name, nvme);
    expect(node.registry.findBdev('Nvme0n1')).toBe(nvme);
    expect(node.registry.findBdev(nvme.uuid)).toBe(nvme);
    // Consumers get the same bdev behind its rate limits and counters (src/bdev/bdevIo.ts).
    expect((node.bdev(nvme.uuid) as MeteredBdev).inner).toBe(nvme);
    expect(await errnoOf(call(table, 'bdev_malloc_create', { name: 'Nvme0n1', num_blocks: 8, block_size: 512 }))).toBe('EEXIST');
    const listed = await call<Array<Record<string, unknown>>>(table, 'bdev_get_bdevs', {});
    expect(listed.map((row) => row.name)).toContain('Nvme0n1');
    const [one] = await call<Array<Record<string, unknown>>>(table, 'bdev_get_bdevs', { name: 'Nvme0n1' });
    expect(one).toMatchObject({ name: 'Nvme0n1', product_name: 'NVMe disk', block_size: 512, num_blocks: 2048, claimed: false });
  });

  it('exports an NVMe namespace bdev over NBD like any other bdev: listed as kind nvme, its I/O counted', async () => {
    const { node, table } = await setup();
    const { bdev: nvme, bytes } = memoryNvmeBdevWithBytes('Nvme1n1', '33333333-3333-4444-8555-666666666666');
    node.registry.moduleBdevs.set(nvme.name, nvme);
    expect(await call(table, 'nbd_start_export', { bdev_name: 'Nvme1n1', export_name: 'n1' })).toBe('n1');
    const [row] = await call<Array<Record<string, unknown>>>(table, 'nbd_get_exports', { export_name: 'n1' });
    expect(row).toMatchObject({ bdev_name: 'Nvme1n1', kind: 'nvme', size: mib });
    await node.nbd.lookup('n1')!.bdev.write(4096, Buffer.alloc(512, 0x77));
    expect(bytes.subarray(4096, 4608).equals(Buffer.alloc(512, 0x77))).toBe(true);
    const stats = await call<{ bdevs: Array<Record<string, unknown>> }>(table, 'bdev_get_iostat', { name: 'Nvme1n1' });
    expect(stats.bdevs[0]).toMatchObject({ name: 'Nvme1n1', bytes_written: 512, num_write_ops: 1 });
    await node.nbd.stop('n1');
  });
});
