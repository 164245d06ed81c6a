// One NBD client connection: the fixed newstyle handshake, then the transmission phase.
//
// Input is read into one buffer of the connection's, reused for every read (see
// socketReadBuffer.ts), and parsed straight from it: a WRITE's payload is copied once, into a
// buffer of the server's pool; what is left unparsed when a read is done is copied out before the
// next read can overwrite it.
//
// Memory stays bounded whatever the client sends: option data is capped (larger is discarded unread), a request's payload is reserved in
// the connection's and the node's byte budgets before its buffer is allocated, and while a budget,
// the in-flight cap or the socket's send buffer is full the connection stops reading its socket
// (backpressure) instead of buffering. Requests run concurrently and are answered as they finish;
// at most `executingMax` of a connection's requests run at once (the others wait their turn in
// arrival order), and a READ keeps its turn until its reply has left for the socket, so a
// connection holds at most that many reply buffers. Replies are written whole from one buffer of
// the server's pool (header, then data read straight behind it).
import type { Socket } from 'node:net';
import { TLSSocket, type TLSSocketOptions } from 'node:tls';
import {
  nbdBlockStatusExtentsMax,
  nbdHandshakeOptionsMax,
  nbdHandshakeTimeoutMs,
  nbdInFlightPerConnectionMax,
  nbdOptionBytesMax,
  nbdPayloadBytesInFlightPerConnectionMax,
  nbdPayloadBytesMax,
  nbdPreferredBlockBytes,
} from '../../constants.ts';
import { isHole } from '../../bdev/bdev.ts';
import { isStorageError } from '../../errors.ts';
import { log } from '../../log.ts';
import type { NbdClient, NbdExport, NbdExports } from '../../actors/nbdExports.ts';
import { ByteBudget } from '../byteBudget.ts';
import { BufferPool } from './bufferPool.ts';
import { readIntoBuffer } from './socketReadBuffer.ts';
import type { NbdTls } from './tlsPsk.ts';
import {
  type RequestHeader,
  baseAllocation,
  blockState,
  clientFlagsBytes,
  command,
  commandFlag,
  commandFlagsKnown,
  commandName,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatus,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeMetaContext,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionError,
  encodeOptionReply,
  encodeReplyServer,
  encodeSimpleReply,
  encodeStructuredDone,
  encodeStructuredError,
  offsetDataHeaderBytes,
  simpleReplyBytes,
  writeOffsetDataHeader,
  writeSimpleReply,
  info,
  matchesBaseAllocation,
  nbdErrno,
  option,
  optionHeaderBytes,
  optionName,
  optionReply,
  requestHeaderBytes,
  transmissionFlag,
} from './protocol.ts';

/** What a connection needs from its server. */
export interface NbdConnectionContext {
  readonly exports: NbdExports;
  /** Payload bytes in flight over every NBD connection of the node. */
  readonly nodeBudget: ByteBudget;
  /** Reply buffers shared by the server's connections. */
  readonly replyBuffers: BufferPool;
  /** Foreground first: background checksum steps back off while client requests come in. */
  noteForeground(): void;
  /** True while the server shuts down: options are answered NBD_REP_ERR_SHUTDOWN. */
  shuttingDown(): boolean;
  /**
   * TLS-PSK of the listener, if any. Then TLS is forced (proto.md's FORCEDTLS): until the client
   * has sent NBD_OPT_STARTTLS and finished the TLS handshake, every option but STARTTLS and ABORT
   * is answered NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME (which cannot fail) closes.
   */
  readonly tls: NbdTls | undefined;
  /**
   * A connection ended before serving an export. Each is logged at debug level only: strangers
   * can cause any number of them, so the server logs their counts at most once per interval.
   */
  noteHandshakeEnded(kind: HandshakeEnd, reason: string): void;
}

/** Why a connection ended in its handshake: too slow, its TLS handshake failed, dropped for a newcomer, or it broke the protocol. */
export type HandshakeEnd = 'timeout' | 'tlsFailed' | 'dropped' | 'invalid';

/**
 * How far a connection's handshake got, lowest first: when handshake slots run out, the server
 * drops a connection of the lowest stage (and of those the longest idle) to admit a new one.
 */
export const handshakeProgress = {
  /** Greeted, with or without client flags; no option yet (a TLS listener: no NBD_OPT_STARTTLS yet). */
  preOption: 0,
  /** STARTTLS acknowledged, TLS handshake running. */
  tlsHandshake: 1,
  /** Negotiating options: over TLS (the client proved it holds a key), or on a listener without TLS. */
  negotiating: 2,
  /** Serving an export: never dropped for a newcomer. */
  transmission: 3,
} as const;

// Orders connections by when they last made progress (no clock: only the order matters).
let progressCounter = 0;

// The id the one metadata context we serve gets in NBD_OPT_SET_META_CONTEXT replies.
const allocationContextId = 1;
// Beyond this many bytes queued on the socket, the connection stops reading requests until the
// client has taken its replies ('drain'): replies of a client that does not read stay bounded.
const socketBufferedBytesMax = nbdPayloadBytesMax;
// Requests of one connection that run at once (qemu-nbd runs 16 too). More buy nothing: a file
// bdev's reads wait in libuv's thread pool (4 threads), and each running READ holds a reply
// buffer until the socket took it. Measured with nbdcopy (4 connections x 64 requests of 256 KiB):
// 16 at once read at twice the rate of 256, with a quarter of the CPU per byte.
export const executingMax = 16;
// Each connection reads its socket into one buffer of this size, kept while it is open (256
// connections: 64 MiB at most). A Unix socket hands over about 200 KiB per read at most.
const socketReadBufferBytes = 256 * 1024;
/** Room in front of a pooled reply buffer's data for the largest READ reply header. */
export const replyHeadroomBytes = Math.max(offsetDataHeaderBytes, simpleReplyBytes);

interface Admitted {
  readonly request: RequestHeader;
  readonly payload: Payload | undefined;
  readonly release: () => void;
}

/** A WRITE's data: `bytes`, a view of the front of `pooled`, a buffer of the server's pool. */
interface Payload {
  readonly bytes: Buffer;
  readonly pooled: Buffer;
}

type Phase = 'clientFlags' | 'options' | 'transmission';
/** TLS on this connection: not asked for, handshake running, or up. */
type TlsState = 'none' | 'handshaking' | 'up';

interface PendingWrite {
  readonly request: RequestHeader;
  readonly buffer: Buffer;
  readonly pooled: Buffer;
  filledBytes: number;
  readonly release: () => void;
}

interface Failure {
  readonly errno: number;
  readonly message: string;
}

/** The socket's received chunks, consumed from the front without concatenating them. */
class InputQueue {
  private readonly chunks: Buffer[] = [];
  private headOffset = 0;
  lengthBytes = 0;

  /** A chunk whose memory is reused after the current read callback: `retain` copies what is left of it. */
  private transient: Buffer | undefined;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.lengthBytes += chunk.length;
  }

  pushTransient(chunk: Buffer): void {
    this.push(chunk);
    this.transient = chunk;
  }

  /** Replaces the unconsumed part of the transient chunk, if any is left, with a copy of its own. */
  retain(): void {
    const chunk = this.transient;
    if (chunk === undefined) return;
    this.transient = undefined;
    const last = this.chunks.length - 1;
    if (last < 0 || this.chunks[last] !== chunk) return;
    const from = last === 0 ? this.headOffset : 0;
    this.chunks[last] = Buffer.from(chunk.subarray(from));
    if (last === 0) this.headOffset = 0;
  }

  /** The first `bytes` (at most the queued length), as a view when they lie in one chunk. */
  peek(bytes: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.headOffset >= bytes) return first.subarray(this.headOffset, this.headOffset + bytes);
    const out = Buffer.allocUnsafe(bytes);
    let copied = 0;
    let offset = this.headOffset;
    for (const chunk of this.chunks) {
      const piece = Math.min(chunk.length - offset, bytes - copied);
      chunk.copy(out, copied, offset, offset + piece);
      copied += piece;
      offset = 0;
      if (copied === bytes) break;
    }
    return out;
  }

  /** Copies `bytes` from the front into `target` at `at`, and consumes them. */
  copyInto(target: Buffer, at: number, bytes: number): void {
    let copied = 0;
    while (copied < bytes) {
      const first = this.chunks[0]!;
      const piece = Math.min(first.length - this.headOffset, bytes - copied);
      first.copy(target, at + copied, this.headOffset, this.headOffset + piece);
      copied += piece;
      this.advance(piece);
    }
  }

  skip(bytes: number): void {
    let left = bytes;
    while (left > 0) {
      const piece = Math.min(this.chunks[0]!.length - this.headOffset, left);
      this.advance(piece);
      left -= piece;
    }
  }

  private advance(bytes: number): void {
    this.headOffset += bytes;
    this.lengthBytes -= bytes;
    if (this.headOffset === this.chunks[0]!.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}

export class NbdConnection implements NbdClient {
  private readonly input = new InputQueue();
  private readonly budget = new ByteBudget(nbdPayloadBytesInFlightPerConnectionMax);
  private phase: Phase = 'clientFlags';
  private closed = false;
  private noZeroes = false;
  private structured = false;
  private optionCount = 0;
  /** The export and whether base:allocation was selected for it (NBD_OPT_SET_META_CONTEXT). */
  private metaContext: { exportName: string; allocation: boolean } | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private tlsState: TlsState = 'none';
  /**
   * When the handshake last moved on (accepted, client flags, an option acted on, STARTTLS, TLS up),
   * as an order (see progressCounter). Bytes alone do not count: options refused for want of TLS
   * keep no connection fresh.
   */
  private lastProgress = ++progressCounter;
  /** The socket all I/O goes through: the accepted one, or the TLS socket wrapping it after STARTTLS. */
  private socket: Socket;

  // Transmission phase.
  private export: NbdExport | undefined;
  private exportSizeBytes = 0;
  private blockBytes = 512;
  private readOnly = true;
  private inFlight = 0;
  /** Requests running now (at most `executingMax`); `queued` wait for a turn, oldest first. */
  private executing = 0;
  private readonly queued: Admitted[] = [];
  private queuedHead = 0;
  private pendingWrite: PendingWrite | undefined;
  private discardBytes = 0;
  private afterDiscard: (() => void) | undefined;
  /** Reading stopped: waiting for budget, for in-flight requests, or for the socket to drain. */
  private stalled = false;
  private awaitingBudget = false;
  /** NBD_CMD_DISC, NBD_OPT_ABORT or a drain: nothing more is read; close once in-flight requests are done. */
  private ending = false;
  private endCalled = false;
  private drainReason: string | undefined;
  /** Replies are being gathered behind a cork until the next check phase (batchReplies). */
  private batching = false;

  constructor(
    readonly id: number,
    socket: Socket,
    private readonly context: NbdConnectionContext,
    private readonly onClosed: (connection: NbdConnection) => void,
  ) {
    this.socket = socket;
    socket.setNoDelay(true);
    // The server accepts sockets paused: reading starts here, into a buffer of the connection's
    // own when this Node allows it (no allocation per read), else by 'data' events. A socket that
    // may be handed to TLS is read by events: TLS then reads the handle itself.
    const ownBuffer =
      context.tls === undefined && readIntoBuffer(socket, Buffer.allocUnsafeSlow(socketReadBufferBytes), (bytes, buffer) => this.onRead(bytes, buffer));
    if (!ownBuffer) socket.on('data', this.onData);
    this.listenTo(socket);
    socket.resume();
    this.handshakeTimer = setTimeout(() => this.hardClose('handshake not finished in time', 'timeout'), nbdHandshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeGreeting());
  }

  private listenTo(socket: Socket): void {
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onSocketClose);
  }

  private readonly onDrain = (): void => this.unstall();
  private readonly onError = (error: Error): void => log('debug', 'nbd connection error', { connection: this.id, error: error.message });
  private readonly onSocketClose = (): void => this.onClose();

  get inTransmission(): boolean {
    return this.phase === 'transmission';
  }

  /** How far the handshake got (see handshakeProgress). */
  get progress(): number {
    if (this.phase === 'transmission') return handshakeProgress.transmission;
    if (this.phase === 'clientFlags') return handshakeProgress.preOption;
    if (this.context.tls === undefined) return this.optionCount === 0 ? handshakeProgress.preOption : handshakeProgress.negotiating;
    if (this.tlsState === 'none') return handshakeProgress.preOption;
    return this.tlsState === 'handshaking' ? handshakeProgress.tlsHandshake : handshakeProgress.negotiating;
  }

  /** Orders connections by when their handshake last moved on: lower was idle longer. */
  get lastProgressOrder(): number {
    return this.lastProgress;
  }

  private noteProgress(): void {
    this.lastProgress = ++progressCounter;
  }

  /** True once the client holds a key of the listener (TLS is up), or when the listener has no TLS. */
  get authenticated(): boolean {
    return this.context.tls === undefined || this.tlsState === 'up';
  }

  /** Dropped to admit a new connection while handshake slots are full. */
  dropForNewcomer(): void {
    this.hardClose(`dropped for a new connection at stage ${this.progress}`, 'dropped');
  }

  /** The most payload bytes this connection ever had reserved at once. */
  get payloadPeakBytes(): number {
    return this.budget.peakBytes;
  }

  /** NbdClient: the export is stopping. In-flight requests finish; later ones get ESHUTDOWN. */
  drain(reason: string): void {
    if (this.closed || this.drainReason !== undefined) return;
    this.drainReason = reason;
    this.socket.pause();
    // Requests already received are answered (ESHUTDOWN, see validate); nothing more is read.
    this.pump();
    this.ending = true;
    this.discardBytes = 0;
    // A WRITE whose payload is still arriving was never acknowledged: it is dropped.
    this.dropPendingWrite();
    this.maybeEnd();
  }

  /** NbdClient: cut the socket now. */
  destroy(): void {
    this.socket.destroy();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.closed) return;
    this.input.push(chunk);
    this.pump();
  };

  /** `bytes` were read into the front of `buffer`, which the next read overwrites. */
  private onRead(bytes: number, buffer: Buffer): boolean {
    if (this.closed) return false;
    this.input.pushTransient(buffer.subarray(0, bytes));
    this.pump();
    // What could not be acted on yet (a partial header, input behind a stall) is copied out.
    this.input.retain();
    return true;
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.handshakeTimer);
    this.dropPendingWrite();
    this.export?.detach(this);
    this.onClosed(this);
  }

  /** A WRITE still receiving its payload is abandoned: its budget and buffer are given back. */
  private dropPendingWrite(): void {
    const pending = this.pendingWrite;
    if (!pending) return;
    this.pendingWrite = undefined;
    pending.release();
    // Only this connection ever saw the buffer (input is copied into it): it may be reused.
    this.context.replyBuffers.release(pending.pooled);
  }

  /** Parses as much input as may be acted on now. */
  private pump(): void {
    try {
      while (!this.closed && !this.stalled && !this.awaitingBudget && !this.ending) {
        if (this.discardBytes > 0) {
          if (!this.discardInput()) break;
          continue;
        }
        if (this.pendingWrite) {
          if (!this.fillPendingWrite()) break;
          continue;
        }
        const progressed = this.phase === 'transmission' ? this.nextRequest() : this.nextHandshakeStep();
        if (!progressed) break;
      }
    } catch (error) {
      // A bug must cost this client its connection, never the node its process.
      log('error', 'unexpected error parsing NBD input', { connection: this.id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      this.hardClose('internal error');
    }
  }

  private stall(): void {
    this.stalled = true;
    this.socket.pause();
  }

  private unstall(): void {
    if (!this.stalled || this.closed || this.ending) return;
    this.stalled = false;
    this.socket.resume();
    this.pump();
  }

  private discardInput(): boolean {
    const bytes = Math.min(this.discardBytes, this.input.lengthBytes);
    this.input.skip(bytes);
    this.discardBytes -= bytes;
    if (this.discardBytes > 0) return false;
    const then = this.afterDiscard;
    this.afterDiscard = undefined;
    then?.();
    return true;
  }

  private hardClose(reason: string, kind: HandshakeEnd = 'invalid'): void {
    if (this.closed || this.socket.destroyed) return;
    // Nothing more is parsed: the rest of the input belongs to a client already refused.
    this.ending = true;
    if (this.phase === 'transmission') {
      log('warn', 'nbd client disconnected', { connection: this.id, reason });
    } else {
      log('debug', 'nbd client disconnected in the handshake', { connection: this.id, reason });
      this.context.noteHandshakeEnded(kind, reason);
    }
    this.socket.destroy();
  }

  // ---- handshake ----

  private nextHandshakeStep(): boolean {
    if (this.phase === 'clientFlags') {
      if (this.input.lengthBytes < clientFlagsBytes) return false;
      const flags = decodeClientFlags(this.input.peek(clientFlagsBytes));
      this.input.skip(clientFlagsBytes);
      if (!flags.ok) {
        this.hardClose(flags.reason);
        return false;
      }
      this.noZeroes = flags.noZeroes;
      this.noteProgress();
      this.phase = 'options';
      return true;
    }
    if (this.input.lengthBytes < optionHeaderBytes) return false;
    const decoded = decodeOptionHeader(this.input.peek(optionHeaderBytes));
    if (!decoded.ok) {
      this.hardClose(decoded.reason);
      return false;
    }
    const { option: optionType, lengthBytes } = decoded.header;
    if (lengthBytes > nbdOptionBytesMax) {
      this.input.skip(optionHeaderBytes);
      if (!this.countOption()) return false;
      // NBD_OPT_EXPORT_NAME cannot be answered with an error: a name this long is refused by
      // closing. Other options get their data discarded unread, then NBD_REP_ERR_TOO_BIG.
      if (optionType === option.exportName) {
        this.hardClose(`export name of ${lengthBytes} bytes`);
        return false;
      }
      this.discardBytes = lengthBytes;
      this.afterDiscard = () =>
        this.replyOption(
          this.tlsRequired() && optionType !== option.startTls && optionType !== option.abort
            ? encodeOptionError(optionType, optionReply.errTlsReqd, tlsRequiredMessage)
            : encodeOptionError(optionType, optionReply.errTooBig, `option data over ${nbdOptionBytesMax} bytes`),
        );
      return true;
    }
    if (this.input.lengthBytes < optionHeaderBytes + lengthBytes) return false;
    this.input.skip(optionHeaderBytes);
    const data = Buffer.allocUnsafe(lengthBytes);
    this.input.copyInto(data, 0, lengthBytes);
    if (!this.countOption()) return false;
    this.handleOption(optionType, data);
    return true;
  }

  private countOption(): boolean {
    if (++this.optionCount <= nbdHandshakeOptionsMax) return true;
    this.hardClose(`more than ${nbdHandshakeOptionsMax} options`);
    return false;
  }

  private replyOption(...replies: Buffer[]): void {
    if (this.closed) return;
    for (const reply of replies) this.socket.write(reply);
  }

  /** TLS is forced on this listener and not up yet. */
  private tlsRequired(): boolean {
    return this.context.tls !== undefined && this.tlsState !== 'up';
  }

  private handleOption(optionType: number, data: Buffer): void {
    if (this.context.shuttingDown() && optionType !== option.abort) {
      if (optionType === option.exportName) this.hardClose('server shutting down');
      else this.replyOption(encodeOptionError(optionType, optionReply.errShutdown, 'the node is shutting down'));
      return;
    }
    if (optionType === option.startTls) return this.optionStartTls(data);
    if (this.tlsRequired() && optionType !== option.abort) {
      // proto.md, FORCEDTLS: NBD_OPT_EXPORT_NAME cannot be answered with an error, so it closes.
      if (optionType === option.exportName) this.hardClose('NBD_OPT_EXPORT_NAME before TLS');
      else this.replyOption(encodeOptionError(optionType, optionReply.errTlsReqd, tlsRequiredMessage));
      return;
    }
    this.noteProgress();
    switch (optionType) {
      case option.exportName:
        return this.optionExportName(data.toString('utf8'));
      case option.abort:
        this.replyOption(encodeOptionReply(optionType, optionReply.ack));
        this.ending = true;
        this.maybeEnd();
        return;
      case option.list:
        return this.optionList(data);
      case option.info:
      case option.go:
        return this.optionInfoOrGo(optionType, data);
      case option.structuredReply:
        return this.optionStructuredReply(data);
      case option.listMetaContext:
      case option.setMetaContext:
        return this.optionMetaContext(optionType, data);
      default:
        this.replyOption(encodeOptionError(optionType, optionReply.errUnsup, `option ${optionName(optionType)} is not supported`));
    }
  }

  private optionStartTls(data: Buffer): void {
    const tls = this.context.tls;
    if (tls === undefined) {
      // proto.md, NOTLS mode: a listener without a key file (a Unix socket, or --nbd-insecure-tcp).
      this.replyOption(encodeOptionError(option.startTls, optionReply.errUnsup, 'this listener has no TLS (start the node with --nbd-tls-psk)'));
      return;
    }
    if (this.tlsState !== 'none') {
      this.replyOption(encodeOptionError(option.startTls, optionReply.errInvalid, 'TLS is already negotiated'));
      return;
    }
    if (data.length > 0) {
      this.replyOption(encodeOptionError(option.startTls, optionReply.errInvalid, 'NBD_OPT_STARTTLS takes no data'));
      return;
    }
    // The client must wait for the ACK before it starts TLS: bytes already here would be plain
    // text that TLS never sees.
    if (this.input.lengthBytes > 0) {
      this.hardClose('data after NBD_OPT_STARTTLS before its reply');
      return;
    }
    this.replyOption(encodeOptionReply(option.startTls, optionReply.ack));
    this.noteProgress();
    // proto.md: nothing negotiated before STARTTLS survives it.
    this.structured = false;
    this.metaContext = undefined;
    this.upgradeToTls(tls);
  }

  /**
   * Hands the socket to TLS (synchronously after the ACK, so the client's first TLS bytes reach
   * TLS, not the plain-text reader); from here every byte in either direction is TLS. A failed
   * TLS handshake (a wrong key, an unknown identity, garbage) closes the connection.
   */
  private upgradeToTls(tls: NbdTls): void {
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.off('drain', this.onDrain);
    plain.off('close', this.onSocketClose);
    const options: TLSSocketOptions & { pskCallback: NbdTls['pskCallback'] } = {
      isServer: true,
      secureContext: tls.secureContext,
      requestCert: false,
      rejectUnauthorized: false,
      pskCallback: tls.pskCallback,
    };
    const secure = new TLSSocket(plain, options);
    this.socket = secure;
    this.tlsState = 'handshaking';
    secure.once('secure', () => {
      this.tlsState = 'up';
      this.noteProgress();
      log('debug', 'nbd TLS up', { connection: this.id, protocol: secure.getProtocol(), cipher: secure.getCipher().name });
    });
    secure.once('error', (error) => {
      if (this.tlsState !== 'handshaking') return;
      // A wrong key or an unknown identity, or a peer that went away mid-handshake.
      log('debug', 'nbd TLS handshake failed', { connection: this.id, remote: plain.remoteAddress, error: error.message });
      this.context.noteHandshakeEnded('tlsFailed', error.message);
    });
    this.listenTo(secure);
    // The plain socket's own close (the peer or a destroy) also ends the connection.
    plain.once('close', this.onSocketClose);
    secure.on('data', this.onData);
  }

  private transmissionFlags(found: NbdExport): number {
    let flags = transmissionFlag.hasFlags | transmissionFlag.sendFlush | transmissionFlag.sendFua;
    // A FLUSH flushes the whole device and no connection caches: multi-conn semantics hold.
    flags |= transmissionFlag.canMultiConn;
    flags |= found.bdev.readOnly() ? transmissionFlag.readOnly : transmissionFlag.sendTrim | transmissionFlag.sendWriteZeroes;
    // A READ is always answered with one content chunk, so "don't fragment" costs nothing.
    if (this.structured) flags |= transmissionFlag.sendDf;
    return flags;
  }

  private optionExportName(exportName: string): void {
    const found = this.context.exports.lookup(exportName);
    if (!found || !found.attach(this)) {
      this.hardClose(`NBD_OPT_EXPORT_NAME of unknown export ${JSON.stringify(exportName)}`);
      return;
    }
    this.replyOption(encodeExportNameReply(found.bdev.sizeBytes(), this.transmissionFlags(found), this.noZeroes));
    this.enterTransmission(found);
  }

  private optionList(data: Buffer): void {
    if (data.length > 0) {
      this.replyOption(encodeOptionError(option.list, optionReply.errInvalid, 'NBD_OPT_LIST takes no data'));
      return;
    }
    const replies = this.context.exports.list().filter((found) => found.accepting).map((found) => encodeReplyServer(found.exportName));
    this.replyOption(...replies, encodeOptionReply(option.list, optionReply.ack));
  }

  private optionInfoOrGo(optionType: number, data: Buffer): void {
    const decoded = decodeInfoRequest(data);
    if (!decoded.ok) {
      this.replyOption(encodeOptionError(optionType, optionReply.errInvalid, decoded.reason));
      return;
    }
    const { exportName, infoTypes } = decoded.request;
    const found = this.context.exports.lookup(exportName);
    if (!found) {
      this.replyOption(encodeOptionError(optionType, optionReply.errUnknown, `no export named ${JSON.stringify(exportName)}`));
      return;
    }
    let sizeBytes: number;
    try {
      sizeBytes = found.bdev.sizeBytes();
    } catch {
      this.replyOption(encodeOptionError(optionType, optionReply.errUnknown, `export ${JSON.stringify(exportName)} is going away`));
      return;
    }
    if (optionType === option.go && !found.attach(this)) {
      this.replyOption(encodeOptionError(optionType, optionReply.errUnknown, `export ${JSON.stringify(exportName)} is stopping`));
      return;
    }
    const replies = [
      encodeInfoExport(optionType, sizeBytes, this.transmissionFlags(found)),
      // Sent whether asked or not: requests must be aligned to the bdev's block (else EINVAL).
      encodeInfoBlockSize(optionType, found.bdev.blockSizeBytes, Math.max(nbdPreferredBlockBytes, found.bdev.blockSizeBytes), nbdPayloadBytesMax),
    ];
    if (infoTypes.includes(info.description)) replies.push(encodeInfoText(optionType, info.description, `${found.bdev.kind} bdev ${found.bdevName}`));
    if (infoTypes.includes(info.name)) replies.push(encodeInfoText(optionType, info.name, found.exportName));
    this.replyOption(...replies, encodeOptionReply(optionType, optionReply.ack));
    if (optionType === option.go) this.enterTransmission(found);
  }

  private optionStructuredReply(data: Buffer): void {
    if (data.length > 0 || this.structured) {
      const why = this.structured ? 'structured replies are already negotiated' : 'NBD_OPT_STRUCTURED_REPLY takes no data';
      this.replyOption(encodeOptionError(option.structuredReply, optionReply.errInvalid, why));
      return;
    }
    this.structured = true;
    this.replyOption(encodeOptionReply(option.structuredReply, optionReply.ack));
  }

  private optionMetaContext(optionType: number, data: Buffer): void {
    const setting = optionType === option.setMetaContext;
    // SET replaces the earlier selection even when it fails.
    if (setting) this.metaContext = undefined;
    if (!this.structured) {
      this.replyOption(encodeOptionError(optionType, optionReply.errInvalid, 'negotiate structured replies first'));
      return;
    }
    const decoded = decodeMetaContextRequest(data);
    if (!decoded.ok) {
      this.replyOption(encodeOptionError(optionType, optionReply.errInvalid, decoded.reason));
      return;
    }
    const { exportName, queries } = decoded.request;
    if (!this.context.exports.lookup(exportName)) {
      this.replyOption(encodeOptionError(optionType, optionReply.errUnknown, `no export named ${JSON.stringify(exportName)}`));
      return;
    }
    const allocation = matchesBaseAllocation(queries, !setting);
    if (setting) this.metaContext = { exportName, allocation };
    const replies = allocation ? [encodeMetaContext(optionType, setting ? allocationContextId : 0, baseAllocation)] : [];
    this.replyOption(...replies, encodeOptionReply(optionType, optionReply.ack));
  }

  private enterTransmission(found: NbdExport): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.phase = 'transmission';
    this.export = found;
    this.exportSizeBytes = found.bdev.sizeBytes();
    this.blockBytes = found.bdev.blockSizeBytes;
    this.readOnly = found.bdev.readOnly();
    if (this.metaContext?.exportName !== found.exportName) this.metaContext = undefined;
    log('debug', 'nbd client connected', { connection: this.id, export: found.exportName, structured: this.structured });
  }

  // ---- transmission ----

  /** Parses one request header and acts on it; false when it must wait. */
  private nextRequest(): boolean {
    if (this.inFlight >= nbdInFlightPerConnectionMax || this.socket.writableLength > socketBufferedBytesMax) {
      this.stall();
      return false;
    }
    if (this.input.lengthBytes < requestHeaderBytes) return false;
    const request = decodeRequestHeader(this.input.peek(requestHeaderBytes));
    if (!request) {
      this.hardClose('request without NBD_REQUEST_MAGIC (garbage or out of sync)');
      return false;
    }
    this.input.skip(requestHeaderBytes);
    if (request.type === command.disc) {
      // Nothing may follow a DISC: the rest of the input is ignored.
      this.ending = true;
      this.socket.pause();
      this.maybeEnd();
      return false;
    }
    const failure = this.validate(request);
    const payloadBytes = request.type === command.write ? request.lengthBytes : 0;
    if (failure) {
      this.replyFailure(request, failure);
      // A refused WRITE's payload is still on the wire: read past it without keeping it.
      this.discardBytes = payloadBytes;
      return true;
    }
    const budgetBytes = request.type === command.read || request.type === command.write ? request.lengthBytes : 0;
    if (budgetBytes === 0) {
      this.startRequest(request, undefined, noop);
      return true;
    }
    const release = this.reserveNow(budgetBytes);
    if (release) {
      this.admit(request, release);
      return true;
    }
    this.awaitingBudget = true;
    this.socket.pause();
    void this.reserveLater(budgetBytes).then((granted) => {
      this.awaitingBudget = false;
      if (this.closed || this.ending) {
        granted();
        this.maybeEnd();
        return;
      }
      this.socket.resume();
      this.admit(request, granted);
      this.pump();
    });
    return false;
  }

  /** A request whose payload bytes are reserved: a READ starts, a WRITE starts receiving data. */
  private admit(request: RequestHeader, release: () => void): void {
    if (request.type === command.write) {
      // From the pool, given back once the device write resolved (see execute).
      const pooled = this.context.replyBuffers.acquire(request.lengthBytes);
      this.pendingWrite = { request, buffer: pooled.subarray(0, request.lengthBytes), pooled, filledBytes: 0, release };
    } else {
      this.startRequest(request, undefined, release);
    }
  }

  private fillPendingWrite(): boolean {
    const pending = this.pendingWrite!;
    const bytes = Math.min(pending.buffer.length - pending.filledBytes, this.input.lengthBytes);
    if (bytes > 0) this.input.copyInto(pending.buffer, pending.filledBytes, bytes);
    pending.filledBytes += bytes;
    if (pending.filledBytes < pending.buffer.length) return false;
    this.pendingWrite = undefined;
    this.startRequest(pending.request, { bytes: pending.buffer, pooled: pending.pooled }, pending.release);
    return true;
  }

  private reserveNow(bytes: number): (() => void) | undefined {
    const connection = this.budget.tryReserve(bytes);
    if (!connection) return undefined;
    const node = this.context.nodeBudget.tryReserve(bytes);
    if (!node) {
      connection();
      return undefined;
    }
    return () => {
      node();
      connection();
    };
  }

  private async reserveLater(bytes: number): Promise<() => void> {
    const connection = await this.budget.reserve(bytes);
    const node = await this.context.nodeBudget.reserve(bytes);
    return () => {
      node();
      connection();
    };
  }

  /** Everything that can be refused from the header alone, before any payload or I/O. */
  private validate(request: RequestHeader): Failure | undefined {
    const { type, flags, offsetBytes, lengthBytes } = request;
    if (this.drainReason !== undefined) return { errno: nbdErrno.ESHUTDOWN, message: `export stopping (${this.drainReason})` };
    if ((flags & ~commandFlagsKnown) !== 0) return { errno: nbdErrno.EINVAL, message: `unknown command flags 0x${flags.toString(16)}` };
    const writes = type === command.write || type === command.trim || type === command.writeZeroes;
    switch (type) {
      case command.read:
      case command.write:
        if (lengthBytes > nbdPayloadBytesMax) {
          const errno = type === command.read && this.structured ? nbdErrno.EOVERFLOW : nbdErrno.EINVAL;
          return { errno, message: `${commandName(type)} of ${lengthBytes} bytes is over the ${nbdPayloadBytesMax}-byte maximum` };
        }
        break;
      case command.trim:
      case command.writeZeroes:
      case command.flush:
        break;
      case command.blockStatus:
        if (!this.metaContext?.allocation) return { errno: nbdErrno.EINVAL, message: 'no metadata context was negotiated' };
        if (lengthBytes === 0) return { errno: nbdErrno.EINVAL, message: 'block status of zero bytes' };
        break;
      default:
        return { errno: nbdErrno.EINVAL, message: `unknown command ${type}` };
    }
    if (writes && this.readOnly) return { errno: nbdErrno.EPERM, message: `export ${this.export!.exportName} is read-only` };
    if (type === command.flush) return undefined;
    if (offsetBytes > this.exportSizeBytes || lengthBytes > this.exportSizeBytes - offsetBytes) {
      // proto.md: a write past the end is ENOSPC (as qemu-nbd and nbdkit answer), anything else EINVAL.
      const errno = type === command.write || type === command.writeZeroes ? nbdErrno.ENOSPC : nbdErrno.EINVAL;
      return { errno, message: `${commandName(type)} past the end of the ${this.exportSizeBytes}-byte export` };
    }
    if (offsetBytes % this.blockBytes !== 0 || lengthBytes % this.blockBytes !== 0) {
      return { errno: nbdErrno.EINVAL, message: `offset and length must be multiples of the ${this.blockBytes}-byte block` };
    }
    return undefined;
  }

  private startRequest(request: RequestHeader, payload: Payload | undefined, release: () => void): void {
    this.inFlight++;
    this.export!.counters.requests++;
    this.context.noteForeground();
    if (this.executing < executingMax) {
      this.executing++;
      void this.execute(request, payload, release);
    } else {
      this.queued.push({ request, payload, release });
    }
  }

  /** A running request is done (a READ: its reply left for the socket): the next queued one runs. */
  private finishRequest(): void {
    this.inFlight--;
    this.executing--;
    if (this.queuedHead < this.queued.length) {
      const next = this.queued[this.queuedHead]!;
      this.queued[this.queuedHead++] = undefined as unknown as Admitted;
      if (this.queuedHead === this.queued.length) {
        this.queued.length = 0;
        this.queuedHead = 0;
      }
      this.executing++;
      this.context.noteForeground();
      void this.execute(next.request, next.payload, next.release);
    }
    this.afterCompletion();
  }

  /** Runs one admitted request and answers it; never rejects. */
  private async execute(request: RequestHeader, payload: Payload | undefined, release: () => void): Promise<void> {
    const { bdev: target, counters } = this.export!;
    const { offsetBytes, lengthBytes } = request;
    const fua = (request.flags & commandFlag.fua) !== 0;
    let finished = true;
    try {
      switch (request.type) {
        case command.read:
          // The turn and the budget are given back once the reply has left (or failed).
          finished = false;
          await this.read(request, () => {
            release();
            this.finishRequest();
          });
          return;
        case command.write:
          if (payload) {
            if (lengthBytes > 0) await target.write(offsetBytes, payload.bytes);
            // The write resolved: the store and the device are done with the bytes (they copy
            // them or write them out before resolving). A failed write drops the buffer instead
            // (the catch below): another segment's device write may still be reading it.
            this.context.replyBuffers.release(payload.pooled);
          }
          if (fua) await target.flush();
          counters.bytesWritten += lengthBytes;
          break;
        case command.flush:
          await target.flush();
          break;
        case command.trim:
          if (lengthBytes > 0) await target.unmap(offsetBytes, lengthBytes);
          if (fua) await target.flush();
          break;
        case command.writeZeroes:
          if (lengthBytes > 0) await target.writeZeroes(offsetBytes, lengthBytes);
          if (fua) await target.flush();
          break;
        case command.blockStatus:
          this.replyBlockStatus(request);
          return;
      }
      this.send(encodeSimpleReply(0, request));
    } catch (error) {
      this.replyFailure(request, toFailure(error, request));
    } finally {
      if (finished) {
        release();
        this.finishRequest();
      }
    }
  }

  /** Answers a READ; `release` is called once, when the data has left for the socket (or failed). */
  private async read(request: RequestHeader, release: () => void): Promise<void> {
    const { counters } = this.export!;
    const target = this.export!.bdev;
    const { offsetBytes, lengthBytes } = request;
    try {
      if (lengthBytes === 0) {
        release();
        this.send(this.structured ? encodeStructuredDone(request) : encodeSimpleReply(0, request));
        return;
      }
      // A hole reads as zeros: with structured replies it is said in 32 bytes, not sent.
      if (this.structured && isHole(target, offsetBytes, lengthBytes)) {
        release();
        counters.bytesRead += lengthBytes;
        this.send(encodeOffsetHole(request, offsetBytes, lengthBytes, true));
        return;
      }
      const pool = this.context.replyBuffers;
      const headerBytes = this.structured ? offsetDataHeaderBytes : simpleReplyBytes;
      const buffer = pool.acquire(lengthBytes);
      // A failed read drops the buffer (the catch below): another segment's device read may
      // still be filling it. A bdev that has the bytes at once (a file in memory, RAM) answers
      // without the promises of its read path.
      const into = buffer.subarray(headerBytes, headerBytes + lengthBytes);
      if (target.readIntoNow === undefined || !target.readIntoNow(offsetBytes, into)) await target.readInto(offsetBytes, into);
      counters.bytesRead += lengthBytes;
      if (this.structured) writeOffsetDataHeader(buffer, request, offsetBytes, lengthBytes, true);
      else writeSimpleReply(buffer, 0, request);
      this.sendWhole(buffer.subarray(0, headerBytes + lengthBytes), () => {
        release();
        pool.release(buffer);
      });
    } catch (error) {
      release();
      this.replyFailure(request, toFailure(error, request));
    }
  }

  private replyBlockStatus(request: RequestHeader): void {
    const target = this.export!.bdev;
    const extentsMax = (request.flags & commandFlag.reqOne) !== 0 ? 1 : nbdBlockStatusExtentsMax;
    const extents = target.extents(request.offsetBytes, request.lengthBytes, extentsMax);
    const descriptors = extents.map((extent) => ({
      lengthBytes: extent.lengthBytes,
      flags: extent.allocated ? 0 : blockState.hole | blockState.zero,
    }));
    this.send(encodeBlockStatus(request, allocationContextId, descriptors));
  }

  private replyFailure(request: RequestHeader, failure: Failure): void {
    if (this.export) this.export.counters.errors++;
    this.send(this.structured ? encodeStructuredError(request, failure.errno, failure.message) : encodeSimpleReply(failure.errno, request));
  }

  /** Writes a reply (a header, and data after it in the same writev); `onWritten` runs once it left. */
  private send(header: Buffer, data?: Buffer, onWritten?: () => void): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) {
      onWritten?.();
      return;
    }
    this.batchReplies();
    if (data === undefined) {
      this.socket.write(header);
      return;
    }
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(data, onWritten === undefined ? undefined : () => onWritten());
    this.socket.uncork();
  }

  /**
   * Writes a reply that is whole in one buffer; `onWritten` runs once the socket is done with it
   * (written, or failed when the socket is destroyed), never before: then the buffer may be reused.
   */
  private sendWhole(reply: Buffer, onWritten: () => void): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) {
      onWritten();
      return;
    }
    this.batchReplies();
    this.socket.write(reply, () => onWritten());
  }

  /**
   * Replies written in this turn of the event loop go out together: the socket is corked until
   * the loop's check phase (after every I/O completion of this poll has run), so requests that
   * complete together cost one writev, not a write each.
   */
  private batchReplies(): void {
    // A lone request (queue depth 1) is answered at once: nothing could join its reply.
    if (this.batching || this.executing <= 1) return;
    this.batching = true;
    this.socket.cork();
    setImmediate(this.endBatch);
  }

  private readonly endBatch = (): void => {
    this.batching = false;
    this.socket.uncork();
  };

  private afterCompletion(): void {
    if (this.ending) {
      this.maybeEnd();
      return;
    }
    if (this.stalled && this.inFlight < nbdInFlightPerConnectionMax && this.socket.writableLength <= socketBufferedBytesMax) this.unstall();
  }

  /** After DISC or a drain: close once nothing is in flight (replies already written go first). */
  private maybeEnd(): void {
    if (this.closed || this.endCalled || this.inFlight > 0 || this.pendingWrite || this.awaitingBudget) return;
    this.endCalled = true;
    this.socket.end(() => this.socket.destroy());
  }
}

function noop(): void {}

const tlsRequiredMessage = 'TLS is required: send NBD_OPT_STARTTLS first';

/** A StorageError as an NBD error value; anything else is a bug, logged, and EIO to the client. */
function toFailure(error: unknown, request: RequestHeader): Failure {
  if (isStorageError(error)) {
    const errno =
      error.errno === 'EPERM' || error.errno === 'EINVAL' || error.errno === 'ENOSPC' || error.errno === 'ENOMEM' ? nbdErrno[error.errno] : nbdErrno.EIO;
    return { errno, message: error.message };
  }
  log('error', 'unexpected error serving an NBD request', {
    command: commandName(request.type),
    error: error instanceof Error ? (error.stack ?? error.message) : String(error),
  });
  return { errno: nbdErrno.EIO, message: 'internal error' };
}
