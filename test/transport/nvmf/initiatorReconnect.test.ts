// Goal: lvnode's NVMe/TCP initiator when the connection to its controller is lost, against lvnode's
// own target in-process: I/O in flight when the target stops is resubmitted once it is back on the
// same port and lands with the right bytes (read on the target's memory bdev, not through the
// initiator); a target that never comes back fails waiting I/O with EIO after the loss timeout
// and the controller is deleted, its bdev leaving the registry with a bdev_deleted event; a target that goes silent times the
// command out and the reconnect path runs; several I/O queues are connected and used.
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from 'xstate';
import { InspectionHub } from '../../../src/actors/inspector.ts';
import { type NvmeAttachRequest, NvmeControllers } from '../../../src/actors/nvmeControllers.ts';
import type { NodeEvent } from '../../../src/actors/nodeEvents.ts';
import { Registry } from '../../../src/actors/registry.ts';
import { readBdev } from '../../../src/bdev/bdev.ts';
import type { NvmeBdev } from '../../../src/bdev/nvmeBdev.ts';
import { tcpNvmeConnectorWith } from '../../../src/transport/nvmf/initiator/hostController.ts';
import { errnoOf, memoryBdev, randomData, type StandaloneTarget, startTarget } from './harness.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const mib = 1024 * 1024;

type Backing = ReturnType<typeof memoryBdev>;

/** Makes the backing bdev's next read and write never finish: the target holds them in flight. */
function holdNext(backing: Backing, which: Array<'readInto' | 'write'>): () => void {
  const originals = { readInto: backing.readInto, write: backing.write };
  const never: Array<() => void> = [];
  for (const name of which) {
    const original = originals[name] as (...args: unknown[]) => Promise<void>;
    let held = false;
    (backing as unknown as Record<string, unknown>)[name] = async (...args: unknown[]) => {
      if (name === 'readInto') backing.reads++;
      else backing.writes++;
      if (!held) {
        held = true;
        await new Promise<void>((resolve) => never.push(resolve));
        return;
      }
      return original.apply(backing, args);
    };
  }
  return () => {
    for (const release of never.splice(0)) release();
  };
}

interface Setup {
  backing: Backing;
  target: StandaloneTarget;
  registry: Registry;
  controllers: NvmeControllers;
  events: NodeEvent[];
  states: string[];
  bdev: NvmeBdev;
}

async function attached(overrides: Partial<NvmeAttachRequest>, options: { commandTimeoutMs?: number; keepAliveIntervalMs?: number } = {}): Promise<Setup> {
  const backing = memoryBdev('mem0', mib);
  const target = await startTarget({ bdevs: [backing] });
  const setup = { backing, target } as Setup;
  cleanups.push(() => setup.target.close());
  setup.registry = new Registry();
  setup.events = [];
  setup.controllers = new NvmeControllers(setup.registry, new InspectionHub(), (event) => setup.events.push(event));
  const request: NvmeAttachRequest = {
    name: 'Nvme0',
    trid: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(target.port), subnqn: target.nqn },
    hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:lvnode-reconnect-test',
    headerDigest: false,
    dataDigest: false,
    ctrlrLossTimeoutSec: 30,
    reconnectDelaySec: 0.02,
    fastIoFailTimeoutSec: 0,
    multipath: 'disable',
    ...overrides,
  };
  const [name] = await setup.controllers.attach(request, tcpNvmeConnectorWith({ commandTimeoutMs: options.commandTimeoutMs ?? 30_000, keepAliveIntervalMs: options.keepAliveIntervalMs }));
  cleanups.push(() => setup.controllers.detachAll());
  setup.bdev = setup.registry.findBdev(name!) as NvmeBdev;
  setup.states = [];
  setup.controllers.lookup('Nvme0')!.actor.subscribe((snapshot) => setup.states.push(typeof snapshot.value === 'string' ? snapshot.value : Object.keys(snapshot.value)[0]!));
  return setup;
}

/** The target's queue pairs, admin and I/O (its transport keeps them per port). */
function targetQueues(target: StandaloneTarget): Array<{ qid: number; inFlightPeak: number }> {
  const ports = (target.transport as unknown as { ports: Map<string, { connections: Set<{ qid: number; inFlightPeak: number }> }> }).ports;
  return [...ports.values()].flatMap((port) => [...port.connections]);
}

function stateOf(setup: Setup): string {
  const value = setup.controllers.lookup('Nvme0')!.actor.getSnapshot().value;
  return typeof value === 'string' ? value : Object.keys(value)[0]!;
}

describe('NVMe/TCP initiator: a lost controller', () => {
  it('resubmits the read and write in flight when the target stops, once it is back on the same port', async () => {
    const setup = await attached({});
    const { backing } = setup;
    const old = randomData(1, 65536);
    await backing.write(8192, old);
    const fresh = randomData(2, 32768);
    const release = holdNext(backing, ['readInto', 'write']);
    cleanups.push(release);
    const read = readBdev(setup.bdev, 8192, 65536);
    const write = setup.bdev.write(256 * 1024, fresh);
    await expect.poll(() => backing.reads > 0 && backing.writes > 0).toBe(true);

    await setup.target.close();
    await expect.poll(() => stateOf(setup)).toBe('reconnecting');
    setup.target = await startTarget({ bdevs: [backing], port: setup.target.port });

    expect((await read).equals(old)).toBe(true);
    await write;
    expect((await readBdev(backing, 256 * 1024, fresh.length)).equals(fresh)).toBe(true);
    expect(stateOf(setup)).toBe('enabled');
    expect(setup.states).toContain('reconnecting');
    expect(setup.controllers.lookup('Nvme0')!.actor.getSnapshot().context.reconnects).toBe(1);
    expect(setup.registry.lookupBdev('Nvme0n1')).toBe(setup.bdev);
  });

  it('fails waiting I/O with EIO after the loss timeout, then deletes the controller and its bdev with a bdev_deleted event (SPDK)', async () => {
    const setup = await attached({ ctrlrLossTimeoutSec: 0.2, reconnectDelaySec: 0.05 });
    const actor = setup.controllers.lookup('Nvme0')!.actor;
    await setup.target.close();
    expect(await errnoOf(readBdev(setup.bdev, 0, 4096))).toBe('EIO');
    expect(setup.states).toContain('reconnecting');
    // Gone as SPDK deletes a controller past ctrlr_loss_timeout_sec: not listed, no bdev, detach -19.
    expect(setup.controllers.lookup('Nvme0')).toBeUndefined();
    expect(setup.registry.lookupBdev('Nvme0n1')).toBeUndefined();
    expect(setup.events).toEqual([{ type: 'bdev_deleted', name: 'Nvme0n1' }]);
    expect((await waitFor(actor, (state) => state.status === 'done')).context.lostForGood).toBe(true);
    expect(await errnoOf(setup.controllers.detach('Nvme0'))).toBe('ENODEV');
    expect(await errnoOf(readBdev(setup.bdev, 0, 4096))).toBe('EIO');
  });

  it('fails waiting I/O after fast_io_fail_timeout_sec while it goes on reconnecting, and keeps the bdev', async () => {
    const setup = await attached({ ctrlrLossTimeoutSec: -1, reconnectDelaySec: 0.05, fastIoFailTimeoutSec: 0.1 });
    await setup.target.close();
    expect(await errnoOf(readBdev(setup.bdev, 0, 4096))).toBe('EIO');
    expect(stateOf(setup)).toBe('reconnecting');
    expect(setup.controllers.lookup('Nvme0')!.actor.getSnapshot().context.ioFailFast).toBe(true);
    expect(setup.registry.lookupBdev('Nvme0n1')).toBe(setup.bdev);
    expect(setup.events).toEqual([]);
  });

  it('times out a command the target never answers, reconnects, and the resubmitted read returns the bytes', async () => {
    const setup = await attached({}, { commandTimeoutMs: 500 });
    const data = randomData(3, 16384);
    await setup.backing.write(65536, data);
    cleanups.push(holdNext(setup.backing, ['readInto']));
    expect((await readBdev(setup.bdev, 65536, data.length)).equals(data)).toBe(true);
    expect(setup.states).toContain('reconnecting');
    expect(setup.controllers.lookup('Nvme0')!.actor.getSnapshot().context.error).toMatch(/not answered within 500 ms/);
    expect(stateOf(setup)).toBe('enabled');
  });

  it('loses an idle controller whose target stops reading its sockets (Keep Alive unanswered), and reconnects', async () => {
    const setup = await attached({}, { commandTimeoutMs: 500, keepAliveIntervalMs: 50 });
    const connections = [...targetQueues(setup.target)];
    // The target's side of every connection so far stops reading: open sockets, no answers.
    for (const queue of connections) (queue as unknown as { socket: { pause(): void } }).socket.pause();
    await expect.poll(() => setup.controllers.lookup('Nvme0')!.actor.getSnapshot().context.reconnects, { timeout: 4000 }).toBe(1);
    expect(setup.states).toContain('reconnecting');
    expect(setup.controllers.lookup('Nvme0')!.actor.getSnapshot().context.error).toMatch(/opcode 0x18\) not answered/);
    expect(stateOf(setup)).toBe('enabled');
  });

  it('connects num_io_queues I/O queues and spreads commands over all of them', async () => {
    const setup = await attached({ ioQueues: 4 });
    const queues = () => targetQueues(setup.target).filter((queue) => queue.qid > 0);
    expect(queues().length).toBe(4);
    await Promise.all(Array.from({ length: 64 }, (_, index) => readBdev(setup.bdev, index * 4096, 4096)));
    expect(queues().filter((queue) => queue.inFlightPeak > 0).length).toBe(4);
  });
});
