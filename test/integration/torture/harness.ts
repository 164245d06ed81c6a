// A node for the torture test: an lvstore on a crash-simulating device, a real NBD listener and
// clients, RPCs through the method table, and the two crashes (kill -9, power loss) with restarts.
import { StorageNode } from '../../../src/actors/node.ts';
import { CrashableDevice } from '../../../src/device/crashableDevice.ts';
import { StorageError } from '../../../src/errors.ts';
import { seededRuntime } from '../../../src/runtime.ts';
import { createMethodTable } from '../../../src/transport/methods.ts';
import type { MethodTable } from '../../../src/transport/methodTable.ts';
import { NbdServer } from '../../../src/transport/nbd/server.ts';
import { NbdTestClient } from '../../transport/nbdTestClient.ts';

export const lvsName = 'lvs';
const bdevName = 'sim0';
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

/** An RPC's outcome: its result, or the errno of the StorageError it was refused with. */
export type Answer<T = unknown> = { ok: true; value: T } | { ok: false; errno: string; message: string };

export interface LvolListing {
  name: string;
  uuid: string;
  num_clusters: number;
  num_allocated_clusters: number;
  is_snapshot: boolean;
  is_thin_provisioned: boolean;
  parent: string | null;
}

export interface LvstoreListing {
  total_data_clusters: number;
  free_clusters: number;
  cluster_size: number;
  metadata_error?: string;
}

export class TortureNode {
  private clients = new Map<string, NbdTestClient>();
  // Connections being opened: concurrent requests on one lvol (a burst) share one.
  private opening = new Map<string, Promise<NbdTestClient>>();
  private generation = 0;

  private constructor(
    readonly seed: number,
    public device: CrashableDevice,
    public node: StorageNode,
    public table: MethodTable,
    public nbd: NbdServer,
  ) {}

  /** A node on a fresh device with an empty lvstore `lvs` of `clusterBytes` clusters. */
  static async create(options: { seed: number; deviceBytes: number; clusterBytes: number }): Promise<TortureNode> {
    const device = new CrashableDevice(options.deviceBytes, 512);
    const { node, table, nbd } = await TortureNode.boot(device, options.seed);
    const torture = new TortureNode(options.seed, device, node, table, nbd);
    const created = await torture.call('bdev_lvol_create_lvstore', { bdev_name: bdevName, lvs_name: lvsName, cluster_sz: options.clusterBytes });
    if (!created.ok) throw new Error(`lvstore create failed: ${created.message}`);
    return torture;
  }

  private static async boot(device: CrashableDevice, seed: number): Promise<{ node: StorageNode; table: MethodTable; nbd: NbdServer }> {
    const node = new StorageNode(seededRuntime(seed));
    // The device outlives the node: closing it must not lose the bytes (CrashableDevice.close keeps them).
    await node.attachBaseDevice(bdevName, device);
    // A test of the data path, not of who may connect: plain TCP on loopback, said explicitly.
    const nbd = await NbdServer.listen({
      address: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      insecureTcp: true,
      exports: node.nbd,
      noteForeground: () => node.scheduler.noteForeground(),
    });
    return { node, table: createMethodTable(node), nbd };
  }

  /** Runs an RPC as the dispatcher would; a StorageError becomes a refusal, anything else throws. */
  async call<T = unknown>(method: string, params: Record<string, unknown>): Promise<Answer<T>> {
    const entry = this.table[method];
    if (!entry) throw new Error(`no method ${method}`);
    try {
      return { ok: true, value: (await entry.handler(entry.params.parse(params), noConnection)) as T };
    } catch (error) {
      if (error instanceof StorageError) return { ok: false, errno: error.errno, message: error.message };
      throw error;
    }
  }

  /** An RPC that must succeed (listings): a refusal fails the test. */
  async must<T = unknown>(method: string, params: Record<string, unknown>): Promise<T> {
    const answer = await this.call<T>(method, params);
    if (!answer.ok) throw new Error(`${method} ${JSON.stringify(params)} refused: ${answer.errno} ${answer.message}`);
    return answer.value;
  }

  async lvols(): Promise<LvolListing[]> {
    return this.must<LvolListing[]>('bdev_lvol_get_lvols', { lvs_name: lvsName });
  }

  async lvstore(): Promise<LvstoreListing> {
    const [lvstore] = await this.must<LvstoreListing[]>('bdev_lvol_get_lvstores', { lvs_name: lvsName });
    if (!lvstore) throw new Error(`lvstore ${lvsName} is not loaded`);
    return lvstore;
  }

  /** The NBD client of a writable lvol, exported on first use, reconnected when its size changed. */
  async client(name: string, sizeBytes: number): Promise<NbdTestClient> {
    const existing = this.clients.get(name);
    if (existing && existing.sizeBytes === sizeBytes) return existing;
    let opening = this.opening.get(name);
    if (!opening) {
      opening = this.connect(name, sizeBytes).finally(() => this.opening.delete(name));
      this.opening.set(name, opening);
    }
    return opening;
  }

  private async connect(name: string, sizeBytes: number): Promise<NbdTestClient> {
    if (this.clients.has(name)) await this.disconnect(name);
    const exported = (await this.must<Array<{ export_name: string }>>('nbd_get_exports', {})).some((found) => found.export_name === name);
    if (!exported) await this.must('nbd_start_export', { bdev_name: `${lvsName}/${name}`, export_name: name });
    const client = await NbdTestClient.open(this.nbd.address, name);
    if (client.sizeBytes !== sizeBytes) throw new Error(`export ${name} is ${client.sizeBytes} bytes, the lvol ${sizeBytes}`);
    this.clients.set(name, client);
    return client;
  }

  /** Disconnects the lvol's client (a resize changes the export's size: clients reconnect). */
  async disconnect(name: string): Promise<void> {
    const client = this.clients.get(name);
    this.clients.delete(name);
    if (client) await client.disconnect();
  }

  /** Disconnects and stops the lvol's export: a delete is refused while it is exported. */
  async unexport(name: string): Promise<void> {
    await this.disconnect(name);
    const exported = (await this.must<Array<{ export_name: string }>>('nbd_get_exports', {})).some((found) => found.export_name === name);
    if (exported) await this.must('nbd_stop_export', { export_name: name });
  }

  /**
   * Kills the node and starts a new one on what the device holds afterwards: after a process
   * crash every byte the old node wrote (the kernel kept them); after a power loss only what was
   * flushed, plus a seeded choice of unflushed writes kept, dropped or torn at block boundaries.
   */
  async crash(kind: 'process' | 'power', seed: number): Promise<void> {
    // First: nothing the dead node still has in flight may reach the device.
    this.device.halt();
    await this.abandon();
    this.device = kind === 'process' ? await this.device.afterProcessCrash() : await this.device.afterPowerLoss({ seed, tear: 'blocks' });
    this.generation++;
    const booted = await TortureNode.boot(this.device, this.seed * 1000 + this.generation);
    this.node = booted.node;
    this.table = booted.table;
    this.nbd = booted.nbd;
  }

  /** Lets the dead node go: sockets cut, timers stopped; its device already fails every I/O. */
  private async abandon(): Promise<void> {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
    await this.nbd.close().catch(() => undefined);
    await this.node.shutdown().catch(() => undefined);
    this.node.scheduler.stop();
    this.node.lvstores.dispose();
  }

  async close(): Promise<void> {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
    await this.nbd.close().catch(() => undefined);
    await this.node.shutdown().catch(() => undefined);
  }
}
