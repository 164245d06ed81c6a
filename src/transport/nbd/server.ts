// The NBD listener (SPEC §7): a TCP or Unix socket whose connections speak NBD to the node's exports.
import { chmod, lstat, unlink } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { mibBytes, nbdConnectionsMax, nbdPayloadBytesInFlightNodeMax } from '../../constants.ts';
import { log } from '../../log.ts';
import type { NbdExports } from '../../actors/nbdExports.ts';
import { ByteBudget } from '../byteBudget.ts';
import { BufferPool } from './bufferPool.ts';
import { NbdConnection, replyHeadroomBytes } from './connection.ts';

export type NbdAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number } | { readonly kind: 'unix'; readonly path: string };

/** `HOST:PORT` (IPv6 in brackets), or a Unix socket path (anything with a `/` and no port). */
export function parseNbdListen(text: string): NbdAddress {
  const match = /^(\[[^\]]+\]|[^:/]+):(\d{1,5})$/.exec(text);
  if (match) {
    const port = Number(match[2]);
    if (port > 65_535) throw new Error(`--nbd-listen: port ${port} is out of range`);
    return { kind: 'tcp', host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port };
  }
  if (text.includes('/')) return { kind: 'unix', path: text };
  throw new Error(`--nbd-listen wants HOST:PORT or a Unix socket path, got ${text}`);
}

export function formatNbdAddress(address: NbdAddress): string {
  if (address.kind === 'unix') return address.path;
  return `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}

/** An NBD URI for an export, as qemu and libnbd take it. */
export function nbdUri(address: NbdAddress, exportName: string): string {
  const name = encodeURI(exportName);
  if (address.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(address.path)}`;
  return `nbd://${formatNbdAddress(address)}/${name}`;
}

/**
 * Fails (with nothing created) when the address cannot be listened on: a TCP port in use, or a
 * Unix socket path another process serves or that is not a socket. A stale socket file (nobody
 * accepts on it) is removed, as a restarted server must be able to take its path back.
 */
export async function assertNbdAddressFree(address: NbdAddress): Promise<void> {
  if (address.kind === 'tcp') {
    await new Promise<void>((resolve, reject) => {
      const probe = createServer();
      probe.once('error', (error: NodeJS.ErrnoException) =>
        reject(new Error(`cannot listen for NBD on ${formatNbdAddress(address)}: ${error.code ?? error.message}`)),
      );
      probe.listen({ host: address.host, port: address.port, exclusive: true }, () => probe.close(() => resolve()));
    });
    return;
  }
  const info = await lstat(address.path).catch(() => undefined);
  if (!info) return;
  if (!info.isSocket()) throw new Error(`cannot listen for NBD on ${address.path}: it exists and is not a socket`);
  const served = await new Promise<boolean>((resolve) => {
    const probe = connect(address.path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (served) throw new Error(`cannot listen for NBD on ${address.path}: another process serves it`);
  await unlink(address.path);
}

export class NbdServer {
  private readonly connections = new Set<NbdConnection>();
  private readonly nodeBudget = new ByteBudget(nbdPayloadBytesInFlightNodeMax);
  // Idle READ reply and WRITE payload buffers kept for reuse: enough for 4 connections' 16 running
  // 256 KiB reads, twice.
  private readonly replyBuffers = new BufferPool(32 * mibBytes, replyHeadroomBytes);
  private nextConnectionId = 1;
  private closing = false;
  private closedConnectionPeakBytes = 0;

  private constructor(
    private readonly server: Server,
    readonly address: NbdAddress,
    private readonly exports: NbdExports,
  ) {}

  /** Listens on `address` (port 0 picks a free port) and serves `exports`. */
  static async listen(options: { address: NbdAddress; exports: NbdExports; noteForeground: () => void }): Promise<NbdServer> {
    // Accepted paused: the connection installs its read buffer before the first read.
    const server = createServer({ noDelay: true, allowHalfOpen: false, pauseOnConnect: true });
    server.maxConnections = nbdConnectionsMax;
    const bound = await new Promise<NbdAddress>((resolve, reject) => {
      server.once('error', reject);
      const onListening = () => {
        server.off('error', reject);
        const actual = server.address();
        if (options.address.kind === 'tcp' && actual !== null && typeof actual === 'object') {
          resolve({ kind: 'tcp', host: options.address.host, port: actual.port });
        } else {
          resolve(options.address);
        }
      };
      if (options.address.kind === 'tcp') server.listen({ host: options.address.host, port: options.address.port, exclusive: true }, onListening);
      else server.listen({ path: options.address.path, exclusive: true }, onListening);
    });
    // Only this user may reach the exports through the socket file.
    if (bound.kind === 'unix') await chmod(bound.path, 0o600);
    const nbd = new NbdServer(server, bound, options.exports);
    server.on('connection', (socket) => nbd.accept(socket, options.noteForeground));
    server.on('error', (error) => log('error', 'nbd listener error', { error: error.message }));
    options.exports.setListening(formatNbdAddress(bound));
    log('info', 'nbd listening', { address: formatNbdAddress(bound) });
    return nbd;
  }

  connectionCount(): number {
    return this.connections.size;
  }

  /** Payload bytes reserved now and at most, node-wide and by any one connection (stats, tests). */
  payloadFigures(): { inUseBytes: number; peakBytes: number; connectionPeakBytes: number } {
    let connectionPeakBytes = this.closedConnectionPeakBytes;
    for (const connection of this.connections) connectionPeakBytes = Math.max(connectionPeakBytes, connection.payloadPeakBytes);
    return { inUseBytes: this.nodeBudget.inUseBytes, peakBytes: this.nodeBudget.peakBytes, connectionPeakBytes };
  }

  private accept(socket: Socket, noteForeground: () => void): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const connection = new NbdConnection(
      this.nextConnectionId++,
      socket,
      { exports: this.exports, nodeBudget: this.nodeBudget, replyBuffers: this.replyBuffers, noteForeground, shuttingDown: () => this.closing },
      (closed) => {
        this.connections.delete(closed);
        this.closedConnectionPeakBytes = Math.max(this.closedConnectionPeakBytes, closed.payloadPeakBytes);
      },
    );
    this.connections.add(connection);
  }

  /**
   * Stops listening, stops every export (clients finish their in-flight requests and are
   * disconnected), then cuts connections still in the handshake.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.exports.setListening(undefined);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.exports.stopAll('shutdown');
    for (const connection of this.connections) connection.destroy();
    await closed;
    log('info', 'nbd listener closed', { address: formatNbdAddress(this.address) });
  }
}
