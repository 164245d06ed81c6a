// The node's NBD exports (SPEC §7): which bdev each export serves, its clients, and its figures.
//
// Each export is an actor (src/machines/nbdExportMachine.ts) visible in the inspection stream as
// `nbd:<export name>`. This file binds the machine to the bdev behind it (an `NbdTarget`: the
// byte-level operations the NBD server calls) and to the connections the server attaches. The
// node asks it, before deleting a bdev, whether the bdev is exported (refused with EBUSY, as SPDK
// refuses to delete a claimed bdev).
import { type Actor, createActor, waitFor } from 'xstate';
import { nbdExportsMax, nbdStopGraceMs } from '../constants.ts';
import { StorageError, fail, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import { nbdExportMachine } from '../machines/nbdExportMachine.ts';
import type { NodeEvent, StorageNode } from './node.ts';
import type { BaseBdev, LvstoreEntry } from './registry.ts';

/** A run of an export's bytes that is data or a hole (reads as zeros, owns no storage). */
export interface NbdExtent {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly allocated: boolean;
}

/**
 * What the NBD server needs of the bdev behind an export. Callers check ranges, alignment and
 * the read-only flag first; the target checks again (the store does) and throws StorageError.
 */
export interface NbdTarget {
  readonly kind: 'lvol' | BaseBdev['kind'];
  /** What busy checks compare: the lvol's UUID, or the base bdev's name. */
  readonly bdevId: string;
  readonly blockSizeBytes: number;
  sizeBytes(): number;
  readOnly(): boolean;
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Fills `target` with the bytes at `offsetBytes` (as `read`, into the caller's buffer). */
  readInto(offsetBytes: number, target: Buffer): Promise<void>;
  /** True when the whole range is a hole, so it reads as zeros without being read. */
  isHole(offsetBytes: number, lengthBytes: number): boolean;
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write of the bdev durable (for every connection: multi-conn safe). */
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void>;
  extents(offsetBytes: number, lengthBytes: number, maxExtents: number): NbdExtent[];
}

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
  kind: NbdTarget['kind'];
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
    readonly target: NbdTarget,
    inspect: StorageNode['inspector'],
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
      sizeBytes = this.target.sizeBytes();
      readOnly = this.target.readOnly();
    } catch {
      // The bdev is going away; the export is stopping with it.
    }
    return {
      export_name: this.exportName,
      bdev_name: this.bdevName,
      kind: this.target.kind,
      state: snapshot.value,
      read_only: readOnly,
      size: sizeBytes,
      block_size: this.target.blockSizeBytes,
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

  constructor(private readonly node: StorageNode) {
    node.events.on('event', (event) => this.onNodeEvent(event));
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
    const target = this.targetOf(bdevName);
    const existing = this.exportOf(target.bdevId);
    if (existing) fail('EEXIST', `bdev ${bdevName} is already exported over NBD as ${existing.exportName}`);
    this.exports.set(exportName, new NbdExport(exportName, bdevName, target, this.node.inspector));
    log('info', 'nbd export started', { export: exportName, bdev: bdevName, kind: target.kind, readOnly: target.readOnly() });
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

  /** Refuses (EBUSY) to delete or claim a bdev while it is exported, as SPDK does for claimed bdevs. */
  assertNotExported(bdevId: string, displayName = bdevId): void {
    const found = this.exportOf(bdevId);
    if (found) fail('EBUSY', `bdev ${displayName} is exported over NBD as ${found.exportName}; stop the export first (nbd_stop_export)`);
  }

  /** Refuses (EBUSY) to delete an lvstore while one of its lvols is exported. */
  assertLvstoreNotExported(entry: LvstoreEntry): void {
    // A pass over the exports (a few), not over the lvstore's lvols (100,000 names were ~60 ms).
    for (const found of this.exports.values()) {
      const lvol = entry.store.record.lvols.get(found.target.bdevId);
      if (lvol) this.assertNotExported(lvol.id, `${entry.store.name}/${lvol.name}`);
    }
  }

  private exportOf(bdevId: string): NbdExport | undefined {
    for (const found of this.exports.values()) if (found.target.bdevId === bdevId) return found;
    return undefined;
  }

  /** A bdev deleted by a path that did not ask first (never expected) still disconnects its clients. */
  private onNodeEvent(event: NodeEvent): void {
    if (event.type !== 'lvol_deleted' && event.type !== 'bdev_deleted') return;
    const id = String(event.type === 'lvol_deleted' ? event.uuid : event.name);
    for (const found of this.exports.values()) {
      if (found.target.bdevId === id) void this.stopAndForget(found, 'bdev deleted');
    }
  }

  private targetOf(bdevName: string): NbdTarget {
    const base = this.node.registry.bdevs.get(bdevName);
    return base ? baseTarget(base) : lvolTarget(this.node, bdevName);
  }
}

function lvolTarget(node: StorageNode, name: string): NbdTarget {
  const { entry, lvol } = node.resolveLvol(name);
  // Bound to the UUID: a rename of the lvol or its lvstore leaves the export working.
  const id = lvol.id;
  const resolve = () => node.resolveLvol(id);
  return {
    kind: 'lvol',
    bdevId: id,
    blockSizeBytes: entry.store.device.blockSizeBytes,
    sizeBytes: () => {
      const current = resolve();
      return current.lvol.clusterMap.length * current.entry.store.clusterBytes;
    },
    readOnly: () => resolve().lvol.readOnly,
    read: (offsetBytes, lengthBytes) => node.readLvol(id, offsetBytes, lengthBytes),
    readInto: (offsetBytes, target) => node.readLvolInto(id, offsetBytes, target),
    isHole: (offsetBytes, lengthBytes) => {
      const [first] = node.lvolExtents(id, offsetBytes, lengthBytes, 1);
      return first !== undefined && !first.allocated && first.lengthBytes === lengthBytes;
    },
    write: (offsetBytes, data) => node.writeLvol(id, offsetBytes, data),
    flush: () => node.flushLvol(id),
    trim: (offsetBytes, lengthBytes) => node.unmapLvol(id, offsetBytes, lengthBytes),
    writeZeroes: (offsetBytes, lengthBytes) => node.writeZeroesLvol(id, offsetBytes, lengthBytes),
    extents: (offsetBytes, lengthBytes, maxExtents) => node.lvolExtents(id, offsetBytes, lengthBytes, maxExtents),
  };
}

/**
 * A base bdev (malloc, aio). One an lvstore claims is served read-only, as SPDK lets a claimed
 * bdev be opened for reading only: the lvstore is its one writer.
 */
function baseTarget(bdev: BaseBdev): NbdTarget {
  const { device } = bdev;
  const readOnly = () => bdev.readOnly || bdev.claimedBy !== null;
  const assertWritable = () => {
    if (readOnly()) fail('EPERM', bdev.claimedBy ? `bdev ${bdev.name} is claimed by lvstore ${bdev.claimedBy}` : `bdev ${bdev.name} is read-only`);
  };
  const deviceCall = async <T>(what: string, work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (error) {
      throw error instanceof StorageError ? error : fromDeviceError(error, `${what} of bdev ${bdev.name} failed`);
    }
  };
  return {
    kind: bdev.kind,
    bdevId: bdev.name,
    blockSizeBytes: device.blockSizeBytes,
    sizeBytes: () => device.sizeBytes,
    readOnly,
    read: (offsetBytes, lengthBytes) =>
      deviceCall('read', async () => {
        const target = Buffer.allocUnsafe(lengthBytes);
        await device.readInto(target, offsetBytes);
        return target;
      }),
    readInto: (offsetBytes, target) => deviceCall('read', () => device.readInto(target, offsetBytes)),
    isHole: () => false,
    write: (offsetBytes, data) =>
      deviceCall('write', async () => {
        assertWritable();
        await device.write(offsetBytes, data);
      }),
    flush: () => deviceCall('flush', () => device.flush()),
    trim: (offsetBytes, lengthBytes) =>
      deviceCall('trim', async () => {
        assertWritable();
        await device.discard(offsetBytes, lengthBytes);
      }),
    writeZeroes: (offsetBytes, lengthBytes) =>
      deviceCall('write_zeroes', async () => {
        assertWritable();
        await device.discard(offsetBytes, lengthBytes);
      }),
    extents: (offsetBytes, lengthBytes) => [{ offsetBytes, lengthBytes, allocated: true }],
  };
}
