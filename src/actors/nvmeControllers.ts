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
// Accepted and stored, not acted on yet: ctrlr_loss_timeout_sec, reconnect_delay_sec,
// fast_io_fail_timeout_sec (a lost controller stays failed until detached) and multipath.
import { type Actor, createActor, fromPromise, waitFor } from 'xstate';
import { NvmeBdev, type NvmeNamespaceIo } from '../bdev/nvmeBdev.ts';
import { nvmeControllersMax } from '../constants.ts';
import { StorageError, fail } from '../errors.ts';
import { log } from '../log.ts';
import { type NvmeConnected, nvmeControllerMachine } from '../machines/nvmeControllerMachine.ts';
import type { InspectionHub } from './inspector.ts';
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
  /** Stored and reported; reconnecting is not implemented yet. */
  readonly ctrlrLossTimeoutSec: number;
  readonly reconnectDelaySec: number;
  readonly fastIoFailTimeoutSec: number;
  readonly multipath: 'disable' | 'failover' | 'multipath';
}

/** A connected, enabled controller: its namespaces' I/O and the way to end it. */
export interface NvmeSession {
  readonly cntlid: number;
  /** The host side of the admin queue's connection. */
  readonly hostAddress: { readonly addr: string; readonly svcid: string };
  readonly namespaces: readonly NvmeNamespaceIo[];
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
      entry.bdevs = this.register(request.name, entry.session.namespaces);
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
      createActor(machine, { id, input: { name: request.name, traddr: request.trid.traddr, trsvcid: request.trid.trsvcid, subnqn: request.trid.subnqn }, inspect }),
    );
    (entry as { actor: Actor<typeof nvmeControllerMachine> }).actor = actor;
    actor.subscribe({ complete: untrack });
    this.controllers.set(request.name, entry);
    actor.start();
    return entry;
  }

  private register(name: string, namespaces: readonly NvmeNamespaceIo[]): NvmeBdev[] {
    const bdevs = namespaces.map((io) => new NvmeBdev(`${name}n${io.nsid}`, io.uuid ?? syntheticUuid(name, io.nsid), io));
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

/** A controller's machine state and controller id, for listings. */
export function nvmeControllersSnapshot(entry: NvmeControllerEntry): { state: string; cntlid: number } {
  const snapshot = entry.actor.getSnapshot();
  return { state: String(snapshot.value), cntlid: snapshot.context.cntlid ?? 0 };
}
