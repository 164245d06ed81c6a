// SPDK's own JSON-RPC transport (SPEC §3.2): a Unix stream socket carrying bare JSON values back
// to back, with no delimiter (SPDK's clients send tab-indented, multi-line JSON), answered by one
// JSON object plus "\n" each, in completion order. The method table and dispatcher are the
// WebSocket server's; only the framing and the error flavor (SPDK's codes) differ.
import { chmod, lstat, realpath, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type Server, type Socket, connect, createServer } from 'node:net';
import {
  clientBufferedBytesMax,
  rpcFrameBytesInFlightNodeMax,
  replySliceMs,
  rpcFrameBytesInFlightPerConnectionMax,
  rpcFrameBytesMax,
  rpcInFlightPerConnectionMax,
} from '../constants.ts';
import { ByteBudget } from './byteBudget.ts';
import { rpcError } from './errorMapping.ts';
import { parseJson } from './json64.ts';
import { type Dispatcher, errorResponse, serializeResponse, serializeResponseChunks } from './jsonRpc.ts';
import type { Connection } from './methodTable.ts';
import type { LogRecord } from './wsServer.ts';

export interface SpdkSocketLimits {
  /** The largest JSON value accepted; a longer one is a parse error (and the connection closes). */
  valueBytesMax: number;
  inFlightPerConnectionMax: number;
  valueBytesInFlightPerConnectionMax: number;
  valueBytesInFlightNodeMax: number;
  /** How long writing a reply in pieces may hold the event loop before the next turn. */
  replySliceMs: number;
}

export interface SpdkSocketServerOptions {
  path: string;
  /** A dispatcher made with `flavor: 'spdk'` (SPDK's error codes, notification rules, no batches). */
  dispatcher: Dispatcher;
  log?: (record: LogRecord) => void;
  limits?: Partial<SpdkSocketLimits>;
}

export interface SpdkSocketServer {
  readonly path: string;
  connectionCount(): number;
  close(): Promise<void>;
}

/**
 * Makes `path` free for a new socket: absent, or a socket nobody answers on (left by a node that
 * died). A live socket (another lvnode, or SPDK itself), anything that is not a socket, and a
 * socket another user made are refused, never removed. The directory must be safe first (see
 * assertSocketDirectorySafe).
 */
export async function claimSocketPath(path: string): Promise<void> {
  await assertSocketDirectorySafe(path);
  let stats;
  try {
    stats = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!stats.isSocket()) throw new Error(`--rpc-socket ${path} exists and is not a socket; refusing to replace it`);
  const uid = process.geteuid?.();
  if (uid !== undefined && stats.uid !== uid) {
    throw new Error(`--rpc-socket ${path} exists and belongs to uid ${stats.uid}, not to this node's user; refusing to talk to it or remove it`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`--rpc-socket ${path} is in use: a running process (another lvnode, or SPDK) answers on it`);
  await unlink(path);
}

/**
 * Whoever can connect to the socket can run any RPC as the node's user (root), so its file is
 * 0600 and owned by that user. That is only worth something if no one else can replace the file:
 * every directory from the socket's up to `/` must belong to root or to the node's user and must
 * not be writable by group or others — except with the sticky bit (/tmp, /var/tmp, where SPDK
 * puts its own spdk.sock), which keeps others from removing or renaming the node's entries. The
 * socket path is always given explicitly (--rpc-socket, LVNODE_RPC_SOCKET), so such a shared
 * sticky directory is the operator's choice; a squatter's file there is refused by the owner
 * check in claimSocketPath. A directory that does not exist yet is left to listen() to report.
 */
export async function assertSocketDirectorySafe(path: string): Promise<void> {
  let directory: string;
  try {
    directory = await realpath(dirname(path));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  const uid = process.geteuid?.();
  for (;;) {
    const info = await stat(directory);
    const mode = (info.mode & 0o7777).toString(8).padStart(4, '0');
    if (uid !== undefined && info.uid !== 0 && info.uid !== uid) {
      throw new Error(`refusing --rpc-socket ${path}: ${directory} belongs to uid ${info.uid}, who could replace the socket; use a directory of root or of the node's user`);
    }
    if ((info.mode & 0o022) !== 0 && (info.mode & 0o1000) === 0) {
      throw new Error(
        `refusing --rpc-socket ${path}: ${directory} is writable by group or others (mode ${mode}) without the sticky bit, so another user could replace the socket; ` +
          'use a directory only the node\'s user can write (the data directory) or a sticky one such as /var/tmp',
      );
    }
    const parent = dirname(directory);
    if (parent === directory) return;
    directory = parent;
  }
}

/**
 * Splits a byte stream into complete top-level JSON values without parsing them: it tracks
 * strings, escapes and bracket depth only. A value must be an object or an array (SPDK's server
 * takes nothing else); anything else at the top level is a parse error.
 */
export class JsonValueSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(private readonly valueBytesMax: number) {}

  /** Complete values in `chunk` (and before it), in order; throws on input that cannot be JSON. */
  push(chunk: Buffer): Buffer[] {
    const values: Buffer[] = [];
    let start = 0;
    for (let index = 0; index < chunk.length; index++) {
      const byte = chunk[index]!;
      if (this.depth === 0 && this.pendingBytes === 0 && index === start) {
        // Between values: whitespace is skipped, a value must open with { or [.
        if (byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d) {
          start = index + 1;
          continue;
        }
        if (byte !== 0x7b && byte !== 0x5b) throw new SyntaxError('a request must be a JSON object');
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (byte === 0x5c) this.escaped = true;
        else if (byte === 0x22) this.inString = false;
        continue;
      }
      if (byte === 0x22) this.inString = true;
      else if (byte === 0x7b || byte === 0x5b) this.depth++;
      else if (byte === 0x7d || byte === 0x5d) {
        this.depth--;
        if (this.depth < 0) throw new SyntaxError('unbalanced brackets');
        if (this.depth === 0) {
          const piece = chunk.subarray(start, index + 1);
          values.push(this.pendingBytes === 0 ? piece : Buffer.concat([...this.pending, piece]));
          this.pending = [];
          this.pendingBytes = 0;
          start = index + 1;
        }
      }
    }
    if (start < chunk.length) {
      this.pending.push(chunk.subarray(start));
      this.pendingBytes += chunk.length - start;
    }
    if (this.pendingBytes > this.valueBytesMax) throw new RangeError(`a request longer than ${this.valueBytesMax} bytes`);
    return values;
  }
}

export async function startSpdkSocketServer(options: SpdkSocketServerOptions): Promise<SpdkSocketServer> {
  const limits: SpdkSocketLimits = {
    valueBytesMax: rpcFrameBytesMax,
    inFlightPerConnectionMax: rpcInFlightPerConnectionMax,
    valueBytesInFlightPerConnectionMax: rpcFrameBytesInFlightPerConnectionMax,
    valueBytesInFlightNodeMax: rpcFrameBytesInFlightNodeMax,
    replySliceMs,
    ...options.limits,
  };
  const log = options.log ?? ((record: LogRecord) => process.stderr.write(`${JSON.stringify(record)}\n`));
  await claimSocketPath(options.path);
  const nodeBudget = new ByteBudget(limits.valueBytesInFlightNodeMax);
  const connections = new Set<SpdkConnection>();
  let nextId = 1;
  // Half-open allowed: a client may send its requests and close its side (`nc -U`, scripts), and
  // still get every reply; the connection is ended once they are all written.
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    const connection = new SpdkConnection(socket, nextId++, options.dispatcher, limits, nodeBudget, log);
    connections.add(connection);
    socket.once('close', () => connections.delete(connection));
  });
  server.on('error', (error) => log({ level: 'error', msg: 'spdk socket server error', error: String(error) }));
  // The socket file is created owner-only: anyone who can connect can run any RPC.
  const previousMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(previousMask);
  }
  await chmod(options.path, 0o600);
  let closed: Promise<void> | undefined;
  return {
    path: options.path,
    connectionCount: () => connections.size,
    close: () => {
      closed ??= (async () => {
        const done = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const connection of connections) connection.destroy();
        await done;
        await unlink(options.path).catch(() => undefined);
      })();
      return closed;
    },
  };
}

/**
 * One client. Values are dispatched as they complete and answered as each finishes (out of
 * order). In-flight requests are bounded by count and bytes; past either bound, and while the
 * client does not read its replies, the socket is paused (backpressure), never buffered.
 */
class SpdkConnection implements Connection {
  private readonly splitter: JsonValueSplitter;
  private readonly budget: ByteBudget;
  private readonly queue: Buffer[] = [];
  private inFlight = 0;
  private waiting = false;
  private isClosed = false;
  /** The client closed its side: end ours once every reply is out. */
  private inputEnded = false;
  private readonly cleanups: Array<() => void> = [];
  /** Replies written while the socket's buffer was full: their slots free on the next drain. */
  private drainWaiters: Array<() => void> = [];

  constructor(
    private readonly socket: Socket,
    readonly id: number,
    private readonly dispatcher: Dispatcher,
    private readonly limits: SpdkSocketLimits,
    private readonly nodeBudget: ByteBudget,
    private readonly log: (record: LogRecord) => void,
  ) {
    this.splitter = new JsonValueSplitter(limits.valueBytesMax);
    this.budget = new ByteBudget(limits.valueBytesInFlightPerConnectionMax);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => {
      this.inputEnded = true;
      this.endIfDone();
    });
    socket.on('drain', () => {
      for (const waiter of this.drainWaiters.splice(0)) waiter();
    });
    socket.on('error', (error) => this.log({ level: 'warn', msg: 'spdk socket connection error', connection: id, error: error.message }));
    socket.once('close', () => {
      this.isClosed = true;
      for (const waiter of this.drainWaiters.splice(0)) waiter();
      for (const cleanup of this.cleanups.splice(0)) {
        try {
          cleanup();
        } catch (error) {
          this.log({ level: 'error', msg: 'connection cleanup failed', connection: id, error: String(error) });
        }
      }
    });
  }

  notify(): boolean {
    // SPDK's socket has no server-initiated messages; subscriptions are a WebSocket feature.
    return false;
  }

  onClose(cleanup: () => void): void {
    if (this.isClosed) cleanup();
    else this.cleanups.push(cleanup);
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let values: Buffer[];
    try {
      values = this.splitter.push(chunk);
    } catch {
      this.failParse();
      return;
    }
    this.queue.push(...values);
    this.admit();
  }

  /** SPDK answers unparseable input with -32700 (id null) and closes the connection. */
  private failParse(): void {
    if (this.isClosed) return;
    this.socket.pause();
    this.socket.end(`${serializeResponse(errorResponse(null, rpcError('parseError')))}\n`);
    this.isClosed = true;
  }

  /** Dispatches queued values while the count and byte budgets allow; else pauses the socket. */
  private admit(): void {
    while (!this.waiting && !this.isClosed && this.queue.length > 0) {
      const value = this.queue[0]!;
      const releaseConnection = this.inFlight < this.limits.inFlightPerConnectionMax ? this.budget.tryReserve(value.length) : undefined;
      const releaseNode = releaseConnection && this.nodeBudget.tryReserve(value.length);
      if (!releaseConnection || !releaseNode) {
        releaseConnection?.();
        this.socket.pause();
        this.waiting = true;
        return;
      }
      this.queue.shift();
      this.dispatch(value, () => {
        releaseNode();
        releaseConnection();
      });
    }
    if (!this.waiting && !this.isClosed && this.socket.isPaused() && this.socket.writableLength <= clientBufferedBytesMax) this.socket.resume();
  }

  /** Something was released: try the queue again. */
  private retry(): void {
    if (this.waiting) {
      this.waiting = false;
      this.admit();
    }
    this.endIfDone();
  }

  private endIfDone(): void {
    if (this.inputEnded && !this.isClosed && this.inFlight === 0 && this.queue.length === 0) this.socket.end();
  }

  // A long reply (a listing written in slices) is written a few milliseconds of pieces per turn;
  // replies that complete meanwhile wait, so two replies' bytes never mix on the stream.
  private writingPieces = false;
  private readonly writesWaiting: Array<() => void> = [];

  /** Writes one reply; `finish` once it is all handed to the socket (the slot is held until then). */
  private writeReply(pieces: readonly string[], finish: () => void): void {
    if (this.writingPieces) {
      this.writesWaiting.push(() => this.writeReply(pieces, finish));
      return;
    }
    if (this.isClosed) return finish();
    this.writingPieces = pieces.length > 1;
    let index = 0;
    const writeSome = (): void => {
      const startedMs = performance.now();
      let flushed = true;
      do {
        flushed = this.socket.write(pieces[index++]!);
      } while (index < pieces.length && performance.now() - startedMs < this.limits.replySliceMs);
      if (index < pieces.length && !this.isClosed) {
        setImmediate(writeSome);
        return;
      }
      // A client that stops reading stalls itself: the slot waits for the socket to drain.
      if (flushed || this.isClosed) finish();
      else this.drainWaiters.push(finish);
      if (!this.writingPieces) return;
      this.writingPieces = false;
      for (const waiting of this.writesWaiting.splice(0)) waiting();
    };
    writeSome();
  }

  private dispatch(value: Buffer, release: () => void): void {
    let message: unknown;
    try {
      message = parseJson(value.toString('utf8'));
    } catch {
      release();
      this.failParse();
      return;
    }
    this.inFlight++;
    const finish = (): void => {
      this.inFlight--;
      release();
      this.retry();
    };
    this.dispatcher
      .handleMessage(message, this)
      .then((reply) => {
        if (reply === undefined || this.isClosed) return finish();
        const pieces = serializeResponseChunks(reply);
        this.writeReply([...pieces.slice(0, -1), `${pieces[pieces.length - 1]!}\n`], finish);
      })
      .catch((error: unknown) => {
        finish();
        this.log({ level: 'error', msg: 'spdk socket dispatch failed', connection: this.id, error: String(error) });
      });
  }
}
