// Goal: the policy actor on a simulated clock starts due verifies only inside a window, oldest
// verification first; a window's end stops a running verify, which resumes in the next window where
// it stood; jitter, verify-after-register and overdue counts; bad input and failed saves change nothing.
import { afterEach, describe, expect, it } from 'vitest';
import { SimulatedClock } from 'xstate';
import { StorageNode } from '../../src/actors/node.ts';
import { dueAtMs, jitterMsOf, lastVerifiedMs } from '../../src/actors/verifyPolicy.ts';
import { checksumReadAheadClusters } from '../../src/constants.ts';
import type { BlockDevice } from '../../src/device/blockDevice.ts';
import { MemoryDevice } from '../../src/device/memoryDevice.ts';
import { SimulatedDevice } from '../../src/device/simulatedDevice.ts';
import { type VerifyPolicy, defaultVerifyPolicy } from '../../src/machines/verifyPolicyMachine.ts';
import { createMethodTable } from '../../src/transport/methods.ts';
import { RpcFrameworkError } from '../../src/transport/errorMapping.ts';
import { writeFileAtomically } from '../../src/cli/config.ts';
import { readVerifyPolicy } from '../../src/cli/serve.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const clusterBytes = 64 * 1024;
const clustersPerSnapshot = 8;
const hourMs = 3600_000;
// Monday 2024-01-01 00:00 UTC.
const mondayMs = Date.UTC(2024, 0, 1);
const nodes: StorageNode[] = [];
afterEach(async () => {
  for (const node of nodes.splice(0)) await node.shutdown();
});

/** A memory device whose cluster-sized reads can be held (a walk stands mid-way) and are counted. */
class GatedDevice implements BlockDevice {
  readonly kind = 'memory' as const;
  readonly inner = new MemoryDevice(32 * 1024 * 1024, 512);
  readonly sizeBytes = this.inner.sizeBytes;
  readonly blockSizeBytes = 512;
  clusterReads = 0;
  holding = false;
  private held: Array<() => void> = [];
  async readInto(target: Buffer, offset: number): Promise<void> {
    if (target.length === clusterBytes) {
      while (this.holding) await new Promise<void>((resolve) => this.held.push(resolve));
      this.clusterReads++;
    }
    return this.inner.readInto(target, offset);
  }
  release(): void {
    this.holding = false;
    for (const resolve of this.held.splice(0)) resolve();
  }
  get waiting(): number {
    return this.held.length;
  }
  write(offset: number, data: Uint8Array) { return this.inner.write(offset, data); }
  discard(offset: number, length: number) { return this.inner.discard(offset, length); }
  flush() { return this.inner.flush(); }
  async close() {}
}

async function until(condition: () => boolean): Promise<void> {
  // Turns of the event loop until the condition holds. The bound is only against hanging, and in
  // real time: the CRC threads run at SCHED_IDLE, so on a loaded machine other processes can hold
  // them off for seconds (20,000 turns were not always enough there).
  const deadline = performance.now() + 20_000;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error('condition never held');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function policyNode(policy: Partial<VerifyPolicy>, snapshots: number, options: { saved?: VerifyPolicy[]; failSave?: boolean; device?: BlockDevice } = {}) {
  const clock = new SimulatedClock();
  clock.set(mondayMs);
  let ids = 0;
  const runtime = { nowMs: () => clock.now(), uuid: () => `00000000-0000-4000-8000-${String(++ids).padStart(12, '0')}`, yieldMacrotask: () => new Promise<void>((resolve) => setImmediate(resolve)) };
  const node = new StorageNode(runtime, {
    backgroundOptions: { max_concurrent_checksums: 4, checksum_rate_mib_per_sec: 0 },
    verifyPolicy: {
      policy: { ...defaultVerifyPolicy(), ...policy },
      clock,
      onPolicyChanged: async (next) => {
        if (options.failSave) throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
        options.saved?.push(next);
      },
    },
  });
  nodes.push(node);
  const device = new GatedDevice();
  await node.attachBaseDevice('m0', options.device ?? device);
  await node.lvstores.create({ bdevName: 'm0', lvsName: 'lvs', clusterBytes, clearMethod: 'none' });
  for (let index = 0; index < snapshots; index++) {
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name: `vol${index}`, sizeMib: 1, thin: true });
    for (let cluster = 0; cluster < clustersPerSnapshot; cluster++) await node.bdev(`lvs/vol${index}`).write(cluster * clusterBytes, Buffer.alloc(clusterBytes, index * 16 + cluster + 1));
    await node.snapshot(`lvs/vol${index}`, `snap${index}`, {});
    await node.checksums.register(`lvs/snap${index}`, 'range', false);
  }
  await node.actorStarter.idle();
  return { node, clock, device };
}

const verifiedAt = (node: StorageNode, name: string) => node.resolveLvolDurable(name).lvol.verification?.verifiedAtMs ?? null;
const result = (node: StorageNode, name: string) => node.resolveLvolDurable(name).lvol.verification?.result ?? null;
const window2to4 = [{ days: [1], start_hour: 2, end_hour: 4 }];
const day = 24 * 3600;

describe('verification policy actor', () => {
  it('starts a due snapshot inside a window and not outside', async () => {
    const { node, clock } = await policyNode({ enabled: true, interval_sec: day, jitter_sec: 0, windows: window2to4 }, 1);
    // Due (created a day ago by the clock below) but outside the window: nothing starts.
    clock.increment(day * 1000 + hourMs); // Tuesday 01:00 — Tuesday has no window.
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy() });
    for (let turn = 0; turn < 200; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(node.verifyPolicy.actor.getSnapshot().value).toBe('outsideWindow');
    expect(result(node, 'lvs/snap0')).toBeNull();
    // Next Monday 02:00: the window opens by its delay and the verify runs.
    clock.increment(6 * day * 1000 + hourMs);
    expect(node.verifyPolicy.actor.getSnapshot().value).toBe('inWindow');
    await until(() => result(node, 'lvs/snap0') === 'clean');
  });

  it('verifies the oldest verification first', async () => {
    const { node, clock } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0 }, 3);
    await node.scheduler.setOptions({ max_concurrent_checksums: 1 });
    // Verified by hand at different times: snap1 longest ago, then snap2, then snap0.
    for (const name of ['lvs/snap1', 'lvs/snap2', 'lvs/snap0']) {
      await node.checksums.verify(name, false, false);
      clock.increment(hourMs);
    }
    clock.increment(2 * day * 1000);
    const order: string[] = [];
    node.events.on('event', (event) => {
      // A walk repeats `computing` as it makes progress: its first one marks when it started.
      if (event.type === 'checksum_state' && event.state === 'computing' && !order.includes(String(event.uuid))) order.push(String(event.uuid));
    });
    const enabledAt = clock.now();
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true });
    // Real timers pass and the simulated clock moves a millisecond a round: a walk the scheduler
    // paces (it backs off after foreground work) waits on timers, not on event-loop turns.
    const allVerified = () => order.length === 3 && ['lvs/snap0', 'lvs/snap1', 'lvs/snap2'].every((name) => result(node, name) === 'clean' && verifiedAt(node, name)! >= enabledAt);
    for (let round = 0; round < 5_000 && !allVerified(); round++) {
      clock.increment(1);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(allVerified(), `order ${order.length}, states ${['lvs/snap0', 'lvs/snap1', 'lvs/snap2'].map((name) => node.checksums.status(name).state)}`).toBe(true);
    const idOf = (name: string) => node.resolveLvol(name).lvol.id;
    expect(order).toEqual([idOf('lvs/snap1'), idOf('lvs/snap2'), idOf('lvs/snap0')]);
  });

  it('stops a running verify at the window end within one cluster step and resumes it next window where it stood', async () => {
    const { node, clock, device } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0, windows: window2to4 }, 1);
    clock.increment(2 * hourMs + 1); // Monday 02:00, inside the window; the snapshot is older than…
    clock.increment(0);
    const policy = { ...node.verifyPolicy.policy(), enabled: true, interval_sec: 3600 };
    const readsBefore = device.clusterReads;
    await node.verifyPolicy.setPolicy(policy);
    await until(() => device.clusterReads - readsBefore >= 3);
    device.holding = true;
    await until(() => device.waiting > 0);
    // The window closes while a cluster read is in flight.
    clock.increment(2 * hourMs);
    expect(node.verifyPolicy.actor.getSnapshot().value).toBe('outsideWindow');
    device.release();
    await until(() => node.checksums.status('lvs/snap0').state === 'aborted');
    const stopped = node.checksums.status('lvs/snap0');
    expect(stopped.reason).toBe('verify window closed');
    expect(stopped.resumable).toBe(true);
    expect(stopped.clusters_done).toBeLessThan(clustersPerSnapshot);
    const readAtStop = device.clusterReads - readsBefore;
    // At most the in-flight cluster and the read-ahead beyond the ones done (this device has no
    // queue, so every read-ahead had begun; behind a device queue only the first would have).
    expect(readAtStop).toBeLessThanOrEqual(stopped.clusters_done + checksumReadAheadClusters);
    await until(() => result(node, 'lvs/snap0') === 'incomplete');
    // Nothing is read until the next window (next Monday 02:00).
    for (let turn = 0; turn < 200; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(device.clusterReads - readsBefore).toBe(readAtStop);
    clock.increment(7 * day * 1000 - 2 * hourMs);
    expect(node.verifyPolicy.actor.getSnapshot().value).toBe('inWindow');
    await until(() => result(node, 'lvs/snap0') === 'clean');
    // Resumed where it stood: the clusters done before were not read again.
    expect(device.clusterReads - readsBefore).toBeLessThanOrEqual(clustersPerSnapshot + checksumReadAheadClusters);
  });

  it('keeps a preempted policy verify its own after the node resumes it: the window end still stops it', async () => {
    const { node, clock, device } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0, windows: window2to4 }, 1);
    clock.increment(2 * hourMs + 1);
    const readsBefore = device.clusterReads;
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true, interval_sec: 3600 });
    await until(() => device.clusterReads - readsBefore >= 2);
    device.holding = true;
    await until(() => device.waiting > 0);
    // A clone of the snapshot preempts the walk; the node re-queues it once the clone is made.
    const cloned = node.clone('lvs/snap0', 'c0');
    device.release();
    await cloned;
    await until(() => node.checksums.status('lvs/snap0').state === 'computing');
    expect((await node.verifyPolicy.stats()).running).toBe(1);
    device.holding = true;
    await until(() => device.waiting > 0);
    clock.increment(2 * hourMs);
    device.release();
    await until(() => node.checksums.status('lvs/snap0').state === 'aborted');
    expect(node.checksums.status('lvs/snap0').reason).toBe('verify window closed');
    await until(() => result(node, 'lvs/snap0') === 'incomplete');
    expect((await node.verifyPolicy.stats()).running).toBe(0);
  });

  it('spreads the interval by a per-snapshot jitter share within [0, jitter]', () => {
    const shares = ['a', 'b', 'c', 'd', 'e', 'f'].map((id) => jitterMsOf(id, 1000, 3_600_000));
    for (const share of shares) expect(share).toBeGreaterThanOrEqual(0);
    for (const share of shares) expect(share).toBeLessThanOrEqual(3_600_000);
    expect(new Set(shares).size).toBeGreaterThan(1);
    expect(jitterMsOf('a', 1000, 0)).toBe(0);
  });

  it('is not due before interval + its jitter share, and due after', async () => {
    const { node, clock } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: day }, 1);
    await node.checksums.verify('lvs/snap0', false, false);
    const lvol = node.resolveLvolDurable('lvs/snap0').lvol;
    const policy = node.verifyPolicy.policy();
    const due = dueAtMs(lvol, policy);
    expect(due).toBe(lvol.verification!.verifiedAtMs! + day * 1000 + jitterMsOf(lvol.id, lvol.verification!.verifiedAtMs!, day * 1000));
    clock.set(due - 1);
    await node.verifyPolicy.setPolicy({ ...policy, enabled: true });
    expect((await node.verifyPolicy.stats()).due).toBe(0);
    clock.set(due);
    expect((await node.verifyPolicy.stats()).due).toBe(1);
  });

  it('counts the interval from the last whole verify: an errors-only verify or a merge does not restart it', async () => {
    const { node, clock } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0 }, 1);
    await node.checksums.verify('lvs/snap0', false, false);
    const wholeAt = verifiedAt(node, 'lvs/snap0')!;
    clock.increment(3600 * 1000);
    await node.checksums.verify('lvs/snap0', true, false);
    const lvol = node.resolveLvolDurable('lvs/snap0').lvol;
    expect(lvol.verification).toMatchObject({ errorsOnly: true, result: 'clean', verifiedAtMs: wholeAt + 3600 * 1000 });
    expect(lastVerifiedMs(lvol)).toBe(wholeAt);
    expect(dueAtMs(lvol, node.verifyPolicy.policy())).toBe(wholeAt + day * 1000);
  });

  it('verifies right after a first registration when verify_after_register is set', async () => {
    const { node } = await policyNode({ enabled: true, interval_sec: day, jitter_sec: 0, verify_after_register: true }, 0);
    await node.createLvol({ selector: { lvs_name: 'lvs' }, name: 'v', sizeMib: 1, thin: true });
    await node.bdev('lvs/v').write(0, Buffer.alloc(clusterBytes, 7));
    await node.snapshot('lvs/v', 's', {});
    await node.checksums.register('lvs/s', 'range', false);
    await until(() => result(node, 'lvs/s') === 'clean');
  });

  it('does not verify after registration when verify_after_register is off (not due yet)', async () => {
    const { node } = await policyNode({ enabled: true, interval_sec: day, jitter_sec: 0, verify_after_register: false }, 1);
    for (let turn = 0; turn < 500; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(result(node, 'lvs/snap0')).toBeNull();
  });

  it('counts overdue snapshots (not verified within interval + jitter + grace)', async () => {
    const { node, clock } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0, grace_sec: day }, 2);
    await node.checksums.verify('lvs/snap0', false, false);
    clock.increment(1.5 * day * 1000);
    await node.checksums.verify('lvs/snap1', false, false);
    clock.increment(0.6 * day * 1000);
    // snap0: 2.1 days since its verify (overdue); snap1: 0.6 days.
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true, windows: [{ days: [6], start_hour: 0, end_hour: 1 }] });
    const stats = await node.verifyPolicy.stats();
    expect(stats.overdue).toBe(1);
    expect(stats.due).toBe(1);
    const table = createMethodTable(node);
    const view = (await table.node_get_stats!.handler({}, { id: 0, notify: () => false, onClose: () => {} })) as { verify_policy: { overdue: number } };
    expect(view.verify_policy.overdue).toBe(1);
  });

  it('paces the reads of the verifies it starts to rate_mib_per_sec, all of them together, on the simulated clock', async () => {
    // Goal: the policy's own cap holds over an interval of simulated time to within one cluster,
    // across three verifies admitted at once; and it does not stall them (they read about the cap).
    const { node, clock, device } = await policyNode({ enabled: false, interval_sec: day, jitter_sec: 0 }, 3);
    clock.increment(day * 1000 + 1); // every snapshot is due
    const rateMib = 0.5; // 8 clusters of 64 KiB a second
    const readsBefore = device.clusterReads;
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true, rate_mib_per_sec: rateMib });
    expect(node.scheduler.actor.getSnapshot().context).toMatchObject({ policyRateBytesPerSec: rateMib * 1024 * 1024 });
    const startMs = clock.now();
    const stepMs = 25;
    const readBytesAt = new Map<number, number>();
    let policyWalksMax = 0;
    const capBytesPerMs = (rateMib * 1024 * 1024) / 1000;
    for (let elapsedMs = 0; elapsedMs <= 2000; elapsedMs += stepMs) {
      // The CRC threads run at SCHED_IDLE: on a loaded machine a read the cap allows may land many
      // turns late. Wait (in turns, bounded) for what the cap allows by now, so lateness is not
      // mistaken for starvation; a cap enforced too strictly still ends short and fails below.
      // Bounded in real time, not turns: other processes at normal priority can starve those
      // threads for seconds on the shared 2-core machine (20,000 turns were not always enough).
      const allowedBytes = elapsedMs * capBytesPerMs - clusterBytes;
      const deadline = performance.now() + 10_000;
      while ((device.clusterReads - readsBefore) * clusterBytes < allowedBytes && performance.now() < deadline) {
        await new Promise((resolve) => setImmediate(resolve));
      }
      for (let turn = 0; turn < 60; turn++) await new Promise((resolve) => setImmediate(resolve));
      readBytesAt.set(elapsedMs, (device.clusterReads - readsBefore) * clusterBytes);
      policyWalksMax = Math.max(policyWalksMax, node.scheduler.actor.getSnapshot().context.policyWalks.length);
      clock.increment(stepMs);
    }
    expect(clock.now() - startMs).toBeGreaterThan(2000);
    // All three ran under the cap together (one may finish first: the shares need not be even).
    expect(policyWalksMax).toBe(3);
    for (const [fromMs, fromBytes] of readBytesAt) {
      for (const [toMs, toBytes] of readBytesAt) {
        if (toMs <= fromMs) continue;
        expect(toBytes - fromBytes, `${fromMs}..${toMs} ms`).toBeLessThanOrEqual((toMs - fromMs) * capBytesPerMs + clusterBytes);
      }
    }
    // Not starved either: over the two seconds it read what the cap allows, within a cluster either side.
    expect(readBytesAt.get(2000)!).toBeGreaterThanOrEqual(2000 * capBytesPerMs - clusterBytes);
    expect(node.scheduler.stats().policy_reads_paced).toBeGreaterThan(0);
  });

  it('does not pace a client verify or a registration to the policy cap', async () => {
    // Goal: only the walks the policy started are held to its cap; with the simulated clock
    // standing still, a paced walk could not get past its first wait.
    const { node } = await policyNode({ enabled: false, rate_mib_per_sec: 0.001 }, 1);
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true, interval_sec: day });
    const verify = node.checksums.verify('lvs/snap0', false, false);
    await until(() => result(node, 'lvs/snap0') === 'clean');
    await verify;
    await node.checksums.register('lvs/snap0', 'range', false);
    expect(node.scheduler.stats().policy_reads_paced).toBe(0);
  });

  it('backs off a snapshot whose policy verifies fail on read errors: 1 min doubling to the interval, reset by a result', async () => {
    // Goal: a snapshot on a failing device is not retried at every re-scan. Every cluster read
    // fails while `failing` (the simulated device's read fault, re-armed at each read); the times
    // of the attempts follow 60, 120, 240 s, then the interval (300 s); a success clears it.
    const device = new SimulatedDevice(32 * 1024 * 1024, 512);
    let failing = false;
    device.onIoStart = (kind, _offsetBytes, lengthBytes) => {
      if (failing && kind === 'read' && lengthBytes === clusterBytes) device.setFaults({ failReadAt: 1 });
    };
    const { node, clock } = await policyNode({ enabled: false, interval_sec: 300, jitter_sec: 0 }, 1, { device });
    const attemptsAtMs: number[] = [];
    node.events.on('event', (event) => {
      if (event.type === 'checksum_state' && event.mode === 'verify' && event.state === 'failed' && event.previous !== 'failed') attemptsAtMs.push(clock.now());
    });
    clock.increment(300_000 + 1); // due
    failing = true;
    const startMs = clock.now();
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true });
    const settle = async () => {
      for (let turn = 0; turn < 100; turn++) await new Promise((resolve) => setImmediate(resolve));
    };
    await settle();
    expect(attemptsAtMs).toEqual([startMs]);
    const context = () => node.verifyPolicy.actor.getSnapshot().context;
    const id = node.resolveLvol('lvs/snap0').lvol.id;
    expect(context().backingOff[id]).toEqual({ failures: 1, retryAtMs: startMs + 60_000 });
    expect(await node.verifyPolicy.stats()).toMatchObject({ backing_off: 1, next_retry_at: new Date(startMs + 60_000).toISOString() });
    // Twenty minutes in 10 s steps: the re-scans every minute start only the snapshots whose back-off ended.
    for (let elapsedMs = 10_000; elapsedMs <= 20 * 60_000; elapsedMs += 10_000) {
      clock.increment(10_000);
      await settle();
    }
    const offsetsSec = attemptsAtMs.map((atMs) => (atMs - startMs) / 1000);
    expect(offsetsSec).toEqual([0, 60, 180, 420, 720, 1020]);
    expect(context().backingOff[id]).toMatchObject({ failures: 6 });
    // The device heals: the next attempt records a result and the back-off is gone.
    failing = false;
    device.setFaults({});
    clock.increment(300_000);
    await until(() => result(node, 'lvs/snap0') === 'clean');
    await settle();
    expect(context().backingOff[id]).toBeUndefined();
    expect(await node.verifyPolicy.stats()).toMatchObject({ backing_off: 0, next_retry_at: null });
  });

  it('forgets the back-off of a snapshot that is deleted while it backs off', async () => {
    // Goal: back-off entries do not outlive their snapshot (the policy's context would otherwise
    // keep one per snapshot ever deleted while its device failed).
    const device = new SimulatedDevice(32 * 1024 * 1024, 512);
    let failing = false;
    device.onIoStart = (kind, _offsetBytes, lengthBytes) => {
      if (failing && kind === 'read' && lengthBytes === clusterBytes) device.setFaults({ failReadAt: 1 });
    };
    const { node, clock } = await policyNode({ enabled: false, interval_sec: 300, jitter_sec: 0 }, 1, { device });
    clock.increment(300_000 + 1);
    failing = true;
    await node.verifyPolicy.setPolicy({ ...node.verifyPolicy.policy(), enabled: true });
    const context = () => node.verifyPolicy.actor.getSnapshot().context;
    const id = node.resolveLvol('lvs/snap0').lvol.id;
    await until(() => context().backingOff[id] !== undefined);
    failing = false;
    device.setFaults({});
    await node.deleteLvol('lvs/snap0');
    // The next re-scan (every minute) sees it gone.
    clock.increment(60_000);
    await until(() => context().backingOff[id] === undefined);
    expect(await node.verifyPolicy.stats()).toMatchObject({ backing_off: 0, next_retry_at: null });
  });

  it('refuses a bad rate_mib_per_sec with -32602, changing nothing in memory or in the saved file; a good one is saved and shown', async () => {
    const saved: VerifyPolicy[] = [];
    const { node } = await policyNode({}, 0, { saved });
    const table = createMethodTable(node);
    const set = table.node_set_verify_policy!;
    const get = table.node_get_verify_policy!;
    const connection = { id: 0, notify: () => false, onClose: () => {} };
    const before = node.verifyPolicy.policy();
    // Not numbers: refused as the params are read (-32602 at the transport).
    expect(set.params.safeParse({ rate_mib_per_sec: 'fast' }).success).toBe(false);
    expect(set.params.safeParse({ rate_mib_per_sec: Number.NaN }).success).toBe(false);
    for (const params of [{ rate_mib_per_sec: -1 }, { rate_mib_per_sec: 2_000_000 }]) {
      const error = await Promise.resolve()
        .then(() => set.handler(set.params.parse(params), connection))
        .catch((caught: unknown) => caught);
      expect(error, JSON.stringify(params)).toBeInstanceOf(RpcFrameworkError);
      expect((error as RpcFrameworkError).code).toBe(-32602);
    }
    expect(node.verifyPolicy.policy()).toEqual(before);
    expect(saved).toEqual([]);
    expect(node.scheduler.actor.getSnapshot().context.policyRateBytesPerSec).toBe(0);
    await set.handler(set.params.parse({ rate_mib_per_sec: 2.5 }), connection);
    expect(saved.at(-1)).toMatchObject({ rate_mib_per_sec: 2.5 });
    expect(get.result.parse(await get.handler({}, connection))).toMatchObject({ rate_mib_per_sec: 2.5 });
    expect(node.scheduler.actor.getSnapshot().context.policyRateBytesPerSec).toBe(2.5 * 1024 * 1024);
    // A file saved before the cap existed reads as no cap of its own.
    const dir = await mkdtemp(join(tmpdir(), 'lvnode-verify-policy-'));
    const { rate_mib_per_sec: _dropped, ...older } = saved.at(-1)!;
    await writeFileAtomically(join(dir, 'old.json'), JSON.stringify(older));
    expect(await readVerifyPolicy(join(dir, 'old.json'))).toMatchObject({ rate_mib_per_sec: 0 });
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses bad policy input with -32602 and changes nothing', async () => {
    const { node } = await policyNode({}, 0);
    const table = createMethodTable(node);
    const method = table.node_set_verify_policy!;
    const before = node.verifyPolicy.policy();
    expect(method.params.safeParse({ windows: [{ days: [1], start_hour: 5, end_hour: 5 }] }).success).toBe(false);
    expect(method.params.safeParse({ windows: [{ days: [7], start_hour: 1, end_hour: 5 }] }).success).toBe(false);
    const call = (params: unknown) => method.handler(method.params.parse(params), { id: 0, notify: () => false, onClose: () => {} });
    for (const params of [{ interval_sec: 10 }, { jitter_sec: 30 * day }, { grace_sec: -1 }]) {
      const error = await Promise.resolve(call(params)).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(RpcFrameworkError);
      expect((error as RpcFrameworkError).code).toBe(-32602);
    }
    expect(node.verifyPolicy.policy()).toEqual(before);
  });

  it('refuses a policy it cannot save with -28 and keeps the old one', async () => {
    const { node } = await policyNode({}, 0, { failSave: true });
    const before = node.verifyPolicy.policy();
    const error = await node.verifyPolicy.setPolicy({ ...before, enabled: true }).catch((caught: unknown) => caught);
    expect((error as { errno?: string }).errno).toBe('ENOSPC');
    expect(node.verifyPolicy.policy()).toEqual(before);
    expect(node.verifyPolicy.actor.getSnapshot().value).toBe('disabled');
  });

  it('keeps the policy across a restart (saved file read at start)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lvnode-verify-policy-'));
    const path = join(dir, 'lvnode-verify-policy.json');
    const saved: VerifyPolicy[] = [];
    const { node } = await policyNode({}, 0, { saved });
    const table = createMethodTable(node);
    const set = table.node_set_verify_policy!;
    await set.handler(set.params.parse({ enabled: true, interval_sec: 2 * day, windows: window2to4, verify_after_register: true }), { id: 0, notify: () => false, onClose: () => {} });
    await writeFileAtomically(path, `${JSON.stringify(saved.at(-1), null, 2)}\n`);
    const loaded = await readVerifyPolicy(path);
    expect(loaded).toEqual(node.verifyPolicy.policy());
    expect(loaded).toMatchObject({ enabled: true, interval_sec: 2 * day, verify_after_register: true, windows: window2to4 });
    const restarted = await policyNode(loaded, 0);
    expect(restarted.node.verifyPolicy.policy()).toEqual(loaded);
    await rm(dir, { recursive: true, force: true });
  });
});
