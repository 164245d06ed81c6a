// The NVMe/TCP transport: listening ports (opened and closed by the target state in
// src/actors/nvmfTarget.ts as listeners are added and removed) and the connections accepted on them.
import { type Server, type Socket, createServer } from 'node:net';
import { type NvmfListenAddress, type NvmfPorts, type NvmfTarget, listenAddressKey } from '../../actors/nvmfTarget.ts';
import { mibBytes, nvmfConnectionsMax, nvmfPayloadBytesInFlightNodeMax, nvmfPayloadBytesInFlightPerQueueMax } from '../../constants.ts';
import { fail } from '../../errors.ts';
import { log } from '../../log.ts';
import { ByteBudget } from '../byteBudget.ts';
import { BufferPool } from '../nbd/bufferPool.ts';
import { NvmfQueuePair, c2hHeadroomBytes } from './queuePair.ts';

interface Port {
  readonly server: Server;
  readonly connections: Set<NvmfQueuePair>;
}

export class NvmfTcpTransport implements NvmfPorts {
  private readonly ports = new Map<string, Port>();
  private readonly nodeBudget = new ByteBudget(nvmfPayloadBytesInFlightNodeMax);
  // Idle payload buffers kept for reuse: a few queues' worth of 128 KiB transfers.
  private readonly buffers = new BufferPool(64 * mibBytes, c2hHeadroomBytes, 512);
  private connectionCount = 0;
  private nextId = 1;
  private closedInFlightPeak = 0;

  constructor(
    private readonly target: NvmfTarget,
    private readonly noteForeground: () => void = () => {},
  ) {
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

  /** Payload bytes reserved now and at most (stats, tests). */
  payloadFigures(): { inUseBytes: number; peakBytes: number } {
    return { inUseBytes: this.nodeBudget.inUseBytes, peakBytes: this.nodeBudget.peakBytes };
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
      server.listen({ host: address.traddr, port, exclusive: true, backlog: 511 }, () => resolve());
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
    if (this.connectionCount >= nvmfConnectionsMax) {
      socket.destroy();
      return;
    }
    this.connectionCount++;
    const queue = new NvmfQueuePair(
      this.nextId++,
      socket,
      { target: this.target, listenKey, nodeBudget: this.nodeBudget, buffers: this.buffers, noteForeground: this.noteForeground },
      new ByteBudget(nvmfPayloadBytesInFlightPerQueueMax),
      (closed) => {
        this.connectionCount--;
        this.closedInFlightPeak = Math.max(this.closedInFlightPeak, closed.inFlightPeak);
        port.connections.delete(closed);
      },
    );
    port.connections.add(queue);
  }

  /** Closes every port and connection. */
  async shutdown(): Promise<void> {
    for (const key of [...this.ports.keys()]) {
      const [traddr, trsvcid] = [key.slice(0, key.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1'), key.slice(key.lastIndexOf(':') + 1)];
      await this.close({ trtype: 'TCP', adrfam: traddr.includes(':') ? 'IPv6' : 'IPv4', traddr, trsvcid });
    }
  }
}
