// The WebSocket JSON-RPC server (SPEC §3.1): auth, limits, heartbeat, and one Connection per socket.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { STATUS_CODES, createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BlockList } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import type { RawData } from 'ws';
import {
  authChallengeCharsMax,
  authChallengeCharsMin,
  clientBufferedBytesMax,
  heartbeatIntervalMs,
  rpcCloseGraceMs,
  rpcConnectionsMax,
  rpcFrameBytesInFlightNodeMax,
  rpcFrameBytesInFlightPerConnectionMax,
  rpcFrameBytesMax,
  rpcInFlightPerConnectionMax,
  replySliceMs,
} from '../constants.ts';
import { ByteBudget } from './byteBudget.ts';
import { rpcError, toRpcError } from './errorMapping.ts';
import { parseJson, stringifyJson } from './json64.ts';
import { errorResponse, serializeResponse, serializeResponseChunks } from './jsonRpc.ts';
import type { Dispatcher } from './jsonRpc.ts';
import type { Connection } from './methodTable.ts';

export interface RpcServerLimits {
  frameBytesMax: number;
  connectionsMax: number;
  inFlightPerConnectionMax: number;
  /** Bytes of received frames held until their replies are written, per connection and node-wide. */
  frameBytesInFlightPerConnectionMax: number;
  frameBytesInFlightNodeMax: number;
  heartbeatIntervalMs: number;
  /** How long sending a reply in pieces may hold the event loop before the next turn. */
  replySliceMs: number;
}

/** One structured log record; written to stderr as a JSON line unless a `log` option is given. */
export type LogRecord = { level: 'info' | 'warn' | 'error'; msg: string } & Record<string, unknown>;

export interface RpcServerOptions {
  host: string;
  port: number;
  /** Every upgrade must present it (Authorization: Bearer, or ?token=). Required unless `insecureNoAuth`. */
  token?: string;
  /** No credential at all: loopback only, and only when asked for by name (--insecure-no-auth). */
  insecureNoAuth?: boolean;
  dispatcher: Dispatcher;
  /** Plain HTTP requests (e.g. the dashboard at /); returns true when it answered the request. */
  httpHandler?: (req: IncomingMessage, res: ServerResponse) => boolean;
  limits?: Partial<RpcServerLimits>;
  log?: (record: LogRecord) => void;
}

export interface RpcServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
  connectionCount(): number;
}


// WebSocket close codes (RFC 6455 §7.4.1).
const closeGoingAway = 1001;
const closeUnsupportedData = 1003;

const loopbackAddresses = new BlockList();
loopbackAddresses.addSubnet('127.0.0.0', 8, 'ipv4');
loopbackAddresses.addAddress('::1', 'ipv6');

function writeLogLine(record: LogRecord): void {
  process.stderr.write(`${JSON.stringify(record)}\n`);
}

/** True for `localhost` and loopback IP literals (with or without IPv6 brackets). */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost') return true;
  if (loopbackAddresses.check(bare, 'ipv4')) return true;
  return bare.includes(':') && loopbackAddresses.check(bare, 'ipv6');
}

/**
 * Listens on `host:port` and serves JSON-RPC over WebSocket. A credential is required unless
 * `insecureNoAuth` says otherwise, and that is refused (throws) on a non-loopback address: anyone
 * who can connect can run any RPC, and the node runs as root.
 */
export async function startRpcServer(options: RpcServerOptions): Promise<RpcServer> {
  if (options.token && options.insecureNoAuth) throw new Error('a token and --insecure-no-auth contradict each other; give one');
  if (!options.token && !options.insecureNoAuth) throw new Error('the RPC server needs a token (or, on loopback only, --insecure-no-auth)');
  if (!options.token && !isLoopbackHost(options.host)) {
    throw new Error(`refusing to listen on non-loopback address ${options.host} without a token (--token or LVNODE_TOKEN)`);
  }
  const limits: RpcServerLimits = {
    frameBytesMax: rpcFrameBytesMax,
    connectionsMax: rpcConnectionsMax,
    inFlightPerConnectionMax: rpcInFlightPerConnectionMax,
    frameBytesInFlightPerConnectionMax: rpcFrameBytesInFlightPerConnectionMax,
    frameBytesInFlightNodeMax: rpcFrameBytesInFlightNodeMax,
    heartbeatIntervalMs,
    replySliceMs,
    ...options.limits,
  };
  const log = options.log ?? writeLogLine;
  const server = createServer((req, res) => answerPlainHttp(req, res, options.httpHandler, log));
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: limits.frameBytesMax,
    perMessageDeflate: false,
    clientTracking: true,
  });
  wss.on('error', (error) => log({ level: 'error', msg: 'websocket server error', error: errorText(error) }));
  const state: ServerState = {
    options,
    limits,
    log,
    wss,
    connections: new Set(),
    nextConnectionId: 1,
    closing: false,
    frameBudget: new ByteBudget(limits.frameBytesInFlightNodeMax),
  };
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => onUpgrade(state, req, socket, head));

  await listen(server, options.host, options.port);
  server.on('error', (error) => log({ level: 'error', msg: 'http server error', error: errorText(error) }));
  const heartbeat = setInterval(() => {
    for (const connection of state.connections) connection.heartbeat();
  }, limits.heartbeatIntervalMs);
  heartbeat.unref();

  const address = server.address() as AddressInfo;
  let closed: Promise<void> | undefined;
  return {
    address: { host: address.address, port: address.port },
    connectionCount: () => state.connections.size,
    close: () => {
      clearInterval(heartbeat);
      state.closing = true;
      closed ??= shutDown(server, wss, state.connections);
      return closed;
    },
  };
}

interface ServerState {
  readonly options: RpcServerOptions;
  readonly limits: RpcServerLimits;
  readonly log: (record: LogRecord) => void;
  readonly wss: WebSocketServer;
  readonly connections: Set<RpcConnection>;
  nextConnectionId: number;
  closing: boolean;
  /** Frame bytes held by every connection together. */
  readonly frameBudget: ByteBudget;
}

/** Checks an upgrade request and either refuses it with an HTTP status or opens a connection. */
function onUpgrade(state: ServerState, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const { options, limits, log, connections } = state;
  try {
    // Errors on a socket that is refused, or not yet handed to ws, must not crash the node.
    socket.on('error', () => socket.destroy());
    const refusal = state.closing
      ? { status: 503, reason: 'server shutting down' }
      : upgradeRefusal(req, options.token, connections.size, limits.connectionsMax);
    if (refusal !== undefined) {
      log({ level: 'warn', msg: 'ws upgrade refused', status: refusal.status, reason: refusal.reason, remote: remoteOf(req) });
      refuseUpgrade(socket, refusal);
      return;
    }
    // Without verifyClient, ws completes (or aborts) the handshake synchronously, so the
    // connection count checked above cannot be overtaken by a concurrent upgrade.
    state.wss.handleUpgrade(req, socket, head, (ws) => {
      const connection = new RpcConnection(ws, state.nextConnectionId++, options.dispatcher, limits, state.frameBudget, log);
      connections.add(connection);
      void connection.closed.then(() => connections.delete(connection));
      log({ level: 'info', msg: 'ws connection opened', connection: connection.id, remote: remoteOf(req) });
    });
  } catch (error) {
    log({ level: 'error', msg: 'ws upgrade failed', error: errorText(error) });
    socket.destroy();
  }
}

function listen(server: ReturnType<typeof createServer>, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Closes every connection (cutting those that do not finish the handshake in time), then the listener. */
async function shutDown(
  server: ReturnType<typeof createServer>,
  wss: WebSocketServer,
  connections: Set<RpcConnection>,
): Promise<void> {
  const closed = Promise.all([...connections].map((connection) => connection.closed));
  for (const connection of connections) connection.close(closeGoingAway, 'server shutting down');
  let graceTimer: NodeJS.Timeout | undefined;
  const grace = new Promise<void>((resolve) => {
    graceTimer = setTimeout(resolve, rpcCloseGraceMs);
  });
  await Promise.race([closed, grace]);
  clearTimeout(graceTimer);
  for (const connection of connections) connection.terminate();
  await closed;
  await new Promise<void>((resolve) => wss.close(() => resolve()));
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections(); // idle keep-alive HTTP connections would hold close() open
  });
}

function answerPlainHttp(
  req: IncomingMessage,
  res: ServerResponse,
  httpHandler: RpcServerOptions['httpHandler'],
  log: (record: LogRecord) => void,
): void {
  try {
    if (httpHandler?.(req, res)) return;
    const body = 'lvnode serves JSON-RPC 2.0 over WebSocket\n';
    res.writeHead(426, { 'Content-Type': 'text/plain; charset=utf-8', Upgrade: 'websocket', Connection: 'close' });
    res.end(body);
  } catch (error) {
    log({ level: 'error', msg: 'http handler failed', url: withoutQuery(req.url), error: errorText(error) });
    if (!res.headersSent) res.writeHead(500);
    res.end();
  }
}

// ---------------------------------------------------------------------------------------------
// Upgrade checks.

interface Refusal {
  status: number;
  reason: string;
  /** Extra response headers (the token proof of a 401). */
  headers?: Record<string, string>;
}

function upgradeRefusal(
  req: IncomingMessage,
  token: string | undefined,
  connectionCount: number,
  connectionsMax: number,
): Refusal | undefined {
  if (token) {
    if (!presentsToken(req, token)) return { status: 401, reason: 'missing or wrong token', headers: proofHeaders(req, token) };
  } else {
    const problem = browserOriginProblem(req);
    if (problem !== undefined) return { status: 403, reason: problem };
  }
  if (connectionCount >= connectionsMax) return { status: 503, reason: `${connectionsMax} connections open` };
  return undefined;
}

function presentsToken(req: IncomingMessage, token: string): boolean {
  const candidates: string[] = [];
  const bearer = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
  if (bearer?.[1] !== undefined) candidates.push(bearer[1]);
  const queryToken = requestUrl(req)?.searchParams.get('token');
  if (queryToken) candidates.push(queryToken);
  // Every candidate is compared, so the time taken does not tell which one was close.
  return candidates.map((candidate) => secretsEqual(candidate, token)).includes(true);
}

/**
 * Constant-time comparison. timingSafeEqual wants equal lengths, and comparing the tokens' own
 * bytes would make the length of the expected one show in the time taken (or an early return):
 * their SHA-256 digests are always 32 bytes.
 */
export function secretsEqual(presented: string, expected: string): boolean {
  const presentedDigest = createHash('sha256').update(presented).digest();
  const expectedDigest = createHash('sha256').update(expected).digest();
  return timingSafeEqual(presentedDigest, expectedDigest);
}

/** The header a client sends, without a token, to ask the node to prove it knows the token. */
export const tokenChallengeHeader = 'lvnode-token-challenge';
/** The 401's answer to it: `tokenProof(token, challenge, address, port)` in base64url. */
export const tokenProofHeader = 'lvnode-token-proof';

/**
 * What a node that knows `token` answers to `challenge` when reached at `address:port` (its own
 * side of the connection). A client that found the token in the data directory checks this
 * before it sends the token: a process squatting the port (the node is down, or the URL names
 * another port) cannot compute it, and relaying the challenge to the real node gives the real
 * node's address and port, not the one the client reached.
 */
export function tokenProof(token: string, challenge: string, address: string, port: number): string {
  return createHmac('sha256', token).update(`lvnode token proof v1\n${challenge}\n${canonicalAddress(address)}\n${port}`).digest('base64url');
}

/** An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d on one side and a.b.c.d on the other. */
function canonicalAddress(address: string): string {
  const lower = address.toLowerCase();
  return lower.startsWith('::ffff:') && lower.includes('.') ? lower.slice('::ffff:'.length) : lower;
}

const challengePattern = new RegExp(`^[A-Za-z0-9_-]{${authChallengeCharsMin},${authChallengeCharsMax}}$`);

function proofHeaders(req: IncomingMessage, token: string): Record<string, string> | undefined {
  const challenge = req.headers[tokenChallengeHeader];
  const { localAddress, localPort } = req.socket;
  if (typeof challenge !== 'string' || !challengePattern.test(challenge)) return undefined;
  if (localAddress === undefined || localPort === undefined) return undefined;
  return { [tokenProofHeader]: tokenProof(token, challenge, localAddress, localPort) };
}

/**
 * Without a token only local processes may connect, but a web page in a local browser could
 * still open a WebSocket here (browsers do not apply CORS to WebSockets). A browser always sends
 * Origin: it must be this server's own origin (e.g. the dashboard), reached by a loopback name —
 * the latter defeats DNS rebinding, where a foreign name is made to resolve to 127.0.0.1.
 */
function browserOriginProblem(req: IncomingMessage): string | undefined {
  const origin = req.headers.origin;
  if (origin === undefined) return undefined;
  let originUrl: URL;
  try {
    originUrl = new URL(origin);
  } catch {
    return 'malformed Origin header';
  }
  if (originUrl.host !== req.headers.host) return `cross-origin request from ${origin}`;
  if (!isLoopbackHost(originUrl.hostname)) return `origin ${origin} is not a loopback name`;
  return undefined;
}

function requestUrl(req: IncomingMessage): URL | undefined {
  try {
    return new URL(req.url ?? '/', 'http://localhost');
  } catch {
    return undefined;
  }
}

/** Answers a refused upgrade with a bare HTTP status and closes the socket (as ws does). */
function refuseUpgrade(socket: Duplex, refusal: Refusal): void {
  if (socket.destroyed) return;
  const text = STATUS_CODES[refusal.status] ?? 'Error';
  const headers = { ...(refusal.status === 401 ? { 'WWW-Authenticate': 'Bearer' } : {}), ...refusal.headers };
  const headerLines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${refusal.status} ${text}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `Content-Length: ${Buffer.byteLength(text)}\r\n${headerLines}\r\n${text}`,
  );
}

/** A request's path for a log line: the query is cut, as it may carry `?token=`. */
function withoutQuery(url: string | undefined): string {
  return (url ?? '').split('?', 1)[0]!;
}

function remoteOf(req: IncomingMessage): string {
  const { remoteAddress, remotePort } = req.socket;
  return `${remoteAddress ?? '?'}:${remotePort ?? '?'}`;
}

function errorText(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

function rawDataBytes(data: RawData): number {
  if (Array.isArray(data)) return data.reduce((sum, part) => sum + part.length, 0);
  return data.byteLength;
}

function rawDataToText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8'); // the case for binaryType 'nodebuffer'
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

// ---------------------------------------------------------------------------------------------
// One client connection.

/**
 * A WebSocket client as handlers see it. Requests run concurrently and are answered as they
 * finish. A request holds its in-flight slot until its reply has been written to the socket, so
 * a client that stops reading runs into the in-flight limit instead of growing our send buffer.
 */
class RpcConnection implements Connection {
  readonly id: number;
  /** Resolves once the socket has closed and the cleanups have run. */
  readonly closed: Promise<void>;
  private readonly ws: WebSocket;
  private readonly dispatcher: Dispatcher;
  private readonly inFlightMax: number;
  private readonly log: (record: LogRecord) => void;
  private readonly cleanups: Array<() => void> = [];
  private inFlight = 0;
  private isClosed = false;
  private ponged = true;
  /** Frames received and not yet admitted by the byte budgets, in arrival order. */
  private readonly frames: Array<{ data: RawData; isBinary: boolean; bytes: number }> = [];
  private readonly replySliceMs: number;
  private waitingForBudget = false;
  private readonly frameBudget: ByteBudget;

  constructor(
    ws: WebSocket,
    id: number,
    dispatcher: Dispatcher,
    limits: RpcServerLimits,
    private readonly nodeFrameBudget: ByteBudget,
    log: (record: LogRecord) => void,
  ) {
    this.frameBudget = new ByteBudget(limits.frameBytesInFlightPerConnectionMax);
    this.ws = ws;
    this.id = id;
    this.dispatcher = dispatcher;
    this.inFlightMax = limits.inFlightPerConnectionMax;
    this.replySliceMs = limits.replySliceMs;
    this.log = log;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.onSocketClose(code, reason.toString('utf8'));
        resolve();
      });
    });
    ws.on('message', (data, isBinary) => {
      this.frames.push({ data, isBinary, bytes: rawDataBytes(data) });
      this.admitFrames();
    });
    ws.on('pong', () => {
      this.ponged = true;
    });
    // ws reports protocol errors (oversized frame: 1009, bad UTF-8: 1007) here, then closes.
    ws.on('error', (error) => this.log({ level: 'warn', msg: 'ws connection error', connection: id, error: error.message }));
  }

  notify(method: string, params: unknown): boolean {
    if (this.ws.readyState !== WebSocket.OPEN || this.ws.bufferedAmount > clientBufferedBytesMax) return false;
    let text: string;
    try {
      text = stringifyJson({ jsonrpc: '2.0', method, params });
    } catch (error) {
      toRpcError(error, method); // logs the bug; the subscriber just misses this event
      return false;
    }
    this.send(text);
    return true;
  }

  onClose(cleanup: () => void): void {
    // A handler may subscribe after its client left; clean up at once rather than leak.
    if (this.isClosed) this.runCleanup(cleanup);
    else this.cleanups.push(cleanup);
  }

  /** Called every heartbeat interval: cuts a client that did not answer the previous ping. */
  heartbeat(): void {
    if (!this.ponged) {
      this.log({ level: 'warn', msg: 'ws connection missed a pong', connection: this.id });
      this.ws.terminate();
      return;
    }
    this.ponged = false;
    try {
      this.ws.ping();
    } catch {
      // The socket is closing; the close event finishes the job.
    }
  }

  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }

  terminate(): void {
    this.ws.terminate();
  }

  /**
   * Hands frames to onMessage in order, each once its bytes fit the connection's and the node's
   * frame budgets. When one does not fit, the socket is paused (TCP backpressure reaches the
   * client) until earlier requests of this or other connections finish.
   */
  private admitFrames(): void {
    while (!this.waitingForBudget && this.frames.length > 0) {
      const frame = this.frames[0]!;
      const releaseConnection = this.frameBudget.tryReserve(frame.bytes);
      const releaseNode = releaseConnection && this.nodeFrameBudget.tryReserve(frame.bytes);
      if (releaseConnection && releaseNode) {
        this.frames.shift();
        this.onMessage(frame.data, frame.isBinary, () => {
          releaseNode();
          releaseConnection();
        });
        continue;
      }
      releaseConnection?.();
      this.waitingForBudget = true;
      this.ws.pause();
      void this.reserveFrame(frame.bytes).then((release) => {
        this.waitingForBudget = false;
        if (this.isClosed) {
          release();
          return;
        }
        this.frames.shift();
        this.onMessage(frame.data, frame.isBinary, release);
        this.ws.resume();
        this.admitFrames();
      });
      return;
    }
  }

  private async reserveFrame(bytes: number): Promise<() => void> {
    const releaseConnection = await this.frameBudget.reserve(bytes);
    const releaseNode = await this.nodeFrameBudget.reserve(bytes);
    return () => {
      releaseNode();
      releaseConnection();
    };
  }

  /** Handles one frame; `release` gives its budgeted bytes back once nothing holds them. */
  private onMessage(data: RawData, isBinary: boolean, release: () => void): void {
    try {
      if (isBinary) {
        release();
        this.ws.close(closeUnsupportedData, 'binary frames are not supported; send JSON text');
        return;
      }
      let message: unknown;
      try {
        message = parseJson(rawDataToText(data));
      } catch {
        release();
        // Unlike SPDK's Unix socket, a frame boundary is a message boundary: the next frame
        // parses independently, so the connection can stay open.
        this.sendUnsolicited(serializeResponse(errorResponse(null, rpcError('parseError'))));
        return;
      }
      this.dispatch(message, release);
    } catch (error) {
      release();
      this.log({ level: 'error', msg: 'ws message handling failed', connection: this.id, error: errorText(error) });
    }
  }

  private dispatch(message: unknown, releaseFrame: () => void): void {
    const count = this.dispatcher.requestCount(message);
    if (this.inFlight + count > this.inFlightMax) {
      releaseFrame();
      const reply = this.dispatcher.reject(message, rpcError('tooManyRequests', { limit: this.inFlightMax }));
      if (reply !== undefined) this.sendUnsolicited(serializeResponse(reply));
      return;
    }
    this.inFlight += count;
    const release = (): void => {
      this.inFlight -= count;
      releaseFrame();
    };
    this.dispatcher
      .handleMessage(message, this)
      .then((reply) => (reply === undefined ? release() : this.sendPieces(serializeResponseChunks(reply), release)))
      .catch((error: unknown) => {
        release();
        this.log({ level: 'error', msg: 'ws dispatch failed', connection: this.id, error: errorText(error) });
      });
  }

  /**
   * Sends a reply that holds no in-flight slot (parse errors, refusals). A client that keeps
   * provoking those without reading them would grow our buffer without bound, so it is cut.
   */
  private cutForNotReading = false;

  private sendUnsolicited(text: string): void {
    if (this.ws.bufferedAmount > clientBufferedBytesMax) {
      // Said once: frames already received keep arriving here until the socket is gone.
      if (!this.cutForNotReading) this.log({ level: 'warn', msg: 'ws client is not reading its replies', connection: this.id });
      this.cutForNotReading = true;
      this.ws.terminate(); // a close frame would only queue behind the unread replies
      return;
    }
    this.send(text);
  }

  // A reply given in pieces (a long listing, written in slices) goes out as one WebSocket message
  // of several frames, with a turn of the event loop between frames so that encoding 100 MB never
  // holds it in one go. No other message may be sent between a message's frames (RFC 6455 §5.4),
  // so sends made meanwhile (other replies, notifications) wait here, in order.
  private fragmenting = false;
  private readonly sendsWaiting: Array<() => void> = [];

  /** Sends one message; never throws. */
  private send(text: string, written?: () => void): void {
    if (this.fragmenting) {
      this.sendsWaiting.push(() => this.send(text, written));
      return;
    }
    this.sendFrame(text, true, written);
  }

  /** Sends `pieces` as the frames of one message, a few milliseconds of them per turn. */
  private sendPieces(pieces: readonly string[], written?: () => void): void {
    if (pieces.length === 1) {
      this.send(pieces[0]!, written);
      return;
    }
    if (this.fragmenting) {
      this.sendsWaiting.push(() => this.sendPieces(pieces, written));
      return;
    }
    this.fragmenting = true;
    let index = 0;
    const sendSome = (): void => {
      // At least one frame per turn, then as many as fit in the slice.
      const startedMs = performance.now();
      do {
        if (index < pieces.length - 1) this.sendFrame(pieces[index++]!, false);
      } while (index < pieces.length - 1 && performance.now() - startedMs < this.replySliceMs);
      if (index < pieces.length - 1 && !this.isClosed) {
        setImmediate(sendSome);
        return;
      }
      this.sendFrame(pieces[pieces.length - 1]!, true, written);
      this.fragmenting = false;
      // In arrival order; one that is itself in pieces queues the ones after it again.
      for (const waiting of this.sendsWaiting.splice(0)) waiting();
    };
    sendSome();
  }

  /** Never throws: sending to a closed socket just reports the failure to `written`. */
  private sendFrame(text: string, fin: boolean, written?: () => void): void {
    try {
      this.ws.send(text, { binary: false, compress: false, fin }, () => written?.());
    } catch {
      written?.(); // only a socket still CONNECTING throws, which a server socket never is
    }
  }

  private onSocketClose(code: number, reason: string): void {
    this.isClosed = true;
    for (const cleanup of this.cleanups.splice(0)) this.runCleanup(cleanup);
    this.log({ level: 'info', msg: 'ws connection closed', connection: this.id, code, reason });
  }

  private runCleanup(cleanup: () => void): void {
    try {
      cleanup();
    } catch (error) {
      this.log({ level: 'error', msg: 'connection cleanup failed', connection: this.id, error: errorText(error) });
    }
  }
}
