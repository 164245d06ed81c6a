// The node's NBD exports (SPEC §7): which bdev each export serves, its clients, and its figures.
//
// Each export is an actor (src/machines/nbdExportMachine.ts) visible in the inspection stream as
// `nbd:<export name>`. This file binds the machine to the bdev behind it (a `Bdev`, which the NBD
// server reads and writes) and to the connections the server attaches. An export holds its bdev
// open (`BdevClaims.open`): the bdev cannot be deleted, nor get an lvstore, until it is stopped.
import type { EventEmitter } from 'node:events';
import { type Actor, createActor, waitFor } from 'xstate';
import type { Bdev, BdevKind } from '../bdev/bdev.ts';
import type { BdevHold } from '../bdev/bdevClaims.ts';
import { nbdExportsMax, nbdStopGraceMs } from '../constants.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import { nbdExportMachine } from '../machines/nbdExportMachine.ts';
import type { InspectionHub } from './inspector.ts';
import type { NodeEvent } from './nodeEvents.ts';
import type { Registry } from './registry.ts';

/** What an export knows of a client connection the NBD server attached to it. */
export interface NbdClient {
  readonly id: number;
  /** Finish in-flight requests, answer later ones ESHUTDOWN, then close. */
  drain(reason: string): void;
  /** Cut the socket now (the drain grace has passed). */
  destroy(): void;
}

/** Figures of one export, counted by its connections. */
export interface NbdExportCounters {
  requests: number;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

export interface NbdExportView {
  export_name: string;
  bdev_name: string;
  kind: NbdExportKind;
  state: NbdExportState;
  read_only: boolean;
  size: number;
  block_size: number;
  connections: number;
  connections_total: number;
  requests: number;
  errors: number;
  bytes_read: number;
  bytes_written: number;
}

export type NbdExportState = 'idle' | 'serving' | 'draining' | 'stopped';

/** The bdev kinds nbd_get_exports names (its schema and docs/rpc.md): every kind, NVMe namespaces included. */
export type NbdExportKind = BdevKind;
const nbdExportKinds: ReadonlySet<BdevKind> = new Set<NbdExportKind>(['lvol', 'malloc', 'aio', 'nvme']);

type NbdExportable = Bdev & { readonly kind: NbdExportKind };

function isNbdExportable(bdev: Bdev): bdev is NbdExportable {
  return nbdExportKinds.has(bdev.kind);
}

/** The inspection stream's id of an export's actor. */
export const nbdActorIdPrefix = 'nbd:';
export function nbdActorId(exportName: string): string {
  return `${nbdActorIdPrefix}${exportName}`;
}

export class NbdExport {
  readonly actor: Actor<typeof nbdExportMachine>;
  readonly counters: NbdExportCounters = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };
  private readonly clients = new Map<number, NbdClient>();
  private stopping: Promise<void> | undefined;

  constructor(
    readonly exportName: string,
    readonly bdevName: string,
    readonly bdev: NbdExportable,
    /** The export's open of its bdev, released once its last client has left. */
    readonly hold: BdevHold,
    inspect: InspectionHub,
  ) {
    const machine = nbdExportMachine.provide({
      actions: {
        disconnectClients: ({ context }) => {
          for (const client of this.clients.values()) client.drain(context.stopReason ?? 'export stopped');
        },
      },
    });
    this.actor = createActor(machine, {
      id: nbdActorId(exportName),
      input: { exportName, bdevName },
      inspect: inspect.observerFor(nbdActorId(exportName)),
    });
    this.actor.subscribe({ error: (error) => log('error', 'nbd export actor failed', { export: exportName, error: String(error) }) });
    this.actor.start();
  }

  /** Whether new clients may enter the transmission phase on this export. */
  get accepting(): boolean {
    const state = this.actor.getSnapshot().value;
    return state === 'idle' || state === 'serving';
  }

  /** Admits a client; false when the export is stopping (the client is told it is unknown). */
  attach(client: NbdClient): boolean {
    if (!this.accepting) return false;
    this.clients.set(client.id, client);
    this.actor.send({ type: 'connection.open', connectionId: client.id });
    return true;
  }

  detach(client: NbdClient): void {
    if (!this.clients.delete(client.id)) return;
    this.actor.send({ type: 'connection.close', connectionId: client.id });
  }

  /**
   * Disconnects every client (in-flight requests finish) and resolves once the last one has
   * left; sockets still open after the grace period are cut.
   */
  stop(reason: string): Promise<void> {
    this.stopping ??= this.stopNow(reason);
    return this.stopping;
  }

  private async stopNow(reason: string): Promise<void> {
    this.actor.send({ type: 'export.stop', reason });
    const grace = setTimeout(() => {
      for (const client of this.clients.values()) client.destroy();
    }, nbdStopGraceMs);
    try {
      await waitFor(this.actor, (snapshot) => snapshot.status === 'done');
    } finally {
      clearTimeout(grace);
    }
    this.actor.stop();
    log('info', 'nbd export stopped', { export: this.exportName, bdev: this.bdevName, reason });
  }

  view(): NbdExportView {
    const snapshot = this.actor.getSnapshot();
    let sizeBytes = 0;
    let readOnly = true;
    try {
      sizeBytes = this.bdev.sizeBytes();
      readOnly = this.bdev.readOnly();
    } catch {
      // The bdev is going away; the export is stopping with it.
    }
    return {
      export_name: this.exportName,
      bdev_name: this.bdevName,
      kind: this.bdev.kind,
      state: snapshot.value,
      read_only: readOnly,
      size: sizeBytes,
      block_size: this.bdev.blockSizeBytes,
      connections: snapshot.context.connections.length,
      connections_total: snapshot.context.connectionsTotal,
      requests: this.counters.requests,
      errors: this.counters.errors,
      bytes_read: this.counters.bytesRead,
      bytes_written: this.counters.bytesWritten,
    };
  }
}

/** The node's exports by name; the NBD server looks exports up here during the handshake. */
export class NbdExports {
  private readonly exports = new Map<string, NbdExport>();
  /** Where the NBD server listens (set by the server); undefined when there is no listener. */
  private listenAddress: string | undefined;

  constructor(
    private readonly registry: Registry,
    private readonly inspector: InspectionHub,
    events: EventEmitter<{ event: [NodeEvent] }>,
  ) {
    events.on('event', (event) => this.onNodeEvent(event));
  }

  setListening(address: string | undefined): void {
    this.listenAddress = address;
  }

  get listening(): string | undefined {
    return this.listenAddress;
  }

  /** Exports `bdevName` (an lvol by UUID or alias, or a base bdev) as `exportName`. */
  start(bdevName: string, exportName: string = bdevName): string {
    if (this.listenAddress === undefined) fail('EINVAL', 'this node has no NBD listener; start it with --nbd-listen');
    if (this.exports.has(exportName)) fail('EEXIST', `NBD export ${exportName} already exists`);
    if (this.exports.size >= nbdExportsMax) fail('ENOSPC', `at most ${nbdExportsMax} NBD exports`);
    // Bound to the bdev, not the name: a rename of the lvol or its lvstore leaves the export working.
    // Opened as a consumer: the bdev's rate limits apply to its clients and their I/O is counted.
    const bdev = this.registry.openBdev(bdevName);
    if (!isNbdExportable(bdev)) fail('EINVAL', `bdev ${bdevName} is an ${(bdev as Bdev).kind} bdev; NBD exports serve lvol, malloc, aio and nvme bdevs`);
    const existing = this.exportOf(bdev.name);
    if (existing) fail('EEXIST', `bdev ${bdevName} is already exported over NBD as ${existing.exportName}`);
    const hold = bdev.claims.open(`NBD export ${exportName}`);
    this.exports.set(exportName, new NbdExport(exportName, bdevName, bdev, hold, this.inspector));
    log('info', 'nbd export started', { export: exportName, bdev: bdevName, kind: bdev.kind, readOnly: bdev.readOnly() });
    return exportName;
  }

  /**
   * Stops an export: its clients are disconnected cleanly before this resolves. Until then it
   * stays listed (`draining`) and its bdev stays busy, so no delete races its last requests.
   */
  async stop(exportName: string, reason = 'nbd_stop_export'): Promise<void> {
    const found = this.exports.get(exportName) ?? fail('ENODEV', `NBD export ${exportName} does not exist`);
    await this.stopAndForget(found, reason);
  }

  async stopAll(reason: string): Promise<void> {
    await Promise.all([...this.exports.values()].map((found) => this.stopAndForget(found, reason)));
  }

  private async stopAndForget(found: NbdExport, reason: string): Promise<void> {
    try {
      await found.stop(reason);
    } finally {
      if (this.exports.get(found.exportName) === found) this.exports.delete(found.exportName);
      found.hold.release();
    }
  }

  /** The export a client names in the handshake, if it exists and admits clients. */
  lookup(exportName: string): NbdExport | undefined {
    const found = this.exports.get(exportName);
    return found?.accepting ? found : undefined;
  }

  list(): NbdExport[] {
    return [...this.exports.values()];
  }

  /** The export of the bdev called `bdevName` (its own name: an lvol's UUID), if any. */
  private exportOf(bdevName: string): NbdExport | undefined {
    for (const found of this.exports.values()) if (found.bdev.name === bdevName) return found;
    return undefined;
  }

  /** A bdev deleted by a path that did not ask first (never expected) still disconnects its clients. */
  private onNodeEvent(event: NodeEvent): void {
    if (event.type !== 'lvol_deleted' && event.type !== 'bdev_deleted') return;
    const id = String(event.type === 'lvol_deleted' ? event.uuid : event.name);
    for (const found of this.exports.values()) {
      if (found.bdev.name === id) void this.stopAndForget(found, 'bdev deleted');
    }
  }
}
