// Goal: the node-wide scheduler admits walks up to its cap in order, re-queues walks that a
// priority operation preempted, leaves stopped walks stopped, and a refused priority operation
// never aborts a running walk (validate, then preempt).
import { afterEach, describe, expect, it } from 'vitest';
import { StorageNode } from '../../src/actors/node.ts';
import type { InspectionRecord } from '../../src/actors/inspector.ts';
import { crc64, crc64Combine } from '../../src/checksum/crc64.ts';
import type { BlockDevice } from '../../src/device/blockDevice.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { StorageError } from '../../src/errors.ts';
import { systemRuntime } from '../../src/runtime.ts';

const clusterBytes = 64 * 1024;
const clustersPerSnapshot = 6;
const nodes: StorageNode[] = [];

afterEach(async () => {
  for (const node of nodes.splice(0)) await node.shutdown();
});

/** A node on a malloc bdev with `count` snapshots, each owning distinct clusters; walks paced slowly. */
async function nodeWithSnapshots(count: number, options: { maxConcurrent?: number; rateMib?: number } = {}) {
  const node = new StorageNode(systemRuntime, {
    backgroundOptions: { max_concurrent_checksums: options.maxConcurrent ?? 1, checksum_rate_mib_per_sec: options.rateMib ?? 1 },
  });
  nodes.push(node);
  await node.createMallocBdev({ name: 'm0', numBlocks: (64 * 1024 * 1024) / 512, blockSize: 512 });
  await node.lvstores.create({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
  const expected = new Map<string, bigint>();
  for (let index = 0; index < count; index++) {
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `vol${index}`, sizeMib: 1, thin: true });
    let crc = 0n;
    for (let cluster = 0; cluster < clustersPerSnapshot; cluster++) {
      const data = Buffer.alloc(clusterBytes, index * 16 + cluster + 1);
      await node.bdev(`lvs/vol${index}`).write(cluster * clusterBytes, data);
      crc = crc64Combine(crc, crc64(data), data.length);
    }
    await node.snapshot(`lvs/vol${index}`, `snap${index}`, {});
    expected.set(`lvs/snap${index}`, crc);
  }
  return { node, expected };
}

/** A view of `device` that outlives a node: closing it keeps the bytes, so a second node loads them. */
function persistent(device: MemoryDevice): BlockDevice {
  return {
    kind: device.kind,
    sizeBytes: device.sizeBytes,
    blockSizeBytes: device.blockSizeBytes,
    readInto: (target, offset) => device.readInto(target, offset),
    write: (offset, data) => device.write(offset, data),
    discard: (offset, length) => device.discard(offset, length),
    flush: () => device.flush(),
    close: async () => {},
  };
}

function state(node: StorageNode, name: string): string {
  return node.checksums.status(name).state;
}

async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition never held');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function settleLater(promise: Promise<unknown>): { outcome: () => unknown; settled: () => boolean } {
  let settled = false;
  let outcome: unknown;
  promise.then(
    (value) => ((settled = true), (outcome = value)),
    (error: unknown) => ((settled = true), (outcome = error)),
  );
  return { outcome: () => outcome, settled: () => settled };
}

describe('background scheduler', () => {
  it('admits at most max_concurrent_checksums walks; the rest wait queued, in order, with their positions', async () => {
    const { node } = await nodeWithSnapshots(3, { maxConcurrent: 1 });
    const runs = [0, 1, 2].map((index) => settleLater(node.checksums.register(`lvs/snap${index}`, 'whole', false)));
    await until(() => state(node, 'lvs/snap2') !== 'idle');
    expect(state(node, 'lvs/snap0')).toBe('computing');
    expect(node.checksums.status('lvs/snap1')).toMatchObject({ state: 'queued', queue_position: 1 });
    expect(node.checksums.status('lvs/snap2')).toMatchObject({ state: 'queued', queue_position: 2 });
    expect(node.scheduler.stats()).toMatchObject({ state: 'saturated', running: 1, queued: 2 });

    await node.checksums.stop('lvs/snap0');
    expect(state(node, 'lvs/snap1')).toBe('computing');
    expect(node.checksums.status('lvs/snap2')).toMatchObject({ state: 'queued', queue_position: 1 });

    // Raising the cap admits the waiting walk at once.
    await node.scheduler.setOptions({ max_concurrent_checksums: 4 });
    expect(state(node, 'lvs/snap2')).toBe('computing');
    expect(node.scheduler.stats()).toMatchObject({ state: 'running', running: 2, queued: 0 });

    await node.scheduler.setOptions({ checksum_rate_mib_per_sec: 0 });
    await until(() => runs[1]!.settled() && runs[2]!.settled());
    expect(runs[0]!.outcome()).toMatchObject({ errno: 'EINTR', data: { reason: 'stopped' } });
    expect(runs[1]!.outcome()).toBe(true);
    expect(node.scheduler.stats()).toMatchObject({ state: 'idle', running: 0, queued: 0 });
  });

  it('stops a queued walk at once: it never reads, and the stop answers true', async () => {
    const { node } = await nodeWithSnapshots(2, { maxConcurrent: 1 });
    const first = settleLater(node.checksums.register('lvs/snap0', 'whole', false));
    const second = settleLater(node.checksums.register('lvs/snap1', 'whole', false));
    await until(() => state(node, 'lvs/snap1') === 'queued');
    await expect(node.checksums.stop('lvs/snap1')).resolves.toBe(true);
    await until(() => second.settled());
    expect(second.outcome()).toMatchObject({ errno: 'EINTR', data: { reason: 'stopped', clusters_done: 0 } });
    expect(node.checksums.status('lvs/snap1')).toMatchObject({ state: 'aborted', resumable: true, will_resume: false });
    await node.checksums.stop('lvs/snap0');
    await until(() => first.settled());
  });

  it('re-queues a walk preempted by a clone; it resumes by itself and stores the right value', async () => {
    const { node, expected } = await nodeWithSnapshots(1, { maxConcurrent: 2 });
    const run = settleLater(node.checksums.register('lvs/snap0', 'whole', false));
    await until(() => node.checksums.status('lvs/snap0').clusters_done >= 1);
    await node.clone('lvs/snap0', 'clone0');
    await until(() => run.settled());
    expect(run.outcome()).toBeInstanceOf(StorageError);
    expect(run.outcome()).toMatchObject({ errno: 'EINTR', data: { reason: 'preempted by bdev_lvol_clone' } });
    // Back in the scheduler's hands, continuing where it stood.
    expect(['queued', 'computing']).toContain(state(node, 'lvs/snap0'));
    await node.scheduler.setOptions({ checksum_rate_mib_per_sec: 0 });
    await until(() => state(node, 'lvs/snap0') === 'done');
    expect(node.checksums.get('lvs/snap0')).toBe(expected.get('lvs/snap0'));
  });

  it('leaves a walk stopped by a user stopped', async () => {
    const { node } = await nodeWithSnapshots(1);
    const run = settleLater(node.checksums.register('lvs/snap0', 'whole', false));
    await until(() => node.checksums.status('lvs/snap0').clusters_done >= 1);
    await node.checksums.stop('lvs/snap0');
    await until(() => run.settled());
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(node.checksums.status('lvs/snap0')).toMatchObject({ state: 'aborted', reason: 'stopped', will_resume: false });
  });

  it('does not abort a running walk for a priority operation that is then refused', async () => {
    const { node, expected } = await nodeWithSnapshots(2, { maxConcurrent: 2 });
    await node.clone('lvs/snap0', 'c1');
    await node.clone('lvs/snap0', 'c2');
    const run = settleLater(node.checksums.register('lvs/snap0', 'whole', false));
    await until(() => state(node, 'lvs/snap0') === 'computing');
    const refusals: Array<[string, Promise<unknown>, string]> = [
      ['delete with two clones', node.deleteLvol('lvs/snap0'), 'EPERM'],
      ['clone to a name that exists', node.clone('lvs/snap0', 'c1'), 'EEXIST'],
      ['set_parent to the current parent', node.setParent('lvs/c1', 'lvs/snap0'), 'EEXIST'],
      ['decouple without a parent', node.copyUpFromParent('lvs/snap0', 'decouple'), 'EINVAL'],
    ];
    for (const [what, call, errno] of refusals) {
      await expect(call, what).rejects.toMatchObject({ errno });
      expect(state(node, 'lvs/snap0'), what).toBe('computing');
    }
    expect(run.settled()).toBe(false);
    await node.scheduler.setOptions({ checksum_rate_mib_per_sec: 0 });
    await until(() => run.settled());
    expect(run.outcome()).toBe(true);
    expect(node.checksums.get('lvs/snap0')).toBe(expected.get('lvs/snap0'));
  });

  it('shows admissions and the queue in the inspection stream of the scheduler actor', async () => {
    const { node } = await nodeWithSnapshots(2, { maxConcurrent: 1 });
    const records: InspectionRecord[] = [];
    const cancel = node.inspector.subscribe('scheduler', (batch) => (records.push(...batch.events), true));
    const runs = [0, 1].map((index) => settleLater(node.checksums.register(`lvs/snap${index}`, 'whole', false)));
    await until(() => records.some((record) => record.type === 'snapshot' && (record.snapshot as { value?: unknown }).value === 'saturated'));
    const requested = records.filter((record) => record.type === 'event' && (record.event as { type: string }).type === 'walk.request');
    expect(requested.map((record) => (record.event as { lvolId: string }).lvolId)).toEqual([
      node.resolveLvol('lvs/snap0').lvol.id,
      node.resolveLvol('lvs/snap1').lvol.id,
    ]);
    cancel();
    await node.preemptAll('shutdown');
    await until(() => runs.every((run) => run.settled()));
  });

  it('refuses bad options and keeps the old ones, also when saving them fails', async () => {
    let saves = 0;
    const node = new StorageNode(systemRuntime, {
      onBackgroundOptionsChanged: async () => {
        saves++;
        if (saves > 1) throw new Error('disk full');
      },
    });
    nodes.push(node);
    const before = node.scheduler.options();
    await expect(node.scheduler.setOptions({ max_concurrent_checksums: 0 })).rejects.toMatchObject({ errno: 'EINVAL' });
    await expect(node.scheduler.setOptions({ checksum_rate_mib_per_sec: -1 })).rejects.toMatchObject({ errno: 'EINVAL' });
    expect(node.scheduler.options()).toEqual(before);
    await node.scheduler.setOptions({ max_concurrent_checksums: 3 });
    await expect(node.scheduler.setOptions({ max_concurrent_checksums: 5 })).rejects.toThrow('disk full');
    expect(node.scheduler.options().max_concurrent_checksums).toBe(3);
  });

  it('applies concurrent option changes one after the other: memory and the saved copy agree', async () => {
    const saved: number[] = [];
    const node = new StorageNode(systemRuntime, {
      // Earlier changes save slower: unserialized, they would land last and undo the later ones.
      onBackgroundOptionsChanged: async (options) => {
        await new Promise((resolve) => setTimeout(resolve, (6 - options.max_concurrent_checksums) * 5));
        saved.push(options.max_concurrent_checksums);
      },
    });
    nodes.push(node);
    await Promise.all([2, 3, 4, 5].map((count) => node.scheduler.setOptions({ max_concurrent_checksums: count })));
    expect(saved).toEqual([2, 3, 4, 5]);
    expect(node.scheduler.options().max_concurrent_checksums).toBe(5);
    expect(node.scheduler.actor.getSnapshot().context.maxConcurrent).toBe(5);
  });

  it('paces walks to checksum_rate_mib_per_sec', async () => {
    // 6 clusters of 64 KiB at 1 MiB/s: the first read starts at once, the other five wait 62.5 ms each.
    const { node } = await nodeWithSnapshots(1, { rateMib: 1 });
    const startedMs = Date.now();
    await node.checksums.register('lvs/snap0', 'whole', false);
    expect(Date.now() - startedMs).toBeGreaterThanOrEqual(250);
  });

  it('gives the walks behind a stopped queued walk their places', async () => {
    // Goal: queue_position stays right when a walk leaves from the middle of the line.
    const { node } = await nodeWithSnapshots(5, { maxConcurrent: 1 });
    const runs = [0, 1, 2, 3, 4].map((index) => settleLater(node.checksums.register(`lvs/snap${index}`, 'whole', false)));
    await until(() => state(node, 'lvs/snap4') === 'queued');
    const positions = () => [1, 2, 3, 4].map((index) => node.checksums.status(`lvs/snap${index}`).queue_position);
    expect(positions()).toEqual([1, 2, 3, 4]);
    await node.checksums.stop('lvs/snap2');
    expect(positions()).toEqual([1, null, 2, 3]);
    await node.checksums.stop('lvs/snap1');
    expect(positions()).toEqual([null, null, 1, 2]);
    expect(node.scheduler.stats()).toMatchObject({ running: 1, queued: 2 });
    // The head of the line is next: the running walk ends, snap3 computes, snap4 is first in line.
    await node.checksums.stop('lvs/snap0');
    expect(state(node, 'lvs/snap3')).toBe('computing');
    expect(node.checksums.status('lvs/snap4').queue_position).toBe(1);
    await node.preemptAll('shutdown');
    await until(() => runs.every((run) => run.settled()));
  });

  it('re-queues many interrupted walks at a restart in slices, in the order they were queued', async () => {
    // Goal: SPEC §6.6 and §10 — walks waiting when the node stopped come back waiting, in their
    // order, and the event loop turns while they re-queue (16,000 in one pass held it for seconds).
    const count = 120;
    const device = new MemoryDevice(64 * 1024 * 1024, 512);
    // One slot, and a rate so low that the admitted walk waits on its pacing after its first read.
    const options = { backgroundOptions: { max_concurrent_checksums: 1, checksum_rate_mib_per_sec: 0.001 } };
    const first = new StorageNode(systemRuntime, options);
    await first.attachBaseDevice('m0', persistent(device));
    await first.lvstores.create({ bdevName: 'm0', lvsName: 'lvs', clusterBytes: 4096, clearMethod: 'none' });
    const names: string[] = [];
    for (let index = 0; index < count; index++) {
      await first.createLvol({ selector: { lvs_name: 'lvs' }, name: `vol${index}`, sizeMib: 1, thin: true });
      await first.bdev(`lvs/vol${index}`).write(0, Buffer.alloc(3 * 4096, index + 1));
      await first.snapshot(`lvs/vol${index}`, `snap${index}`, {});
      names.push(`lvs/snap${index}`);
    }
    const runs = names.map((name) => first.checksums.register(name, 'whole', false).catch((error: unknown) => error));
    await until(() => first.scheduler.stats().queued === count - 1);
    await first.shutdown();
    for (const run of runs) expect(await run).toMatchObject({ errno: 'EINTR', data: { reason: 'preempted by shutdown' } });

    const second = new StorageNode(systemRuntime, options);
    nodes.push(second);
    // At every turn of the event loop while the lvstore loads: how many walks are back in line.
    const backAtTurns: number[] = [];
    let watching = true;
    const tick = (): void => {
      const stats = second.scheduler.stats();
      backAtTurns.push(stats.queued + stats.admissions);
      if (watching) setImmediate(tick);
    };
    setImmediate(tick);
    await second.attachBaseDevice('m0', persistent(device));
    watching = false;
    const stats = second.scheduler.stats();
    expect(stats.queued + stats.admissions).toBe(count);
    // The loop turned between slices: some turns saw only part of the walks back.
    expect(backAtTurns.filter((back) => back > 0 && back < count).length).toBeGreaterThanOrEqual(2);
    // In the order they waited before, each with its place.
    const { context } = second.scheduler.actor.getSnapshot();
    expect([...context.running, ...context.queue.toArray()]).toEqual(names.map((name) => second.resolveLvol(name).lvol.id));
    expect(state(second, names[0]!)).toBe('computing');
    for (const [index, name] of names.entries()) {
      if (index > 0) expect(second.checksums.status(name), name).toMatchObject({ state: 'queued', queue_position: index });
    }
  });
});

