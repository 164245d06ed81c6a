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
// A controller has one or more paths (transport IDs; SPDK's trids): the active one first, then
// alternates added by attaching the same name again with multipath `failover` (or `multipath`,
// which lvnode treats as failover: one path active at a time, SPDK's default active_passive).
// A lost connection sends the machine to `reconnecting` (reconnect_delay_sec,
// ctrlr_loss_timeout_sec, fast_io_fail_timeout_sec; see the machine), trying the next path first.
// The bdevs stay and their I/O goes through `ReconnectingNamespaceIo`: it waits while the
// controller reconnects or resets and resubmits on the new session every command the lost one did
// not answer (reads are idempotent, and so is writing the same bytes to the same blocks again).
// A reset (bdev_nvme_reset_controller) fails what its session had in flight instead, as SPDK
// aborts it with Do Not Retry. A namespace that grew across a reconnect or reset grows its bdev
// (SPDK's spdk_bdev_notify_blockcnt_change, which Longhorn's engine relies on after a reset); one
// that shrank shrinks it only while nobody holds it (SPDK refuses with open descriptors); one
// that is gone or changed its block size answers EIO. Past ctrlr_loss_timeout_sec the controller
// is deleted, as SPDK deletes it: waiting I/O answers EIO and its bdevs leave the registry with a
// `bdev_deleted` event (their holders are not asked: the device is gone). With a loss timeout of
// 0 it is `failed` instead, bdevs kept and I/O failing, until a retry or a reset connects it.
import { type Actor, type SnapshotFrom, createActor, fromPromise, waitFor } from 'xstate';
import { NvmeBdev, type NvmeControllerIdentity, type NvmeNamespaceIo, type NvmeNamespacePath } from '../bdev/nvmeBdev.ts';
import { nvmeControllersMax, nvmePathsPerControllerMax } from '../constants.ts';
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
  /** How often a failed controller tries again (tests make it small); nvmeInitiatorFailedRetryMs when absent. */
  readonly failedRetryMs?: number;
}

/** A connected, enabled controller: its namespaces' I/O and the way to end it. */
export interface NvmeSession {
  readonly cntlid: number;
  /** What Identify Controller and VS said. */
  readonly identity: NvmeControllerIdentity;
  /** The host side of the admin queue's connection. */
  readonly hostAddress: { readonly addr: string; readonly svcid: string };
  readonly namespaces: readonly NvmeNamespaceIo[];
  /** True once the connection ended (or close was called): what it did not answer is not known complete. */
  readonly lost: boolean;
  /** Called once when a queue's connection ends other than by `close`. */
  onLost(listener: (reason: string) => void): void;
  /** The SMART / Health Information log page (512 bytes). */
  healthLogPage(): Promise<Buffer>;
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
  /** The controller as the last session identified it (listings while it reconnects). */
  identity: NvmeControllerIdentity | undefined;
  bdevs: NvmeBdev[];
  /** Transport IDs, the active one first (SPDK's trids; the rest are alternate_trids). */
  paths: NvmeTransportId[];
  readonly namespaceIos: Map<number, ReconnectingNamespaceIo>;
  /** Sessions a reset ended: what they had in flight fails, as SPDK aborts it with Do Not Retry. */
  readonly resetSessions: WeakSet<NvmeSession>;
  /** Why the last connect through every path failed (its errno decides attach's answer). */
  lastConnectError?: unknown;
}

/** What bdev_nvme_get_controller_health_info reports besides the log page. */
export interface NvmeHealth {
  readonly page: Buffer;
  readonly identity: NvmeControllerIdentity;
  readonly traddr: string;
}

export function nvmeActorId(name: string): string {
  return `nvme:${name}`;
}

/** spdk_nvme_transport_id_compare for TCP: trtype, traddr and trsvcid without case, adrfam, subnqn. */
function sameTrid(a: NvmeTransportId, b: NvmeTransportId): boolean {
  return a.trtype === b.trtype && a.traddr.toLowerCase() === b.traddr.toLowerCase() && a.adrfam === b.adrfam && a.trsvcid.toLowerCase() === b.trsvcid.toLowerCase() && a.subnqn === b.subnqn;
}

/**
 * SPDK's bdev_nvme_check_io_error_resiliency_params: a loss timeout other than 0 needs a reconnect
 * delay no longer than it; fast I/O failure lies between the delay and the loss timeout; with a
 * loss timeout of 0 neither may be set. Undefined when they fit together, else why not.
 */
export function resiliencyProblem(lossSec: number, delaySec: number, fastFailSec: number): string | undefined {
  if (lossSec === 0) return delaySec !== 0 || fastFailSec !== 0 ? 'reconnect_delay_sec and fast_io_fail_timeout_sec need a ctrlr_loss_timeout_sec' : undefined;
  if (delaySec === 0) return 'a ctrlr_loss_timeout_sec other than 0 needs a reconnect_delay_sec';
  if (lossSec > 0 && delaySec > lossSec) return 'reconnect_delay_sec is longer than ctrlr_loss_timeout_sec';
  if (fastFailSec !== 0 && fastFailSec < delaySec) return 'fast_io_fail_timeout_sec is shorter than reconnect_delay_sec';
  if (fastFailSec !== 0 && lossSec > 0 && fastFailSec > lossSec) return 'fast_io_fail_timeout_sec is longer than ctrlr_loss_timeout_sec';
  return undefined;
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

  /**
   * Connects, then registers a bdev per active namespace; answers their names (SPDK's result). A
   * name that exists adds a path to it (multipath failover) and answers no names, after SPDK's
   * checks in SPDK's order (bdev_nvme_rpc.c, then spdk_bdev_nvme_create).
   */
  async attach(request: NvmeAttachRequest, connector: NvmeConnector): Promise<string[]> {
    const existing = this.controllers.get(request.name);
    if (existing) this.checkSecondPath(existing, request);
    for (const entry of this.controllers.values()) {
      if (sameTrid(entry.paths[0]!, request.trid) && entry.request.hostnqn === request.hostnqn) {
        fail('EEXIST', `A controller with the provided trid (traddr: ${request.trid.traddr}, hostnqn: ${request.hostnqn}) already exists`);
      }
    }
    const problem = resiliencyProblem(request.ctrlrLossTimeoutSec, request.reconnectDelaySec, request.fastIoFailTimeoutSec);
    if (problem) fail('EINVAL', problem);
    if (existing) return this.addPath(existing, request, connector);
    if (this.controllers.size >= nvmeControllersMax) fail('ENOMEM', `at most ${nvmeControllersMax} NVMe controllers`);
    const entry = this.start(request, connector);
    const snapshot = await waitFor(entry.actor, (state) => state.value !== 'connecting');
    if (snapshot.value !== 'enabled' || !entry.session) {
      this.forget(request.name, entry);
      entry.actor.send({ type: 'controller.detach' });
      // As spdk_tgt answers: -19 when nothing listens (its probe finds no controller), -5 when a
      // target answered and refused (an unknown subsystem, a host not allowed, a protocol error).
      const unreachable = entry.lastConnectError instanceof StorageError && entry.lastConnectError.errno === 'ENODEV';
      throw new StorageError(unreachable ? 'ENODEV' : 'EIO', { detail: `attaching ${request.name} failed: ${snapshot.context.error ?? 'detached while connecting'}` });
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

  /**
   * Detaches a controller, or only its paths that match `path` (SPDK: ENXIO when none does; the
   * active one removed fails over to the next). EBUSY while one of its bdevs is held, ENODEV when
   * there is no such controller.
   */
  async detach(name: string, path: Partial<NvmeTransportId> = {}): Promise<void> {
    const entry = this.controllers.get(name) ?? fail('ENODEV', `Controller ${name} does not exist`);
    const matches = (trid: NvmeTransportId) =>
      (Object.keys(path) as Array<keyof NvmeTransportId>).every((key) => path[key] === undefined || String(path[key]).toLowerCase() === trid[key].toLowerCase());
    const removed = entry.paths.filter(matches);
    if (removed.length === 0) fail('ENXIO', `no path of controller ${name} matches`);
    if (removed.length < entry.paths.length) return this.removePaths(entry, removed);
    for (const bdev of entry.bdevs) bdev.claims.assertDeletable();
    this.forget(name, entry);
    entry.actor.send({ type: 'controller.detach' });
    await waitFor(entry.actor, (state) => state.status === 'done');
  }

  /**
   * bdev_nvme_reset_controller: the session is closed (what it has in flight fails) and connected
   * again, through the paths in order; true once enabled. EBUSY while a reset or reconnect is
   * connecting, EPERM when it does not connect (SPDK's -1), ENODEV for an unknown controller or cntlid.
   */
  async reset(name: string, cntlid = 0): Promise<void> {
    const entry = this.controllers.get(name) ?? fail('ENODEV', `Controller ${name} does not exist`);
    const before = entry.actor.getSnapshot();
    if (cntlid !== 0 && cntlid !== before.context.cntlid) fail('ENODEV', `Controller ${name} has no controller with cntlid ${cntlid}`);
    if (connectingNow(before)) fail('EBUSY', `Unable to perform reset of ${name}, already in progress`);
    if (entry.session) entry.resetSessions.add(entry.session);
    entry.actor.send({ type: 'controller.reset' });
    const after = await waitFor(entry.actor, (state) => !connectingNow(state));
    if (after.value !== 'enabled') fail('EPERM', `Resetting controller ${name} failed: ${after.context.error ?? topState(after)}`);
  }

  /** The SMART / Health log page and what SPDK reports with it; EIO (SPDK's "Internal error.") when it cannot be read. */
  async health(name: string): Promise<NvmeHealth> {
    const entry = this.controllers.get(name) ?? fail('ENODEV', `Controller ${name} does not exist`);
    const session = entry.session;
    const internal = (why: string) => new StorageError('EIO', { wire: 'spdkInternal', detail: 'Internal error.', data: { reason: why } });
    if (entry.actor.getSnapshot().value !== 'enabled' || !session || session.lost) throw internal(`controller ${name} is ${topState(entry.actor.getSnapshot())}`);
    try {
      return { page: await session.healthLogPage(), identity: session.identity, traddr: entry.paths[0]!.traddr };
    } catch (error) {
      throw internal(error instanceof Error ? error.message : String(error));
    }
  }

  /** Shutdown: every controller goes, held or not (their holders are stopped first). */
  async detachAll(): Promise<void> {
    for (const [name, entry] of [...this.controllers]) {
      this.forget(name, entry);
      entry.actor.send({ type: 'controller.detach' });
      await waitFor(entry.actor, (state) => state.status === 'done');
    }
  }

  /** bdev_nvme_attach_controller's checks when the name exists (bdev_nvme_rpc.c), before any connection. */
  private checkSecondPath(entry: NvmeControllerEntry, request: NvmeAttachRequest): void {
    const name = request.name;
    const active = entry.paths[0]!;
    if (request.multipath === 'disable') fail('EALREADY', `A controller named ${name} already exists and multipath is disabled`);
    if (request.trid.traddr === active.traddr && request.trid.trsvcid === active.trsvcid) fail('EALREADY', `A controller named ${name} already exists with the specified network path`);
    if (request.trid.subnqn !== active.subnqn) fail('EINVAL', `A controller named ${name} already exists, but uses a different subnqn (${active.subnqn})`);
    if (request.hostnqn !== entry.request.hostnqn) fail('EINVAL', `A controller named ${name} already exists, but uses a different hostnqn (${entry.request.hostnqn})`);
  }

  /**
   * A failover path (SPDK's bdev_nvme_add_secondary_trid): connected once to see that it reaches
   * the same namespaces, then closed and kept as an alternate; answers no names, as SPDK does.
   */
  private async addPath(entry: NvmeControllerEntry, request: NvmeAttachRequest, connector: NvmeConnector): Promise<string[]> {
    if (entry.paths.some((trid) => sameTrid(trid, request.trid))) fail('EALREADY', `This path (traddr: ${request.trid.traddr} subnqn: ${request.trid.subnqn}) is already registered`);
    if (entry.paths.length >= nvmePathsPerControllerMax) fail('ENOSPC', `controller ${request.name} has ${entry.paths.length} paths, the most it keeps`);
    const probe = await connector.connect({ ...entry.request, trid: request.trid, ioQueues: 1 }, new AbortController().signal);
    try {
      for (const [nsid, io] of entry.namespaceIos) {
        const other = probe.namespaces.find((namespace) => namespace.nsid === nsid);
        if (!other || other.uuid !== io.uuid || other.blockSizeBytes !== io.blockSizeBytes) fail('EINVAL', `namespace ${nsid} differs on ${request.trid.traddr}:${request.trid.trsvcid}`);
      }
    } finally {
      await probe.close();
    }
    if (!this.controllers.has(request.name) || entry.paths.some((trid) => sameTrid(trid, request.trid))) fail('EALREADY', `controller ${request.name} changed while its new path was connecting`);
    entry.paths.push(request.trid);
    entry.actor.send({ type: 'controller.paths', count: entry.paths.length });
    log('info', 'NVMe controller path added', { name: request.name, traddr: request.trid.traddr, trsvcid: request.trid.trsvcid, paths: entry.paths.length });
    return [];
  }

  /** Some paths go; when the active one does, the controller fails over to the next (I/O waits, then resubmits). */
  private removePaths(entry: NvmeControllerEntry, removed: NvmeTransportId[]): void {
    const activeRemoved = removed.includes(entry.paths[0]!);
    entry.paths = entry.paths.filter((trid) => !removed.includes(trid));
    entry.actor.send({ type: 'controller.paths', count: entry.paths.length });
    if (activeRemoved && !connectingNow(entry.actor.getSnapshot())) {
      void entry.session?.close();
      entry.actor.send({ type: 'controller.reset' });
    }
  }

  private start(request: NvmeAttachRequest, connector: NvmeConnector): NvmeControllerEntry {
    const id = nvmeActorId(request.name);
    const entry: NvmeControllerEntry = {
      request,
      actor: undefined as never,
      session: undefined,
      identity: undefined,
      bdevs: [],
      paths: [request.trid],
      namespaceIos: new Map(),
      resetSessions: new WeakSet(),
    };
    const connect = (signal: AbortSignal) => this.connectThroughPaths(entry, connector, signal);
    const machine = nvmeControllerMachine.provide({
      actors: {
        connect: fromPromise<NvmeConnected>(({ signal }) => connect(signal)),
        reset: fromPromise<NvmeConnected>(async ({ signal }) => {
          const old = entry.session;
          entry.session = undefined;
          await old?.close();
          return connect(signal);
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
        if (snapshot.value === 'detaching' && snapshot.context.lostForGood) this.deleteLost(entry, snapshot.context.error);
        // A session that ended between its connect and `enabled` sent its loss to a state that ignores it.
        if (snapshot.value === 'enabled' && entry.session?.lost) entry.actor.send({ type: 'controller.lost', reason: 'the connection ended as it was enabled' });
      },
      complete: untrack,
    });
    this.controllers.set(request.name, entry);
    actor.start();
    return entry;
  }

  /**
   * One connect: each path once, the active first; a path that fails goes last (SPDK's
   * bdev_nvme_failover_trid), so the next attempt starts with the next path.
   */
  private async connectThroughPaths(entry: NvmeControllerEntry, connector: NvmeConnector, signal: AbortSignal): Promise<NvmeConnected> {
    let lastError: unknown = new StorageError('EIO', { detail: 'no path to connect' });
    for (let tried = 0, count = entry.paths.length; tried < count; tried++) {
      const trid = entry.paths[0]!;
      let session: NvmeSession;
      try {
        session = await connector.connect({ ...entry.request, trid }, signal);
      } catch (error) {
        lastError = error;
        entry.lastConnectError = error;
        if (signal.aborted) throw error;
        if (entry.paths.length > 1 && entry.paths[0] === trid) entry.paths.push(entry.paths.shift()!);
        continue;
      }
      if (signal.aborted) {
        await session.close();
        throw new StorageError('ECANCELED');
      }
      if (session.lost) throw new StorageError('EIO', { detail: 'the connection ended while connecting' });
      entry.session = session;
      entry.identity = session.identity;
      session.onLost((reason) => {
        if (entry.session !== session) return;
        // SPDK fails over at once: the lost path goes last, an alternate is tried first.
        if (entry.paths.length > 1) entry.paths.push(entry.paths.shift()!);
        entry.actor.send({ type: 'controller.lost', reason });
      });
      for (const io of entry.namespaceIos.values()) io.adopt(session.namespaces.find((namespace) => namespace.nsid === io.nsid));
      return { cntlid: session.cntlid, namespaces: session.namespaces.length };
    }
    throw lastError;
  }

  /** Lost for good (past ctrlr_loss_timeout_sec): SPDK deletes the controller and its bdevs, with events. */
  private deleteLost(entry: NvmeControllerEntry, reason: string | null): void {
    const name = entry.request.name;
    if (this.controllers.get(name) !== entry) return;
    this.controllers.delete(name);
    const bdevs = entry.bdevs;
    entry.bdevs = [];
    for (const bdev of bdevs) {
      if (this.registry.moduleBdevs.get(bdev.name) !== bdev) continue;
      this.registry.moduleBdevs.delete(bdev.name);
      this.emit({ type: 'bdev_deleted', name: bdev.name });
    }
    log('warn', 'NVMe controller lost for good: it and its bdevs are deleted', { name, bdevs: bdevs.map((bdev) => bdev.name), reason });
  }

  private register(entry: NvmeControllerEntry, name: string, namespaces: readonly NvmeNamespaceIo[]): NvmeBdev[] {
    const made = namespaces.map((io) => {
      const reconnecting = new ReconnectingNamespaceIo(entry, io);
      return { reconnecting, bdev: new NvmeBdev(`${name}n${io.nsid}`, io.uuid ?? syntheticUuid(name, io.nsid), reconnecting) };
    });
    for (const { bdev } of made) if (this.registry.bdevNameTaken(bdev.name)) fail('EEXIST', `bdev ${bdev.name} already exists`);
    for (const { bdev, reconnecting } of made) {
      reconnecting.bdev = bdev;
      entry.namespaceIos.set(reconnecting.nsid, reconnecting);
      this.registry.moduleBdevs.set(bdev.name, bdev);
    }
    return made.map(({ bdev }) => bdev);
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
    ...(request.failedRetryMs === undefined ? {} : { failedRetryMs: request.failedRetryMs }),
  };
}

/** The top-level state's name (`reconnecting` for any of its inner states). */
function topState(snapshot: SnapshotFrom<typeof nvmeControllerMachine>): string {
  return typeof snapshot.value === 'string' ? snapshot.value : Object.keys(snapshot.value)[0]!;
}

/** A connect is under way (attach, reset, or a reconnect attempt): another reset is refused. */
function connectingNow(snapshot: SnapshotFrom<typeof nvmeControllerMachine>): boolean {
  return snapshot.matches('connecting') || snapshot.matches('resetting') || snapshot.matches({ reconnecting: 'connecting' }) || snapshot.matches({ reconnecting: 'choosing' });
}

/**
 * One namespace's I/O across sessions: each command goes to the current session's namespace; one
 * that fails because its session was lost (not answered, so not known complete) waits for the
 * controller to be enabled again and is sent again, unless a reset ended that session. An NVMe
 * status error on a live session is the command's answer and is not retried. EIO once the
 * controller failed, is detaching, or has been reconnecting past fast_io_fail_timeout_sec, and
 * while the namespace is gone or has another block size than the bdev.
 */
class ReconnectingNamespaceIo implements NvmeNamespaceIo {
  readonly nsid: number;
  readonly blockSizeBytes: number;
  readonly uuid: string | undefined;
  readonly writeProtected: boolean;
  blockCount: number;
  /** The bdev this serves: whether anyone holds it decides a shrink. */
  bdev: NvmeBdev | undefined;
  private canShareNow: boolean;

  constructor(
    private readonly entry: NvmeControllerEntry,
    private readonly first: NvmeNamespaceIo,
  ) {
    ({ nsid: this.nsid, blockSizeBytes: this.blockSizeBytes, blockCount: this.blockCount, uuid: this.uuid, writeProtected: this.writeProtected } = first);
    this.canShareNow = first.canShare ?? false;
  }

  get transferBytesMax(): number {
    return this.current()?.transferBytesMax ?? this.first.transferBytesMax;
  }

  path(): NvmeNamespacePath | undefined {
    const identity = this.entry.identity;
    return identity ? { trid: this.entry.paths[0]!, controller: identity, canShare: this.canShareNow } : undefined;
  }

  /**
   * A new session's view of the namespace: a larger one grows the bdev; a smaller one shrinks it
   * only while nobody holds it (SPDK's spdk_bdev_notify_blockcnt_change answers EBUSY with open
   * descriptors, and the old size stays); gone or another block size: I/O answers EIO (run).
   */
  adopt(io: NvmeNamespaceIo | undefined): void {
    if (!io || io.blockSizeBytes !== this.blockSizeBytes) return;
    this.canShareNow = io.canShare ?? this.canShareNow;
    if (io.blockCount === this.blockCount) return;
    const name = this.bdev?.name ?? `${this.entry.request.name}n${this.nsid}`;
    if (io.blockCount < this.blockCount && (this.bdev?.claims.size ?? 0) > 0) {
      log('warn', 'NVMe namespace shrank while its bdev is held: the bdev keeps its size', { name, blocks: this.blockCount, namespaceBlocks: io.blockCount });
      return;
    }
    log('info', 'NVMe namespace resized', { name, blocks: this.blockCount, newBlocks: io.blockCount });
    this.blockCount = io.blockCount;
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
      if (!io || io.blockSizeBytes !== this.blockSizeBytes) fail('EIO', `namespace ${this.nsid} of ${this.entry.request.name} went away or changed its block size across a reconnect`);
      try {
        return await command(io);
      } catch (error) {
        if (!session.lost || this.entry.resetSessions.has(session)) throw error;
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

/** A controller's state and controller id, for listings: SPDK's state names (nvme_ctrlr_get_state_str). */
export function nvmeControllersSnapshot(entry: NvmeControllerEntry): { state: string; spdkState: string; cntlid: number } {
  const snapshot = entry.actor.getSnapshot();
  return { state: topState(snapshot), spdkState: spdkStateOf(snapshot), cntlid: snapshot.context.cntlid ?? 0 };
}

function spdkStateOf(snapshot: SnapshotFrom<typeof nvmeControllerMachine>): string {
  if (snapshot.status === 'done' || snapshot.matches('detaching')) return 'deleting';
  if (snapshot.matches('failed')) return 'failed';
  if (snapshot.matches('enabled')) return 'enabled';
  if (snapshot.matches({ reconnecting: 'waiting' })) return 'reconnect_is_delayed';
  return 'resetting';
}
