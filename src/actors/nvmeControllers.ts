// The node's attached NVMe-oF controllers (SPDK's bdev_nvme module): each is an actor
// (src/machines/nvmeControllerMachine.ts) visible in the inspection stream as `nvme:<name>`, and
// each active namespace of it a bdev `<name>n<nsid>` in the registry's module bdevs.
//
// This layer does not speak NVMe/TCP: the transport (src/transport/nvmf/initiator/) implements
// `NvmeConnector` and is handed in by the RPC that attaches. Detach refuses (EBUSY, naming the
// holders) while a namespace's bdev is held by anyone who does not let go on removal (an lvstore,
// an export, a namespace of lvnode's own target), where SPDK would hot-remove it under them: the
// same answer bdev deletion gives (bdevClaims.ts). Nothing here is saved across a restart.
//
// A lost connection sends the machine to `reconnecting` (reconnect_delay_sec, ctrlr_loss_timeout_sec,
// fast_io_fail_timeout_sec; see the machine). The bdevs stay and their I/O goes through
// `ReconnectingNamespaceIo`: it waits while the controller reconnects and resubmits on the new
// session every command the lost one did not answer (reads are idempotent, and so is writing the
// same bytes to the same blocks again). When the controller fails for good, waiting I/O answers
// EIO and its bdevs leave the registry with a `bdev_deleted` event, as SPDK removes the bdevs of a
// lost controller (their holders are not asked: the device is gone). Multipath is not acted on.
import { type Actor, type SnapshotFrom, createActor, fromPromise, waitFor } from 'xstate';
import { NvmeBdev, type NvmeNamespaceIo } from '../bdev/nvmeBdev.ts';
import { nvmeControllersMax } from '../constants.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import { type NvmeConnected, nvmeControllerMachine } from '../machines/nvmeControllerMachine.ts';
import type { InspectionHub } from './inspector.ts';
import type { NodeEvent } from './nodeEvents.ts';
import type { Registry } from './registry.ts';

export interface NvmeTransportId {
  readonly trtype: 'TCP';
  readonly adrfam: 'IPv4' | 'IPv6';
  readonly traddr: string;
  readonly trsvcid: string;
  readonly subnqn: string;
}

export interface NvmeAttachRequest {
  readonly name: string;
  readonly trid: NvmeTransportId;
  readonly hostnqn: string;
  readonly headerDigest: boolean;
  readonly dataDigest: boolean;
  /** -1: reconnect forever; 0: fail at once when the connection is lost (SPDK). */
  readonly ctrlrLossTimeoutSec: number;
  readonly reconnectDelaySec: number;
  readonly fastIoFailTimeoutSec: number;
  readonly multipath: 'disable' | 'failover' | 'multipath';
  /** I/O queues to ask for (SPDK's num_io_queues); nvmeInitiatorIoQueuesDefault when absent. */
  readonly ioQueues?: number;
}

/** A connected, enabled controller: its namespaces' I/O and the way to end it. */
export interface NvmeSession {
  readonly cntlid: number;
  /** The host side of the admin queue's connection. */
  readonly hostAddress: { readonly addr: string; readonly svcid: string };
  readonly namespaces: readonly NvmeNamespaceIo[];
  /** True once the connection ended (or close was called): what it did not answer is not known complete. */
  readonly lost: boolean;
  /** Called once when a queue's connection ends other than by `close`. */
  onLost(listener: (reason: string) => void): void;
  close(): Promise<void>;
}

/** What the transport provides: connects a controller, or throws StorageError. */
export interface NvmeConnector {
  connect(request: NvmeAttachRequest, signal: AbortSignal): Promise<NvmeSession>;
}

export interface NvmeControllerEntry {
  readonly request: NvmeAttachRequest;
  readonly actor: Actor<typeof nvmeControllerMachine>;
  session: NvmeSession | undefined;
  bdevs: NvmeBdev[];
}

export function nvmeActorId(name: string): string {
  return `nvme:${name}`;
}

export class NvmeControllers {
  private readonly controllers = new Map<string, NvmeControllerEntry>();

  constructor(
    private readonly registry: Registry,
    private readonly inspector: InspectionHub,
    private readonly emit: (event: NodeEvent) => void = () => {},
  ) {}

  list(): NvmeControllerEntry[] {
    return [...this.controllers.values()];
  }

  lookup(name: string): NvmeControllerEntry | undefined {
    return this.controllers.get(name);
  }

  /** Connects, then registers a bdev per active namespace; answers their names (SPDK's result). */
  async attach(request: NvmeAttachRequest, connector: NvmeConnector): Promise<string[]> {
    if (this.controllers.has(request.name)) fail('EEXIST', `A controller named ${request.name} already exists`);
    if (this.controllers.size >= nvmeControllersMax) fail('ENOMEM', `at most ${nvmeControllersMax} NVMe controllers`);
    const entry = this.start(request, connector);
    const snapshot = await waitFor(entry.actor, (state) => state.value !== 'connecting');
    if (snapshot.value !== 'enabled' || !entry.session) {
      this.forget(request.name, entry);
      entry.actor.send({ type: 'controller.detach' });
      throw new StorageError('EIO', { detail: `attaching ${request.name} failed: ${snapshot.context.error ?? 'detached while connecting'}` });
    }
    try {
      entry.bdevs = this.register(entry, request.name, entry.session.namespaces);
    } catch (error) {
      await this.detach(request.name);
      throw error;
    }
    log('info', 'NVMe controller attached', { name: request.name, traddr: request.trid.traddr, trsvcid: request.trid.trsvcid, subnqn: request.trid.subnqn, bdevs: entry.bdevs.length });
    return entry.bdevs.map((bdev) => bdev.name);
  }

  /** Detaches a controller; EBUSY while one of its bdevs is held, ENODEV when there is none. */
  async detach(name: string): Promise<void> {
    const entry = this.controllers.get(name) ?? fail('ENODEV', `Controller ${name} does not exist`);
    for (const bdev of entry.bdevs) bdev.claims.assertDeletable();
    this.forget(name, entry);
    entry.actor.send({ type: 'controller.detach' });
    await waitFor(entry.actor, (state) => state.status === 'done');
  }

  /** Shutdown: every controller goes, held or not (their holders are stopped first). */
  async detachAll(): Promise<void> {
    for (const [name, entry] of [...this.controllers]) {
      this.forget(name, entry);
      entry.actor.send({ type: 'controller.detach' });
      await waitFor(entry.actor, (state) => state.status === 'done');
    }
  }

  private start(request: NvmeAttachRequest, connector: NvmeConnector): NvmeControllerEntry {
    const id = nvmeActorId(request.name);
    const entry: NvmeControllerEntry = { request, actor: undefined as never, session: undefined, bdevs: [] };
    const machine = nvmeControllerMachine.provide({
      actors: {
        connect: fromPromise<NvmeConnected>(async ({ signal }) => {
          const session = await connector.connect(request, signal);
          if (signal.aborted) {
            await session.close();
            throw new StorageError('ECANCELED');
          }
          if (session.lost) throw new StorageError('EIO', { detail: 'the connection ended while connecting' });
          entry.session = session;
          session.onLost((reason) => entry.actor.send({ type: 'controller.lost', reason }));
          return { cntlid: session.cntlid, namespaces: session.namespaces.length };
        }),
        disconnect: fromPromise<void>(async () => {
          await entry.session?.close();
        }),
      },
    });
    const { actor, untrack } = this.inspector.track(id, (inspect) =>
      createActor(machine, { id, input: machineInput(request), inspect }),
    );
    (entry as { actor: Actor<typeof nvmeControllerMachine> }).actor = actor;
    actor.subscribe({
      next: (snapshot) => {
        if (snapshot.value === 'failed' && entry.bdevs.length > 0) this.removeLost(entry, snapshot.context.error);
        // A session that ended between its connect and `enabled` sent its loss to a state that ignores it.
        if (snapshot.value === 'enabled' && entry.session?.lost) entry.actor.send({ type: 'controller.lost', reason: 'the connection ended as it was enabled' });
      },
      complete: untrack,
    });
    this.controllers.set(request.name, entry);
    actor.start();
    return entry;
  }

  /** The controller failed for good: its bdevs leave the registry (SPDK removes them), with events. */
  private removeLost(entry: NvmeControllerEntry, reason: string | null): void {
    const bdevs = entry.bdevs;
    entry.bdevs = [];
    for (const bdev of bdevs) {
      if (this.registry.moduleBdevs.get(bdev.name) !== bdev) continue;
      this.registry.moduleBdevs.delete(bdev.name);
      this.emit({ type: 'bdev_deleted', name: bdev.name });
    }
    log('warn', 'NVMe controller lost: its bdevs are removed', { name: entry.request.name, bdevs: bdevs.map((bdev) => bdev.name), reason });
  }

  private register(entry: NvmeControllerEntry, name: string, namespaces: readonly NvmeNamespaceIo[]): NvmeBdev[] {
    const bdevs = namespaces.map((io) => new NvmeBdev(`${name}n${io.nsid}`, io.uuid ?? syntheticUuid(name, io.nsid), new ReconnectingNamespaceIo(entry, io)));
    for (const bdev of bdevs) if (this.registry.bdevNameTaken(bdev.name)) fail('EEXIST', `bdev ${bdev.name} already exists`);
    for (const bdev of bdevs) this.registry.moduleBdevs.set(bdev.name, bdev);
    return bdevs;
  }

  private forget(name: string, entry: NvmeControllerEntry): void {
    for (const bdev of entry.bdevs) if (this.registry.moduleBdevs.get(bdev.name) === bdev) this.registry.moduleBdevs.delete(bdev.name);
    if (this.controllers.get(name) === entry) this.controllers.delete(name);
  }
}

/** A namespace without UUID or NGUID still needs a stable-looking id: derived from its name. */
function syntheticUuid(name: string, nsid: number): string {
  const hex = Buffer.from(`${name}n${nsid}`.padEnd(16, '\0')).subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

function machineInput(request: NvmeAttachRequest) {
  return {
    name: request.name,
    traddr: request.trid.traddr,
    trsvcid: request.trid.trsvcid,
    subnqn: request.trid.subnqn,
    reconnectDelayMs: request.reconnectDelaySec * 1000,
    lossTimeoutMs: request.ctrlrLossTimeoutSec < 0 ? -1 : request.ctrlrLossTimeoutSec * 1000,
    fastIoFailMs: request.fastIoFailTimeoutSec * 1000,
  };
}

/** The top-level state's name (`reconnecting` for any of its inner states). */
function topState(snapshot: SnapshotFrom<typeof nvmeControllerMachine>): string {
  return typeof snapshot.value === 'string' ? snapshot.value : Object.keys(snapshot.value)[0]!;
}

/**
 * One namespace's I/O across sessions: each command goes to the current session's namespace; one
 * that fails because its session was lost (not answered, so not known complete) waits for the
 * controller to be enabled again and is sent again. An NVMe status error on a live session is the
 * command's answer and is not retried. EIO once the controller failed, is detaching, or has been
 * reconnecting past fast_io_fail_timeout_sec.
 */
class ReconnectingNamespaceIo implements NvmeNamespaceIo {
  readonly nsid: number;
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  readonly uuid: string | undefined;
  readonly writeProtected: boolean;

  constructor(
    private readonly entry: NvmeControllerEntry,
    private readonly first: NvmeNamespaceIo,
  ) {
    ({ nsid: this.nsid, blockSizeBytes: this.blockSizeBytes, blockCount: this.blockCount, uuid: this.uuid, writeProtected: this.writeProtected } = first);
  }

  get transferBytesMax(): number {
    return this.current()?.transferBytesMax ?? this.first.transferBytesMax;
  }

  read(lba: number, target: Buffer): Promise<void> {
    return this.run((io) => io.read(lba, target));
  }

  write(lba: number, data: Buffer): Promise<void> {
    return this.run((io) => io.write(lba, data));
  }

  flush(): Promise<void> {
    return this.run((io) => io.flush());
  }

  writeZeroes(lba: number, blocks: number): Promise<void> {
    return this.run((io) => io.writeZeroes(lba, blocks));
  }

  deallocate(lba: number, blocks: number): Promise<void> {
    return this.run((io) => io.deallocate(lba, blocks));
  }

  private current(): NvmeNamespaceIo | undefined {
    return this.entry.session?.namespaces.find((namespace) => namespace.nsid === this.nsid);
  }

  private async run(command: (io: NvmeNamespaceIo) => Promise<void>): Promise<void> {
    for (;;) {
      const session = await this.usableSession();
      const io = session.namespaces.find((namespace) => namespace.nsid === this.nsid);
      if (!io || io.blockSizeBytes !== this.blockSizeBytes || io.blockCount !== this.blockCount) fail('EIO', `namespace ${this.nsid} of ${this.entry.request.name} changed or went away across a reconnect`);
      try {
        return await command(io);
      } catch (error) {
        if (!session.lost) throw error;
      }
    }
  }

  /** The session to send on: now, or once the controller is enabled again; EIO when it will not be. */
  private usableSession(): Promise<NvmeSession> {
    const verdict = () => {
      const snapshot = this.entry.actor.getSnapshot();
      const state = topState(snapshot);
      const name = this.entry.request.name;
      if (snapshot.status === 'done' || state === 'failed' || state === 'detaching') return new StorageError('EIO', { detail: `NVMe controller ${name} is ${state}: ${snapshot.context.error ?? 'detached'}` });
      if (state === 'reconnecting' && snapshot.context.ioFailFast) return new StorageError('EIO', { detail: `NVMe controller ${name} is reconnecting past fast_io_fail_timeout_sec` });
      const session = this.entry.session;
      return state === 'enabled' && session && !session.lost ? session : undefined;
    };
    return new Promise((resolve, reject) => {
      const settle = (answer: NvmeSession | StorageError) => (answer instanceof StorageError ? reject(answer) : resolve(answer));
      const now = verdict();
      if (now) return settle(now);
      const subscription = this.entry.actor.subscribe({
        next: () => {
          const answer = verdict();
          if (!answer) return;
          subscription.unsubscribe();
          settle(answer);
        },
        complete: () => settle(verdict() ?? new StorageError('EIO', { detail: `NVMe controller ${this.entry.request.name} detached` })),
      });
    });
  }
}

/** A controller's machine state and controller id, for listings. */
export function nvmeControllersSnapshot(entry: NvmeControllerEntry): { state: string; cntlid: number } {
  const snapshot = entry.actor.getSnapshot();
  return { state: topState(snapshot), cntlid: snapshot.context.cntlid ?? 0 };
}
