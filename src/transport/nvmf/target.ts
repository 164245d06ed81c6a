// The NVMe/TCP transport: listening ports (opened and closed by the target state in
// src/actors/nvmfTarget.ts as listeners are added and removed) and the connections accepted on them.
//
// Connection slots cannot be hoarded (NBD's rule, src/transport/nbd/server.ts): a connection that
// has not yet completed a Fabrics Connect holds a handshake slot for at most handshakeTimeoutMs,
// and at handshakeSlotsMax such connections a newcomer first closes the oldest of them (see
// makeRoom). Established queue pairs count only against connectionsMax.
import { type Server, type Socket, createServer } from 'node:net';
import { type NvmfListenAddress, type NvmfPorts, type NvmfTarget, listenAddressKey } from '../../actors/nvmfTarget.ts';
import {
  mibBytes,
  nvmfConnectionsMax,
  nvmfHandshakeEndsLogIntervalMs,
  nvmfHandshakeSlotsMax,
  nvmfHandshakeTimeoutMs,
  nvmfListenBacklog,
  nvmfPayloadBytesInFlightNodeMax,
  nvmfPayloadBytesInFlightPerQueueMax,
} from '../../constants.ts';
import { fail } from '../../errors.ts';
import { log } from '../../log.ts';
import { ByteBudget } from '../byteBudget.ts';
import { BufferPool } from '../nbd/bufferPool.ts';
import { NvmfQueuePair, c2hHeadroomBytes } from './queuePair.ts';

interface Port {
  readonly server: Server;
  readonly connections: Set<NvmfQueuePair>;
}

/** How many connections the transport keeps, and for how long before Connect (tests make them small). */
export interface NvmfTransportLimits {
  /** TCP connections of the whole target, handshaking or established. */
  readonly connectionsMax: number;
  /** Connections before a successful Connect; at this many, a newcomer first closes the oldest. */
  readonly handshakeSlotsMax: number;
  /** How long a connection may take from accept to a successful Connect. */
  readonly handshakeTimeoutMs: number;
}

const defaultLimits: NvmfTransportLimits = {
  connectionsMax: nvmfConnectionsMax,
  handshakeSlotsMax: nvmfHandshakeSlotsMax,
  handshakeTimeoutMs: nvmfHandshakeTimeoutMs,
};

/** A connection still before Connect: its port (to forget it there when evicted) and its deadline. */
interface HandshakeSlot {
  readonly port: Port;
  readonly deadline: NodeJS.Timeout;
}

/** How connections ended before Connect: counted since start (stats, tests) and since the last log line. */
export interface NvmfHandshakeEnds {
  /** Closed to make room for a newer connection (the handshake pool, or the connection cap, was full). */
  evicted: number;
  /** Closed on accept: the connection cap was full of established queue pairs. */
  refused: number;
  /** No Connect within the handshake deadline. */
  timedOut: number;
}

function noHandshakeEnds(): NvmfHandshakeEnds {
  return { evicted: 0, refused: 0, timedOut: 0 };
}

export class NvmfTcpTransport implements NvmfPorts {
  private readonly ports = new Map<string, Port>();
  private readonly nodeBudget = new ByteBudget(nvmfPayloadBytesInFlightNodeMax);
  // Idle payload buffers kept for reuse: a few queues' worth of 128 KiB transfers.
  private readonly buffers = new BufferPool(64 * mibBytes, c2hHeadroomBytes, 512);
  private readonly payloadReceived = { inPlaceBytes: 0, copiedBytes: 0 };
  private connectionCount = 0;
  private nextId = 1;
  private closedInFlightPeak = 0;
  private readonly limits: NvmfTransportLimits;
  /** Connections before Connect, oldest first (a Map keeps insertion order). */
  private readonly handshaking = new Map<NvmfQueuePair, HandshakeSlot>();
  private readonly handshakeEndsTotal = noHandshakeEnds();
  private handshakeEndsUnlogged = noHandshakeEnds();
  private handshakeEndsLoggedAtMs = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly target: NvmfTarget,
    private readonly noteForeground: () => void = () => {},
    limits: Partial<NvmfTransportLimits> = {},
  ) {
    this.limits = { ...defaultLimits, ...limits };
    target.attachPorts(this);
  }

  get connections(): number {
    return this.connectionCount;
  }

  /** The most commands any one queue pair held at once, closed ones included (stats, tests). */
  queueDepthPeak(): number {
    let peak = this.closedInFlightPeak;
    for (const port of this.ports.values()) for (const queue of port.connections) peak = Math.max(peak, queue.inFlightPeak);
    return peak;
  }

  /** Connections before Connect now, and how many ended there since start (tests; the log has them too). */
  handshakeFigures(): NvmfHandshakeEnds & { handshaking: number } {
    return { handshaking: this.handshaking.size, ...this.handshakeEndsTotal };
  }

  /**
   * Payload bytes reserved now and at most, and the host's payload bytes received so far: read
   * in place into the commands' buffers, or copied out of a connection's read buffer (stats, tests).
   */
  payloadFigures(): { inUseBytes: number; peakBytes: number; inPlaceBytes: number; copiedBytes: number } {
    return { inUseBytes: this.nodeBudget.inUseBytes, peakBytes: this.nodeBudget.peakBytes, ...this.payloadReceived };
  }

  async open(address: NvmfListenAddress): Promise<void> {
    const key = listenAddressKey(address);
    if (this.ports.has(key)) return;
    const port = Number(address.trsvcid);
    if (!Number.isInteger(port) || port < 1 || port > 65_535) fail('EINVAL', `trsvcid ${address.trsvcid} is not a TCP port`);
    // Accepted paused: the queue pair installs its own read buffer before the first read.
    const server = createServer({ noDelay: true, allowHalfOpen: false, pauseOnConnect: true });
    const entry: Port = { server, connections: new Set() };
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => reject(new Error(`cannot listen for NVMe/TCP on ${key}: ${error.code ?? error.message}`)));
      server.listen({ host: address.traddr, port, exclusive: true, backlog: nvmfListenBacklog }, () => resolve());
    }).catch((error: Error) => fail('EINVAL', error.message));
    server.on('error', (error) => log('error', 'nvmf listener error', { address: key, error: error.message }));
    server.on('connection', (socket) => this.accept(socket, key, entry));
    this.ports.set(key, entry);
    log('info', 'nvmf listening', { address: key });
  }

  async close(address: NvmfListenAddress): Promise<void> {
    const key = listenAddressKey(address);
    const port = this.ports.get(key);
    if (!port) return;
    this.ports.delete(key);
    const closed = new Promise<void>((resolve) => port.server.close(() => resolve()));
    for (const connection of port.connections) connection.close('listener removed');
    await closed;
    log('info', 'nvmf listener closed', { address: key });
  }

  private accept(socket: Socket, listenKey: string, port: Port): void {
    if (!this.makeRoom()) {
      socket.destroy();
      return;
    }
    this.connectionCount++;
    const context = {
      target: this.target,
      listenKey,
      nodeBudget: this.nodeBudget,
      buffers: this.buffers,
      payloadReceived: this.payloadReceived,
      noteForeground: this.noteForeground,
      noteConnected: (connected: NvmfQueuePair) => this.leaveHandshake(connected),
    };
    const queue = new NvmfQueuePair(this.nextId++, socket, context, new ByteBudget(nvmfPayloadBytesInFlightPerQueueMax), (closed) => {
      this.leaveHandshake(closed);
      this.closedInFlightPeak = Math.max(this.closedInFlightPeak, closed.inFlightPeak);
      // An evicted queue was forgotten (and uncounted) when it was evicted.
      if (port.connections.delete(closed)) this.connectionCount--;
    });
    port.connections.add(queue);
    const deadline = setTimeout(() => {
      // Out of the pool now, not at its close event: a newcomer meanwhile must not count it again.
      this.leaveHandshake(queue);
      this.noteHandshakeEnded('timedOut', `queue ${queue.id}: no Connect within ${this.limits.handshakeTimeoutMs} ms`);
      queue.close('no Connect in time');
    }, this.limits.handshakeTimeoutMs);
    deadline.unref();
    this.handshaking.set(queue, { port, deadline });
  }

  /**
   * Makes room for one more connection; false when there is none. While the handshake pool and the
   * connection cap both have room, a newcomer simply joins. When either is full, the oldest
   * connection still before Connect is closed for it: idle connections that never finish thus
   * displace each other, oldest first, while a host that sends its Connect within a few round trips
   * leaves the pool long before a flood's newer connections reach it. Established queue pairs are
   * never closed for a newcomer: with the cap full of them, the newcomer is refused.
   */
  private makeRoom(): boolean {
    const poolFull = this.handshaking.size >= this.limits.handshakeSlotsMax;
    if (!poolFull && this.connectionCount < this.limits.connectionsMax) return true;
    const oldest = this.handshaking.keys().next();
    if (oldest.done === true) {
      this.noteHandshakeEnded('refused', `${this.connectionCount} established queue pairs fill the connection cap`);
      return false;
    }
    const victim = oldest.value;
    const slot = this.handshaking.get(victim)!;
    this.leaveHandshake(victim);
    // Its close event comes later: from now on it does not count.
    slot.port.connections.delete(victim);
    this.connectionCount--;
    this.noteHandshakeEnded('evicted', `queue ${victim.id}: ${poolFull ? 'handshake pool' : 'connection cap'} full, closed for a newer connection`);
    victim.close('handshake slot taken by a newer connection');
    return true;
  }

  /** The queue no longer holds a handshake slot (it connected, closed, or was evicted). */
  private leaveHandshake(queue: NvmfQueuePair): void {
    const slot = this.handshaking.get(queue);
    if (slot === undefined) return;
    clearTimeout(slot.deadline);
    this.handshaking.delete(queue);
  }

  /**
   * Strangers can end any number of handshakes, so these are logged at warn as counts, at most one
   * line per nvmfHandshakeEndsLogIntervalMs, with the latest reason; the totals stay in handshakeFigures().
   */
  private noteHandshakeEnded(kind: keyof NvmfHandshakeEnds, reason: string): void {
    this.handshakeEndsTotal[kind]++;
    this.handshakeEndsUnlogged[kind]++;
    const nowMs = Date.now();
    if (nowMs - this.handshakeEndsLoggedAtMs < nvmfHandshakeEndsLogIntervalMs) return;
    log('warn', 'nvmf connections ended before Connect (counts since the last such line)', { ...this.handshakeEndsUnlogged, latest: reason });
    this.handshakeEndsUnlogged = noHandshakeEnds();
    this.handshakeEndsLoggedAtMs = nowMs;
  }

  /** Closes every port and connection. */
  async shutdown(): Promise<void> {
    for (const key of [...this.ports.keys()]) {
      const [traddr, trsvcid] = [key.slice(0, key.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1'), key.slice(key.lastIndexOf(':') + 1)];
      await this.close({ trtype: 'TCP', adrfam: traddr.includes(':') ? 'IPv6' : 'IPv4', traddr, trsvcid });
    }
  }
}
