// A small NBD client for tests that must send what real clients never do (garbage, huge lengths,
// half a write). Real clients (qemu-io, nbdcopy, nbdinfo) are used in test/integration/nbd.test.ts.
import { type Socket, connect } from 'node:net';
import { connect as connectTls } from 'node:tls';
import type { NbdAddress } from '../../src/transport/nbd/server.ts';
import {
  clientFlag,
  command,
  encodeRequestHeader,
  info,
  nbdMagic,
  option,
  optionMagic,
  optionReply,
  optionReplyMagic,
  replyFlag,
  simpleReplyMagic,
  structuredReplyMagic,
} from '../../src/transport/nbd/protocol.ts';

/** Reads exact byte counts from a socket. */
export class ByteReader {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { bytes: number; resolve: (data: Buffer) => void; reject: (error: Error) => void } | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.once('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  read(bytes: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
      this.wake();
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.buffered >= waiter.bytes) {
      this.waiter = undefined;
      const all = Buffer.concat(this.chunks);
      this.chunks.length = 0;
      this.chunks.push(all.subarray(waiter.bytes));
      this.buffered -= waiter.bytes;
      waiter.resolve(all.subarray(0, waiter.bytes));
    } else if (this.ended) {
      this.waiter = undefined;
      waiter.reject(new Error(`connection closed with ${this.buffered} of ${waiter.bytes} bytes`));
    }
  }
}

export function connectRaw(address: NbdAddress): Promise<{ socket: Socket; reader: ByteReader }> {
  return new Promise((resolve, reject) => {
    const socket = address.kind === 'tcp' ? connect(address.port, address.host) : connect(address.path);
    const reader = new ByteReader(socket);
    socket.once('connect', () => resolve({ socket, reader }));
    socket.once('error', reject);
  });
}

export function optionRequest(type: number, data: Buffer = Buffer.alloc(0), declaredBytes = data.length): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(optionMagic, 0);
  header.writeUInt32BE(type, 8);
  header.writeUInt32BE(declaredBytes, 12);
  return Buffer.concat([header, data]);
}

export function goData(exportName: string, infoTypes: number[] = [info.blockSize]): Buffer {
  const name = Buffer.from(exportName);
  const out = Buffer.alloc(4 + name.length + 2 + 2 * infoTypes.length);
  out.writeUInt32BE(name.length, 0);
  name.copy(out, 4);
  out.writeUInt16BE(infoTypes.length, 4 + name.length);
  infoTypes.forEach((type, index) => out.writeUInt16BE(type, 6 + name.length + 2 * index));
  return out;
}

export function metaContextData(exportName: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(exportName), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(parts[1]!.length, 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const query of queries) {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(Buffer.byteLength(query), 0);
    parts.push(length, Buffer.from(query));
  }
  return Buffer.concat(parts);
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export async function readOptionReply(reader: ByteReader): Promise<OptionReply> {
  const header = await reader.read(20);
  if (header.readBigUInt64BE(0) !== optionReplyMagic) throw new Error('bad option reply magic');
  const length = header.readUInt32BE(16);
  return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: length > 0 ? await reader.read(length) : Buffer.alloc(0) };
}

/** Reads replies up to and including the final one (ACK or an error). */
export async function readOptionReplies(reader: ByteReader): Promise<OptionReply[]> {
  const replies: OptionReply[] = [];
  for (;;) {
    const reply = await readOptionReply(reader);
    replies.push(reply);
    if (reply.type === optionReply.ack || reply.type >= 0x8000_0000) return replies;
  }
}

/** A TLS-PSK identity and key, as a line of a psktool key file holds them. */
export interface PskCredentials {
  readonly identity: string;
  readonly key: Buffer;
}

/**
 * NBD_OPT_STARTTLS, then a TLS-PSK handshake over the socket (as qemu and libnbd do it); resolves
 * with the TLS socket and a reader of it, rejects when the server refuses or the handshake fails.
 */
export async function startTls(socket: Socket, reader: ByteReader, credentials: PskCredentials): Promise<{ socket: Socket; reader: ByteReader }> {
  socket.write(optionRequest(option.startTls));
  const reply = await readOptionReply(reader);
  if (reply.type !== optionReply.ack) throw new Error(`STARTTLS refused: 0x${reply.type.toString(16)} ${reply.data.toString()}`);
  const secure = connectTls({
    socket,
    // Node offers no PSK suite for TLS 1.2 unless named; TLS 1.3 takes the key with its defaults.
    ciphers: 'PSK-AES256-GCM-SHA384:TLS_AES_128_GCM_SHA256',
    pskCallback: () => ({ identity: credentials.identity, psk: credentials.key }),
    checkServerIdentity: () => undefined,
  });
  const secureReader = new ByteReader(secure);
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', () => resolve());
    secure.once('error', reject);
    secure.once('close', () => reject(new Error('connection closed during the TLS handshake')));
  });
  return { socket: secure, reader: secureReader };
}

/** Reads the greeting and sends the client flags. */
export async function startHandshake(socket: Socket, reader: ByteReader, flags = clientFlag.fixedNewstyle | clientFlag.noZeroes): Promise<number> {
  const greeting = await reader.read(18);
  if (greeting.readBigUInt64BE(0) !== nbdMagic || greeting.readBigUInt64BE(8) !== optionMagic) throw new Error('bad greeting');
  const out = Buffer.alloc(4);
  out.writeUInt32BE(flags, 0);
  socket.write(out);
  return greeting.readUInt16BE(16);
}

export interface Chunk {
  flags: number;
  type: number;
  payload: Buffer;
}

export interface Reply {
  cookie: bigint;
  /** Simple reply error, or the first error chunk's error; 0 on success. */
  error: number;
  /** READ data (simple reply), reassembled from OFFSET_DATA/OFFSET_HOLE chunks when structured. */
  data?: Buffer;
  chunks: Chunk[];
  message?: string;
}

interface Pending {
  type: number;
  offsetBytes: number;
  lengthBytes: number;
  resolve: (reply: Reply) => void;
  chunks: Chunk[];
}

/** A connected client in the transmission phase. */
export class NbdTestClient {
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  readonly done: Promise<void>;

  private constructor(
    readonly socket: Socket,
    readonly reader: ByteReader,
    readonly sizeBytes: number,
    readonly transmissionFlags: number,
    readonly structured: boolean,
  ) {
    // A reply that can never come (the server closed) resolves as error -1, so tests fail on it
    // instead of waiting for the test timeout.
    this.done = this.readLoop().catch(() => {
      for (const [cookie, pending] of this.pending) pending.resolve({ cookie, error: -1, chunks: pending.chunks });
      this.pending.clear();
    });
  }

  /** Handshakes with NBD_OPT_GO (optionally TLS-PSK, then structured replies and base:allocation first). */
  static async open(
    address: NbdAddress,
    exportName: string,
    options: { structured?: boolean; allocation?: boolean; tls?: PskCredentials } = {},
  ): Promise<NbdTestClient> {
    const plain = await connectRaw(address);
    await startHandshake(plain.socket, plain.reader);
    const { socket, reader } = options.tls ? await startTls(plain.socket, plain.reader, options.tls) : plain;
    if (options.structured) {
      socket.write(optionRequest(option.structuredReply));
      const [reply] = await readOptionReplies(reader);
      if (reply!.type !== optionReply.ack) throw new Error('structured replies refused');
      if (options.allocation) {
        socket.write(optionRequest(option.setMetaContext, metaContextData(exportName, ['base:allocation'])));
        await readOptionReplies(reader);
      }
    }
    socket.write(optionRequest(option.go, goData(exportName)));
    const replies = await readOptionReplies(reader);
    const last = replies.at(-1)!;
    if (last.type !== optionReply.ack) throw new Error(`GO refused: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exportInfo = replies.find((reply) => reply.type === optionReply.info && reply.data.readUInt16BE(0) === info.export)!;
    const size = Number(exportInfo.data.readBigUInt64BE(2));
    return new NbdTestClient(socket, reader, size, exportInfo.data.readUInt16BE(10), options.structured ?? false);
  }

  /** Sends one request (and its payload) and resolves with its reply. */
  request(type: number, offsetBytes: bigint | number, lengthBytes: number, options: { flags?: number; data?: Buffer } = {}): Promise<Reply> {
    const cookie = this.nextCookie++;
    const header = encodeRequestHeader({ type, cookie, offsetBytes, lengthBytes, flags: options.flags ?? 0 });
    const reply = new Promise<Reply>((resolve) =>
      this.pending.set(cookie, { type, offsetBytes: Number(offsetBytes), lengthBytes, resolve, chunks: [] }),
    );
    this.socket.write(options.data ? Buffer.concat([header, options.data]) : header);
    return reply;
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Reply> {
    return this.request(command.read, offsetBytes, lengthBytes);
  }

  write(offsetBytes: number, data: Buffer, flags = 0): Promise<Reply> {
    return this.request(command.write, offsetBytes, data.length, { data, flags });
  }

  /** NBD_CMD_DISC, then waits for the server to close. */
  async disconnect(): Promise<void> {
    this.socket.write(encodeRequestHeader({ type: command.disc, cookie: 0n, offsetBytes: 0, lengthBytes: 0 }));
    await this.reader.closed;
  }

  close(): void {
    this.socket.destroy();
  }

  private async readLoop(): Promise<void> {
    for (;;) {
      const magicBytes = await this.reader.read(4);
      const magic = magicBytes.readUInt32BE(0);
      if (magic === simpleReplyMagic) {
        const rest = await this.reader.read(12);
        const cookie = rest.readBigUInt64BE(4);
        const pending = this.take(cookie);
        const error = rest.readUInt32BE(0);
        const data = pending.type === command.read && error === 0 ? await this.reader.read(pending.lengthBytes) : undefined;
        pending.resolve({ cookie, error, chunks: [], ...(data ? { data } : {}) });
      } else if (magic === structuredReplyMagic) {
        const rest = await this.reader.read(16);
        const flags = rest.readUInt16BE(0);
        const type = rest.readUInt16BE(2);
        const cookie = rest.readBigUInt64BE(4);
        const length = rest.readUInt32BE(12);
        const payload = length > 0 ? await this.reader.read(length) : Buffer.alloc(0);
        const pending = this.pending.get(cookie);
        if (!pending) throw new Error(`structured reply for unknown cookie ${cookie}`);
        pending.chunks.push({ flags, type, payload });
        if (flags & replyFlag.done) pending.resolve(assemble(this.take(cookie), cookie));
      } else {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    }
  }

  private take(cookie: bigint): Pending {
    const pending = this.pending.get(cookie);
    if (!pending) throw new Error(`reply for unknown cookie ${cookie}`);
    this.pending.delete(cookie);
    return pending;
  }
}

function assemble(pending: Pending, cookie: bigint): Reply {
  const errorChunk = pending.chunks.find((chunk) => chunk.type & 0x8000);
  if (errorChunk) {
    const messageBytes = errorChunk.payload.readUInt16BE(4);
    return { cookie, error: errorChunk.payload.readUInt32BE(0), chunks: pending.chunks, message: errorChunk.payload.toString('utf8', 6, 6 + messageBytes) };
  }
  if (pending.type !== command.read) return { cookie, error: 0, chunks: pending.chunks };
  const data = Buffer.alloc(pending.lengthBytes);
  for (const chunk of pending.chunks) {
    if (chunk.type === 1) chunk.payload.copy(data, Number(chunk.payload.readBigUInt64BE(0)) - pending.offsetBytes, 8);
  }
  return { cookie, error: 0, chunks: pending.chunks, data };
}
