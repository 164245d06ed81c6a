// The NBD listener (SPEC §7): a TCP or Unix socket whose connections speak NBD to the node's exports.
//
// Who may connect: a Unix socket is mode 0600 (the node's user only, as SPDK's RPC socket); a TCP
// listener forces TLS-PSK (NBD_OPT_STARTTLS) unless it was explicitly opened to a trusted network
// (insecureTcp). Connection slots cannot be hoarded: a handshake gets nbdHandshakeTimeoutMs, and
// when nbdHandshakingConnectionsMax connections are still in the handshake, a new one first drops
// one that got least far, longest idle first (see makeRoom).
import { chmodSync } from 'node:fs';
import { lstat, unlink } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import {
  mibBytes,
  nbdConnectionsMax,
  nbdDropLogIntervalMs,
  nbdHandshakingConnectionsMax,
  nbdListenBacklog,
  nbdPayloadBytesInFlightNodeMax,
  unixSocketPathBytesMax,
} from '../../constants.ts';
import { log } from '../../log.ts';
import type { NbdExports } from '../../actors/nbdExports.ts';
import { ByteBudget } from '../byteBudget.ts';
import { BufferPool } from './bufferPool.ts';
import { type HandshakeEnd, NbdConnection, handshakeProgress, replyHeadroomBytes } from './connection.ts';
import { type NbdTls, readPskKeyFile } from './tlsPsk.ts';

export type NbdAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number } | { readonly kind: 'unix'; readonly path: string };

/** `HOST:PORT` (IPv6 in brackets), or a Unix socket path (anything with a `/` and no port). */
export function parseNbdListen(text: string): NbdAddress {
  const match = /^(\[[^\]]+\]|[^:/]+):(\d{1,5})$/.exec(text);
  if (match) {
    const port = Number(match[2]);
    if (port > 65_535) throw new Error(`--nbd-listen: port ${port} is out of range`);
    return { kind: 'tcp', host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port };
  }
  if (text.includes('/')) {
    const path = resolvePath(text);
    if (Buffer.byteLength(path) > unixSocketPathBytesMax) throw new Error(`--nbd-listen: socket path ${path} is longer than ${unixSocketPathBytesMax} bytes (a Unix socket's limit)`);
    return { kind: 'unix', path };
  }
  throw new Error(`--nbd-listen wants HOST:PORT or a Unix socket path, got ${text}`);
}

/** How many connections a listener keeps (tests make them small). */
export interface NbdServerLimits {
  /** Connections serving an export; at this many, a newcomer is refused. */
  readonly connectionsMax: number;
  /** Connections in the handshake; at this many, a newcomer first drops one (see makeRoom). */
  readonly handshakingConnectionsMax: number;
  /** Connections the kernel queues for accepting: the most one event-loop turn accepts. */
  readonly listenBacklog: number;
}

const defaultLimits: NbdServerLimits = {
  connectionsMax: nbdConnectionsMax,
  handshakingConnectionsMax: nbdHandshakingConnectionsMax,
  listenBacklog: nbdListenBacklog,
};

/** Where and how the node listens for NBD: the address, and TLS or the explicit lack of it. */
export interface NbdListenerConfig {
  readonly address: NbdAddress;
  readonly tls: NbdTls | undefined;
  readonly insecureTcp: boolean;
}

/**
 * The listener the flags ask for, refused (before anything is created) when it would be open to
 * more than they say: TCP needs a TLS-PSK key file, or --nbd-insecure-tcp for a trusted network.
 */
export async function resolveNbdListener(options: {
  listen: string | undefined;
  tlsPskFile?: string | undefined;
  insecureTcp?: boolean | undefined;
}): Promise<NbdListenerConfig | undefined> {
  const insecureTcp = options.insecureTcp === true;
  if (options.listen === undefined) {
    if (insecureTcp || options.tlsPskFile !== undefined) throw new Error('--nbd-tls-psk and --nbd-insecure-tcp need --nbd-listen');
    return undefined;
  }
  const address = parseNbdListen(options.listen);
  if (insecureTcp && options.tlsPskFile !== undefined) throw new Error('--nbd-insecure-tcp and --nbd-tls-psk contradict each other: give one');
  if (insecureTcp && address.kind !== 'tcp') throw new Error('--nbd-insecure-tcp is for a TCP --nbd-listen (a Unix socket is mode 0600 anyway)');
  if (address.kind === 'tcp' && !insecureTcp && options.tlsPskFile === undefined) {
    throw new Error(
      `--nbd-listen ${options.listen} is TCP, which every local user (and every host that can reach it) can connect to: ` +
        'give --nbd-tls-psk FILE (TLS-PSK keys, "identity:hexkey" lines as psktool writes), ' +
        'use a Unix socket (--nbd-listen without a value), or, on a trusted network only, --nbd-insecure-tcp',
    );
  }
  const tls = options.tlsPskFile === undefined ? undefined : await readPskKeyFile(resolvePath(options.tlsPskFile));
  return { address, tls, insecureTcp };
}

/** How a listener is reached, for the start-up line: the address and who may connect. */
export function describeNbdListener(config: { address: NbdAddress; tls: NbdTls | undefined }): string {
  const where = formatNbdAddress(config.address);
  if (config.tls) return `${where} (TLS-PSK required, keys from ${config.tls.keyFile})`;
  if (config.address.kind === 'unix') return `${where} (mode 0600: this user only; nbd+unix:///EXPORT?socket=${config.address.path})`;
  return `${where} (no TLS: anyone who can reach it reads and writes every export)`;
}

export function formatNbdAddress(address: NbdAddress): string {
  if (address.kind === 'unix') return address.path;
  return `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}

/** An NBD URI for an export, as qemu and libnbd take it (`nbds` when TLS is used). */
export function nbdUri(address: NbdAddress, exportName: string, options: { tls?: boolean } = {}): string {
  const name = encodeURI(exportName);
  const scheme = options.tls ? 'nbds' : 'nbd';
  if (address.kind === 'unix') return `${scheme}+unix:///${name}?socket=${encodeURIComponent(address.path)}`;
  return `${scheme}://${formatNbdAddress(address)}/${name}`;
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

/**
 * Listens on a Unix socket that only this user can connect to. The socket file is created with
 * mode 0600 (umask 0177 around the synchronous bind), so there is no moment when others could
 * connect; where the umask cannot be changed (a worker thread) it is chmod-ed right after the bind,
 * before any connection is accepted.
 */
function listenPrivately(server: Server, path: string, backlog: number, onListening: () => void): void {
  const options = { path, exclusive: true, backlog };
  if (isMainThread) {
    const previous = process.umask(0o177);
    try {
      server.listen(options, onListening);
    } finally {
      process.umask(previous);
    }
  } else {
    server.listen(options, onListening);
  }
  // A failed bind (reported as the server's 'error' event) created nothing to chmod.
  if (server.listening) chmodSync(path, 0o600);
}

function emptyHandshakeEnds(): Record<HandshakeEnd | 'refused', number> & { latest: string } {
  return { timeout: 0, tlsFailed: 0, dropped: 0, invalid: 0, refused: 0, latest: '' };
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
  /** Connections that ended in the handshake, or were refused, since the last line about them. */
  private handshakeEnds = emptyHandshakeEnds();
  private handshakeEndsLoggedAtMs = Number.NEGATIVE_INFINITY;

  private constructor(
    private readonly server: Server,
    readonly address: NbdAddress,
    private readonly exports: NbdExports,
    readonly tls: NbdTls | undefined,
    private readonly limits: NbdServerLimits,
  ) {}

  /**
   * Listens on `address` (port 0 picks a free port) and serves `exports`. TCP needs `tls` (forced
   * on every connection) or `insecureTcp: true`, said explicitly; a Unix socket is made mode 0600.
   */
  static async listen(options: {
    address: NbdAddress;
    exports: NbdExports;
    noteForeground: () => void;
    tls?: NbdTls | undefined;
    insecureTcp?: boolean;
    limits?: Partial<NbdServerLimits>;
  }): Promise<NbdServer> {
    if (options.address.kind === 'tcp' && options.tls === undefined && options.insecureTcp !== true) {
      throw new Error(`NBD over TCP (${formatNbdAddress(options.address)}) needs TLS-PSK or an explicit insecureTcp`);
    }
    // Accepted paused: the connection installs its read buffer before the first read. No
    // maxConnections: Node would refuse the newest connection, where accept() drops a stale one.
    const server = createServer({ noDelay: true, allowHalfOpen: false, pauseOnConnect: true });
    const limits = { ...defaultLimits, ...options.limits };
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
      if (options.address.kind === 'tcp') {
        server.listen({ host: options.address.host, port: options.address.port, exclusive: true, backlog: limits.listenBacklog }, onListening);
      } else {
        listenPrivately(server, options.address.path, limits.listenBacklog, onListening);
      }
    });
    const nbd = new NbdServer(server, bound, options.exports, options.tls, limits);
    server.on('connection', (socket) => nbd.accept(socket, options.noteForeground));
    server.on('error', (error) => log('error', 'nbd listener error', { error: error.message }));
    options.exports.setListening(formatNbdAddress(bound));
    log('info', 'nbd listening', { address: describeNbdListener({ address: bound, tls: options.tls }) });
    if (bound.kind === 'tcp' && options.tls === undefined) {
      // Said at every start, as long as the flag stays.
      log('warn', 'NBD over TCP without TLS (--nbd-insecure-tcp): anyone who can reach this address reads and writes every export', {
        address: formatNbdAddress(bound),
      });
    }
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

  /** Connections now, by how far their handshake got (tests, stats). */
  connectionsByProgress(): Record<keyof typeof handshakeProgress, number> {
    const counts = { preOption: 0, tlsHandshake: 0, negotiating: 0, transmission: 0 };
    const names = Object.keys(handshakeProgress) as Array<keyof typeof handshakeProgress>;
    for (const connection of this.connections) counts[names[connection.progress]!]++;
    return counts;
  }

  private accept(socket: Socket, noteForeground: () => void): void {
    if (this.closing || !this.makeRoom()) {
      socket.destroy();
      return;
    }
    const connection = new NbdConnection(
      this.nextConnectionId++,
      socket,
      {
        exports: this.exports,
        nodeBudget: this.nodeBudget,
        replyBuffers: this.replyBuffers,
        noteForeground,
        shuttingDown: () => this.closing,
        tls: this.tls,
        noteHandshakeEnded: (kind, reason) => this.noteHandshakeEnded(kind, reason),
      },
      (closed) => {
        this.connections.delete(closed);
        this.closedConnectionPeakBytes = Math.max(this.closedConnectionPeakBytes, closed.payloadPeakBytes);
      },
    );
    this.connections.add(connection);
  }

  /**
   * Makes room for one more connection; false when there is none. A newcomer is refused while
   * `connectionsMax` connections serve exports. While fewer than `handshakingConnectionsMax` are in
   * the handshake it simply joins them; at that many it first drops one of the lowest stage (no
   * option yet, or no STARTTLS yet on a TLS listener; then mid-TLS; then negotiating) and of those
   * the one idle longest (its handshake moved on least recently). A flood of connections that
   * never finish thus displaces itself, oldest first, while a client that does finish moves past
   * it within a few round trips. Clients that proved their key (TLS up) are never dropped for a
   * newcomer; with none to drop, the newcomer is refused.
   */
  private makeRoom(): boolean {
    const { connectionsMax, handshakingConnectionsMax } = this.limits;
    // Only near a limit is there anything to count.
    if (this.connections.size < Math.min(connectionsMax, handshakingConnectionsMax)) return true;
    let serving = 0;
    let handshaking = 0;
    let victim: NbdConnection | undefined;
    for (const connection of this.connections) {
      if (connection.inTransmission) {
        serving++;
        continue;
      }
      handshaking++;
      // Over TLS the client holds a key: it is not a stranger's to displace.
      if (this.tls !== undefined && connection.authenticated) continue;
      if (victim === undefined || connection.progress < victim.progress || (connection.progress === victim.progress && connection.lastProgressOrder < victim.lastProgressOrder)) {
        victim = connection;
      }
    }
    if (serving >= connectionsMax) {
      this.noteHandshakeEnded('refused', `${serving} connections serve exports`);
      return false;
    }
    if (handshaking < handshakingConnectionsMax) return true;
    if (victim === undefined) {
      this.noteHandshakeEnded('refused', `${handshaking} connections in the handshake, none to drop`);
      return false;
    }
    victim.dropForNewcomer();
    // Its close event comes later: from now on it does not count.
    this.connections.delete(victim);
    return true;
  }

  /**
   * Strangers can end any number of handshakes (time out, fail TLS, get dropped or refused), so
   * these are logged as counts, at most one line per nbdDropLogIntervalMs, with the latest reason.
   */
  private noteHandshakeEnded(kind: HandshakeEnd | 'refused', reason: string): void {
    this.handshakeEnds[kind]++;
    this.handshakeEnds.latest = reason;
    const nowMs = Date.now();
    if (nowMs - this.handshakeEndsLoggedAtMs < nbdDropLogIntervalMs) return;
    const { latest, ...counts } = this.handshakeEnds;
    log('warn', 'nbd connections ended before serving an export (counts since the last such line)', { ...counts, latest });
    this.handshakeEnds = emptyHandshakeEnds();
    this.handshakeEndsLoggedAtMs = nowMs;
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
