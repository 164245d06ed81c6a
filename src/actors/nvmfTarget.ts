// The node's NVMe-oF target state (SPDK's spdk_nvmf_tgt): transports, subsystems with their
// namespaces, hosts and listeners. Each subsystem is an actor (src/machines/nvmfSubsystemMachine.ts)
// visible in the inspection stream as `nvmf:<nqn>`. The wire protocol (src/transport/nvmf/) asks
// this layer which subsystem a host may connect to and what its namespaces are; this layer opens
// and closes listening ports through `NvmfPorts`, which the transport provides.
//
// Nothing here is saved across a restart: as with NBD exports (which are not saved either), a
// client (Longhorn's engine, an operator's script) sets them up again by RPC after a restart.
import { randomUUID } from 'node:crypto';
import { type Actor, createActor } from 'xstate';
import type { Bdev } from '../bdev/bdev.ts';
import type { BdevHold } from '../bdev/bdevClaims.ts';
import {
  nvmfControllersPerSubsystemMax,
  nvmfHostsPerSubsystemMax,
  nvmfListenersMax,
  nvmfNamespacesMax,
  nvmfSubsystemsMax,
} from '../constants.ts';
import { fail } from '../errors.ts';
import { log } from '../log.ts';
import { nvmfSubsystemMachine } from '../machines/nvmfSubsystemMachine.ts';
import type { InspectionHub } from './inspector.ts';

export const nvmfDiscoveryNqn = 'nqn.2014-08.org.nvmexpress.discovery';

/** Which NVMe/TCP listeners the operator allowed (serve's flags): none, loopback, or any address. */
export type NvmfListenerAccess = 'none' | 'loopback' | 'remote';

/** A transport address as SPDK's RPCs spell it (`listen_address`). */
export interface NvmfListenAddress {
  readonly trtype: 'TCP';
  readonly adrfam: 'IPv4' | 'IPv6';
  readonly traddr: string;
  readonly trsvcid: string;
}

export type NvmfAnaState = 'optimized' | 'non_optimized' | 'inaccessible';

export interface NvmfListener {
  readonly address: NvmfListenAddress;
  anaState: NvmfAnaState;
}

export interface NvmfNamespace {
  readonly nsid: number;
  readonly bdev: Bdev;
  readonly hold: BdevHold;
  readonly uuid: string;
  /** 16 bytes, from the UUID (SPDK's default NGUID is the UUID's bytes too). */
  readonly nguid: Buffer;
  readonly anagrpid: number;
}

/** What the target knows of one controller the wire protocol created for a host. */
export interface NvmfControllerHandle {
  readonly hostNqn: string;
  /** The listener (`traddr:trsvcid`) its host connected through. */
  readonly listenKey: string;
  /** Namespaces were added or removed: the controller raises a namespace-attribute notice. */
  namespacesChanged(nsids: readonly number[]): void;
  /** Cut the controller's connections (subsystem deleted, namespace's bdev gone, shutdown). */
  disconnect(reason: string): void;
}

/** Listening ports, opened by the transport (src/transport/nvmf/target.ts). */
export interface NvmfPorts {
  open(address: NvmfListenAddress): Promise<void>;
  close(address: NvmfListenAddress): Promise<void>;
}

/** SPDK's nvmf_create_transport options for TCP that lvnode keeps (and reports). */
export interface NvmfTransportOptions {
  trtype: 'TCP';
  max_queue_depth: number;
  max_io_qpairs_per_ctrlr: number;
  in_capsule_data_size: number;
  max_io_size: number;
  io_unit_size: number;
  max_aq_depth: number;
  num_shared_buffers: number;
  buf_cache_size: number;
  dif_insert_or_strip: boolean;
  zcopy: boolean;
  c2h_success: boolean;
  sock_priority: number;
  abort_timeout_sec: number;
}

export function listenAddressKey(address: Pick<NvmfListenAddress, 'traddr' | 'trsvcid'>): string {
  return `${address.traddr.includes(':') ? `[${address.traddr}]` : address.traddr}:${address.trsvcid}`;
}

/** The inspection stream's id of a subsystem's actor. */
export function nvmfActorId(nqn: string): string {
  return `nvmf:${nqn}`;
}

export interface NvmfSubsystemOptions {
  readonly nqn: string;
  readonly subtype: 'NVMe' | 'Discovery';
  readonly serialNumber: string;
  readonly modelNumber: string;
  readonly allowAnyHost: boolean;
  readonly maxNamespaces: number;
  readonly minCntlid: number;
  readonly maxCntlid: number;
  readonly anaReporting: boolean;
}

export class NvmfSubsystem {
  readonly actor: Actor<typeof nvmfSubsystemMachine>;
  allowAnyHost: boolean;
  readonly hosts = new Set<string>();
  readonly namespaces = new Map<number, NvmfNamespace>();
  readonly listeners: NvmfListener[] = [];
  private readonly controllers = new Map<number, NvmfControllerHandle>();
  private nextCntlid: number;

  constructor(
    readonly options: NvmfSubsystemOptions,
    inspector: InspectionHub,
  ) {
    this.allowAnyHost = options.allowAnyHost;
    this.nextCntlid = options.minCntlid;
    const machine = nvmfSubsystemMachine.provide({
      actions: {
        disconnectControllers: ({ context }) => {
          for (const controller of [...this.controllers.values()]) controller.disconnect(context.stopReason ?? 'subsystem stopped');
        },
      },
    });
    const id = nvmfActorId(options.nqn);
    this.actor = createActor(machine, { id, input: { nqn: options.nqn, subtype: options.subtype }, inspect: inspector.observerFor(id) });
    this.actor.subscribe({ error: (error) => log('error', 'nvmf subsystem actor failed', { nqn: options.nqn, error: String(error) }) });
    this.actor.start();
    this.actor.send({ type: 'subsystem.start' });
  }

  get nqn(): string {
    return this.options.nqn;
  }

  get isDiscovery(): boolean {
    return this.options.subtype === 'Discovery';
  }

  /** Whether hosts may connect now (the machine's `accepting` tag: active, not paused or stopping). */
  accepting(): boolean {
    return this.actor.getSnapshot().hasTag('accepting');
  }

  state(): string {
    return String(this.actor.getSnapshot().value);
  }

  hostAllowed(hostNqn: string): boolean {
    return this.allowAnyHost || this.hosts.has(hostNqn);
  }

  /** The discovery subsystem answers on every port (as SPDK's); others only on their listeners. */
  listensOn(key: string): boolean {
    return this.isDiscovery || this.listeners.some((listener) => listenAddressKey(listener.address) === key);
  }

  listener(key: string): NvmfListener | undefined {
    return this.listeners.find((listener) => listenAddressKey(listener.address) === key);
  }

  /** Admits a controller and gives it an id, or undefined when the subsystem is full or not accepting. */
  attachController(handle: NvmfControllerHandle): number | undefined {
    if (!this.accepting() || this.controllers.size >= Math.min(nvmfControllersPerSubsystemMax, this.options.maxCntlid - this.options.minCntlid + 1)) return undefined;
    let cntlid = this.nextCntlid;
    while (this.controllers.has(cntlid)) cntlid = cntlid >= this.options.maxCntlid ? this.options.minCntlid : cntlid + 1;
    this.nextCntlid = cntlid >= this.options.maxCntlid ? this.options.minCntlid : cntlid + 1;
    this.controllers.set(cntlid, handle);
    this.actor.send({ type: 'controller.connect', cntlid });
    return cntlid;
  }

  controller(cntlid: number): NvmfControllerHandle | undefined {
    return this.controllers.get(cntlid);
  }

  detachController(cntlid: number, handle: NvmfControllerHandle): void {
    if (this.controllers.get(cntlid) !== handle) return;
    this.controllers.delete(cntlid);
    this.actor.send({ type: 'controller.disconnect', cntlid });
  }

  controllerCount(): number {
    return this.controllers.size;
  }

  /** Disconnects the hosts that came through listener `key` (it was removed), as SPDK does. */
  disconnectListener(key: string): void {
    for (const controller of [...this.controllers.values()]) if (controller.listenKey === key) controller.disconnect('listener removed');
  }

  /** Adds a namespace on `bdev` (opened, so it cannot be deleted under the hosts); returns its NSID. */
  addNamespace(bdev: Bdev, options: { nsid?: number | undefined; uuid?: string | undefined; nguid?: string | undefined; anagrpid?: number | undefined }): number {
    if (this.isDiscovery) fail('EINVAL', 'the discovery subsystem has no namespaces');
    const max = this.options.maxNamespaces;
    let nsid = options.nsid ?? 0;
    if (nsid === 0) {
      nsid = 1;
      while (this.namespaces.has(nsid)) nsid++;
    }
    if (nsid > max || nsid > nvmfNamespacesMax) fail('EINVAL', `NSID ${nsid} is past the subsystem's max_namespaces (${max})`);
    if (this.namespaces.has(nsid)) fail('EEXIST', `NSID ${nsid} is already in use`);
    // By name: an lvol's Bdev is made per lookup, so two lookups of one lvol are different objects.
    for (const namespace of this.namespaces.values()) {
      if (namespace.bdev.name === bdev.name) fail('EEXIST', `bdev ${bdev.name} is already namespace ${namespace.nsid} of ${this.nqn}`);
    }
    const uuid = options.uuid ?? bdev.uuid ?? randomUUID();
    // Removable, as in SPDK: deleting the bdev hot-removes the namespace (NvmfTarget.bdevRemoved)
    // rather than failing. Longhorn's revert deletes the exposed head lvol and relies on it.
    const hold = bdev.claims.open(`NVMe-oF namespace ${nsid} of ${this.nqn}`, { removable: true });
    const nguid = Buffer.from((options.nguid ?? uuid).replaceAll('-', ''), 'hex');
    this.changeNamespaces(() => this.namespaces.set(nsid, { nsid, bdev, hold, uuid, nguid, anagrpid: options.anagrpid ?? nsid }), [nsid]);
    return nsid;
  }

  removeNamespace(nsid: number): void {
    const namespace = this.namespaces.get(nsid);
    if (!namespace) fail('ENOENT', `no namespace ${nsid} in ${this.nqn}`);
    this.changeNamespaces(() => this.namespaces.delete(nsid), [nsid]);
    namespace.hold.release();
  }

  /** Pauses the subsystem around a namespace change (the inspector shows it), then tells every controller. */
  private changeNamespaces(change: () => void, nsids: readonly number[]): void {
    this.actor.send({ type: 'subsystem.pause' });
    try {
      change();
    } finally {
      this.actor.send({ type: 'subsystem.resume' });
    }
    for (const controller of this.controllers.values()) controller.namespacesChanged(nsids);
  }

  /** Disconnects every host and lets go of every bdev. */
  stop(reason: string): void {
    this.actor.send({ type: 'subsystem.stop', reason });
    for (const namespace of this.namespaces.values()) namespace.hold.release();
    this.namespaces.clear();
    this.actor.stop();
  }
}

export class NvmfTarget {
  readonly transports: NvmfTransportOptions[] = [];
  private readonly subsystems = new Map<string, NvmfSubsystem>();
  private ports: NvmfPorts | undefined;
  /** Open ports and how many listeners (of any subsystem) use each. */
  private readonly portUsers = new Map<string, number>();
  /** Listener changes, for whoever shows discovery (the discovery log's generation counter). */
  generation = 0;

  constructor(
    private readonly inspector: InspectionHub,
    /**
     * Who may be served, as the operator chose: `none` (the default) refuses every listener;
     * `loopback` (--nvmf-insecure-tcp) binds loopback only; `remote` (--nvmf-allow-remote) any address.
     */
    readonly listeners: NvmfListenerAccess = 'none',
  ) {
    const discovery = new NvmfSubsystem(
      { nqn: nvmfDiscoveryNqn, subtype: 'Discovery', serialNumber: '', modelNumber: '', allowAnyHost: true, maxNamespaces: 0, minCntlid: 1, maxCntlid: 0xffef, anaReporting: false },
      inspector,
    );
    this.subsystems.set(nvmfDiscoveryNqn, discovery);
  }

  /** The transport's port opener; listeners cannot be added before it is attached. */
  attachPorts(ports: NvmfPorts): void {
    this.ports = ports;
  }

  subsystem(nqn: string): NvmfSubsystem | undefined {
    return this.subsystems.get(nqn);
  }

  list(): NvmfSubsystem[] {
    return [...this.subsystems.values()];
  }

  transport(trtype: string): NvmfTransportOptions | undefined {
    return this.transports.find((transport) => transport.trtype.toUpperCase() === trtype.toUpperCase());
  }

  createSubsystem(options: Omit<NvmfSubsystemOptions, 'subtype'>): NvmfSubsystem {
    if (this.subsystems.has(options.nqn)) fail('EEXIST', `subsystem ${options.nqn} already exists`);
    if (this.subsystems.size >= nvmfSubsystemsMax) fail('ENOSPC', `at most ${nvmfSubsystemsMax} subsystems`);
    const subsystem = new NvmfSubsystem({ ...options, subtype: 'NVMe' }, this.inspector);
    this.subsystems.set(options.nqn, subsystem);
    this.generation++;
    return subsystem;
  }

  async deleteSubsystem(nqn: string, reason = 'nvmf_delete_subsystem'): Promise<void> {
    const subsystem = this.require(nqn);
    if (subsystem.isDiscovery) fail('EPERM', 'the discovery subsystem cannot be deleted');
    this.subsystems.delete(nqn);
    subsystem.stop(reason);
    for (const listener of subsystem.listeners) await this.releasePort(listener.address);
    this.generation++;
  }

  addHost(nqn: string, hostNqn: string): void {
    const subsystem = this.require(nqn);
    if (subsystem.hosts.has(hostNqn)) fail('EEXIST', `host ${hostNqn} is already allowed on ${nqn}`);
    if (subsystem.hosts.size >= nvmfHostsPerSubsystemMax) fail('ENOSPC', `at most ${nvmfHostsPerSubsystemMax} hosts per subsystem`);
    subsystem.hosts.add(hostNqn);
    this.generation++;
  }

  async addListener(nqn: string, address: NvmfListenAddress): Promise<void> {
    const subsystem = this.require(nqn);
    // Access first: a refused listener says why it can never be, before what is merely missing.
    assertListenable(address, this.listeners);
    if (!this.ports) fail('ENODEV', 'no NVMe-oF transport is running');
    if (!this.transport(address.trtype)) fail('EINVAL', `no ${address.trtype} transport: call nvmf_create_transport first`);
    const key = listenAddressKey(address);
    if (subsystem.listener(key)) fail('EEXIST', `${nqn} already listens on ${key}`);
    if (subsystem.listeners.length >= nvmfListenersMax) fail('ENOSPC', `at most ${nvmfListenersMax} listeners per subsystem`);
    const users = this.portUsers.get(key) ?? 0;
    if (users === 0) await this.ports.open(address);
    this.portUsers.set(key, users + 1);
    subsystem.listeners.push({ address, anaState: 'optimized' });
    this.generation++;
  }

  async removeListener(nqn: string, address: Pick<NvmfListenAddress, 'traddr' | 'trsvcid'>): Promise<void> {
    const subsystem = this.require(nqn);
    const key = listenAddressKey(address);
    const index = subsystem.listeners.findIndex((listener) => listenAddressKey(listener.address) === key);
    if (index < 0) fail('ENOENT', `${nqn} does not listen on ${key}`);
    const [listener] = subsystem.listeners.splice(index, 1);
    subsystem.disconnectListener(key);
    await this.releasePort(listener!.address);
    this.generation++;
  }

  private async releasePort(address: NvmfListenAddress): Promise<void> {
    const key = listenAddressKey(address);
    const users = (this.portUsers.get(key) ?? 1) - 1;
    if (users > 0) {
      this.portUsers.set(key, users);
      return;
    }
    this.portUsers.delete(key);
    await this.ports?.close(address);
  }

  require(nqn: string): NvmfSubsystem {
    const subsystem = this.subsystems.get(nqn);
    if (!subsystem) fail('ENOENT', `no subsystem ${nqn}`);
    return subsystem;
  }

  /** The namespaces serving `bdev`, as `nqn nsid`. */
  namespacesOf(bdev: Bdev): string[] {
    const found: string[] = [];
    for (const subsystem of this.subsystems.values()) {
      for (const namespace of subsystem.namespaces.values()) if (namespace.bdev.name === bdev.name) found.push(`${subsystem.nqn} nsid ${namespace.nsid}`);
    }
    return found;
  }

  /**
   * A bdev was deleted (or its lvstore unloaded): every namespace on it goes, and the hosts are told
   * (a namespace-attribute-changed event), as SPDK does when a bdev under a namespace is unregistered.
   */
  bdevRemoved(bdevName: string): void {
    for (const subsystem of this.subsystems.values()) {
      for (const namespace of [...subsystem.namespaces.values()]) {
        if (namespace.bdev.name !== bdevName) continue;
        subsystem.removeNamespace(namespace.nsid);
        log('info', 'nvmf namespace removed: its bdev is gone', { nqn: subsystem.nqn, nsid: namespace.nsid, bdev: bdevName });
      }
    }
  }

  async stopAll(reason: string): Promise<void> {
    for (const subsystem of [...this.subsystems.values()]) {
      subsystem.stop(reason);
      for (const listener of subsystem.listeners) await this.releasePort(listener.address);
    }
    this.subsystems.clear();
  }
}

const loopbackAddresses = new Set(['127.0.0.1', '::1', 'localhost']);

/** True for addresses only this host reaches (127.0.0.0/8, ::1). */
export function isLoopback(traddr: string): boolean {
  return loopbackAddresses.has(traddr) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(traddr);
}

/**
 * NVMe/TCP has no authentication lvnode implements (no DH-HMAC-CHAP, no TLS): whoever reaches a
 * listener reads and writes its namespaces, host NQNs being only a claim. So a listener binds
 * nothing by default, loopback with --nvmf-insecure-tcp, any address with --nvmf-allow-remote (README, security).
 */
function assertListenable(address: NvmfListenAddress, access: NvmfListenerAccess): void {
  if (access === 'none') {
    // Loopback is not a credential: every local user reaches 127.0.0.1, and the node runs as root.
    // NBD's default listener is a 0600 Unix socket, its TCP needs TLS-PSK; NVMe/TCP has neither here.
    fail(
      'EPERM',
      `listener ${listenAddressKey(address)} refused: NVMe/TCP here has no credential (no TLS-PSK, no DH-HMAC-CHAP), so any local user could ` +
        'read and write its namespaces; start lvnode with --nvmf-insecure-tcp to accept that on loopback (--nvmf-allow-remote beyond it)',
    );
  }
  if (access === 'remote' || isLoopback(address.traddr)) return;
  fail(
    'EPERM',
    `listener ${listenAddressKey(address)} is not a loopback address: NVMe/TCP here has no authentication or encryption, so anyone who reaches it ` +
      'reads and writes its namespaces; start lvnode with --nvmf-allow-remote to serve NVMe/TCP beyond this host (a trusted network only)',
  );
}
