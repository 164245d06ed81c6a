// The NBD wire format (doc/proto.md of NetworkBlockDevice/nbd): constants, and pure encoders and
// decoders for the fixed newstyle handshake, option haggling and the transmission phase. No I/O.
//
// Every decoder takes bytes a client sent and never trusts a length in them: it either returns
// a value, or says why the bytes are invalid. Offsets are u64 on the wire; one past 2^53 cannot be
// a JS number exactly, and is decoded as Infinity, which lies beyond every export.

export const nbdMagic = 0x4e42444d41474943n; // "NBDMAGIC"
export const optionMagic = 0x49484156454f5054n; // "IHAVEOPT"
export const optionReplyMagic = 0x0003e889045565a9n;
export const requestMagic = 0x25609513;
export const simpleReplyMagic = 0x67446698;
export const structuredReplyMagic = 0x668e33ef;

// Handshake flags (server) and client flags.
export const handshakeFlag = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;
export const clientFlag = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;
export const clientFlagsKnown = clientFlag.fixedNewstyle | clientFlag.noZeroes;

// Transmission flags.
export const transmissionFlag = {
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  sendDf: 1 << 7,
  canMultiConn: 1 << 8,
  sendResize: 1 << 9,
  sendCache: 1 << 10,
  sendFastZero: 1 << 11,
} as const;

export const option = {
  exportName: 1,
  abort: 2,
  list: 3,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
  listMetaContext: 9,
  setMetaContext: 10,
} as const;

const replyErrorBit = 0x8000_0000;
export const optionReply = {
  ack: 1,
  server: 2,
  info: 3,
  metaContext: 4,
  errUnsup: replyErrorBit + 1,
  errPolicy: replyErrorBit + 2,
  errInvalid: replyErrorBit + 3,
  errPlatform: replyErrorBit + 4,
  errTlsReqd: replyErrorBit + 5,
  errUnknown: replyErrorBit + 6,
  errShutdown: replyErrorBit + 7,
  errBlockSizeReqd: replyErrorBit + 8,
  errTooBig: replyErrorBit + 9,
} as const;

export const info = { export: 0, name: 1, description: 2, blockSize: 3 } as const;

export const command = {
  read: 0,
  write: 1,
  disc: 2,
  flush: 3,
  trim: 4,
  cache: 5,
  writeZeroes: 6,
  blockStatus: 7,
} as const;

export const commandFlag = { fua: 1 << 0, noHole: 1 << 1, df: 1 << 2, reqOne: 1 << 3, fastZero: 1 << 4 } as const;
/** Flags this server understands; FAST_ZERO is not advertised, so a client must not send it. */
export const commandFlagsKnown = commandFlag.fua | commandFlag.noHole | commandFlag.df | commandFlag.reqOne;

export const replyFlag = { done: 1 << 0 } as const;
export const replyType = {
  none: 0,
  offsetData: 1,
  offsetHole: 2,
  blockStatus: 5,
  error: 0x8001,
  errorOffset: 0x8002,
} as const;

/** The error values of the transmission phase (the only ones a client may see). */
export const nbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrnoName = keyof typeof nbdErrno;

/** base:allocation flags of a block status descriptor. */
export const blockState = { hole: 1 << 0, zero: 1 << 1 } as const;
export const baseAllocation = 'base:allocation';

// Sizes of the fixed parts of messages.
export const greetingBytes = 18;
export const clientFlagsBytes = 4;
export const optionHeaderBytes = 16;
export const requestHeaderBytes = 28;
export const simpleReplyBytes = 16;
export const structuredHeaderBytes = 20;
/** A structured OFFSET_DATA chunk's header with its offset, before the data. */
export const offsetDataHeaderBytes = structuredHeaderBytes + 8;
export const exportNameZeroPadBytes = 124;

const twoTo32 = 4_294_967_296;

/** The server's opening: NBDMAGIC, IHAVEOPT and the handshake flags. */
export function encodeGreeting(): Buffer {
  const out = Buffer.alloc(greetingBytes);
  out.writeBigUInt64BE(nbdMagic, 0);
  out.writeBigUInt64BE(optionMagic, 8);
  out.writeUInt16BE(handshakeFlag.fixedNewstyle | handshakeFlag.noZeroes, 16);
  return out;
}

/** The client's flags; unknown bits make the session invalid (the server must drop it). */
export function decodeClientFlags(bytes: Buffer): { ok: true; noZeroes: boolean; fixedNewstyle: boolean } | { ok: false; reason: string } {
  const flags = bytes.readUInt32BE(0);
  if ((flags & ~clientFlagsKnown) !== 0) return { ok: false, reason: `unknown client flags 0x${flags.toString(16)}` };
  return { ok: true, noZeroes: (flags & clientFlag.noZeroes) !== 0, fixedNewstyle: (flags & clientFlag.fixedNewstyle) !== 0 };
}

export interface OptionHeader {
  readonly option: number;
  readonly lengthBytes: number;
}

export function decodeOptionHeader(bytes: Buffer, at = 0): { ok: true; header: OptionHeader } | { ok: false; reason: string } {
  if (bytes.readBigUInt64BE(at) !== optionMagic) return { ok: false, reason: 'option without IHAVEOPT magic' };
  return { ok: true, header: { option: bytes.readUInt32BE(at + 8), lengthBytes: bytes.readUInt32BE(at + 12) } };
}

/** One option reply: magic, the option it answers, the reply type and its data. */
export function encodeOptionReply(optionType: number, type: number, data: Buffer = emptyBuffer): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(optionReplyMagic, 0);
  out.writeUInt32BE(optionType >>> 0, 8);
  out.writeUInt32BE(type >>> 0, 12);
  out.writeUInt32BE(data.length, 16);
  data.copy(out, 20);
  return out;
}

/** An error reply, with a message for humans (cut to the protocol's string limit). */
export function encodeOptionError(optionType: number, type: number, message: string): Buffer {
  return encodeOptionReply(optionType, type, utf8Limited(message));
}

export function encodeReplyServer(exportName: string): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const data = Buffer.allocUnsafe(4 + name.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  return encodeOptionReply(option.list, optionReply.server, data);
}

export function encodeInfoExport(optionType: number, sizeBytes: number, flags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(info.export, 0);
  writeU64(data, 2, sizeBytes);
  data.writeUInt16BE(flags, 10);
  return encodeOptionReply(optionType, optionReply.info, data);
}

export function encodeInfoBlockSize(optionType: number, minimumBytes: number, preferredBytes: number, maximumBytes: number): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(info.blockSize, 0);
  data.writeUInt32BE(minimumBytes, 2);
  data.writeUInt32BE(preferredBytes, 6);
  data.writeUInt32BE(maximumBytes, 10);
  return encodeOptionReply(optionType, optionReply.info, data);
}

export function encodeInfoText(optionType: number, infoType: typeof info.name | typeof info.description, text: string): Buffer {
  const body = utf8Limited(text);
  const data = Buffer.allocUnsafe(2 + body.length);
  data.writeUInt16BE(infoType, 0);
  body.copy(data, 2);
  return encodeOptionReply(optionType, optionReply.info, data);
}

export function encodeMetaContext(optionType: number, contextId: number, name: string): Buffer {
  const body = Buffer.from(name, 'utf8');
  const data = Buffer.allocUnsafe(4 + body.length);
  data.writeUInt32BE(contextId, 0);
  body.copy(data, 4);
  return encodeOptionReply(optionType, optionReply.metaContext, data);
}

/** The answer to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(sizeBytes: number, flags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(10 + (noZeroes ? 0 : exportNameZeroPadBytes));
  writeU64(out, 0, sizeBytes);
  out.writeUInt16BE(flags, 8);
  return out;
}

export interface InfoRequest {
  readonly exportName: string;
  readonly infoTypes: readonly number[];
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: name length, name, count of info requests, requests. */
export function decodeInfoRequest(data: Buffer): { ok: true; request: InfoRequest } | { ok: false; reason: string } {
  if (data.length < 6) return { ok: false, reason: 'INFO/GO data shorter than 6 bytes' };
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return { ok: false, reason: 'export name longer than the option data' };
  if (nameBytes > nbdStringBytesMaxForCodec) return { ok: false, reason: 'export name longer than 4096 bytes' };
  const exportName = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) return { ok: false, reason: 'INFO/GO data length does not match its info request count' };
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index++) infoTypes.push(data.readUInt16BE(6 + nameBytes + 2 * index));
  return { ok: true, request: { exportName, infoTypes } };
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

/** The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function decodeMetaContextRequest(data: Buffer): { ok: true; request: MetaContextRequest } | { ok: false; reason: string } {
  if (data.length < 8) return { ok: false, reason: 'meta context data shorter than 8 bytes' };
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return { ok: false, reason: 'export name longer than the option data' };
  if (nameBytes > nbdStringBytesMaxForCodec) return { ok: false, reason: 'export name longer than 4096 bytes' };
  const exportName = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt32BE(4 + nameBytes);
  let at = 8 + nameBytes;
  // Each query takes at least its 4-byte length: a count the data cannot hold is refused at once,
  // before any loop runs over it.
  if (count > (data.length - at) / 4) return { ok: false, reason: 'more queries than the option data can hold' };
  const queries: string[] = [];
  for (let index = 0; index < count; index++) {
    if (at + 4 > data.length) return { ok: false, reason: 'query length past the option data' };
    const queryBytes = data.readUInt32BE(at);
    at += 4;
    if (queryBytes > data.length - at) return { ok: false, reason: 'query longer than the option data' };
    queries.push(data.toString('utf8', at, at + queryBytes));
    at += queryBytes;
  }
  if (at !== data.length) return { ok: false, reason: 'trailing bytes after the last query' };
  return { ok: true, request: { exportName, queries } };
}

/** Which of the queries select (SET) or list (LIST) base:allocation: the only context served. */
export function matchesBaseAllocation(queries: readonly string[], listing: boolean): boolean {
  if (listing && queries.length === 0) return true;
  return queries.some((query) => query === baseAllocation || (listing && query === 'base:'));
}

export interface RequestHeader {
  readonly flags: number;
  readonly type: number;
  /** The client's opaque 64-bit cookie, as two 32-bit halves (copied back into the reply). */
  readonly cookieHigh: number;
  readonly cookieLow: number;
  /** Exact up to 2^53; Infinity beyond (past the end of every export). */
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** A transmission request header, or null when its magic is wrong (the stream is out of sync). */
export function decodeRequestHeader(bytes: Buffer, at = 0): RequestHeader | null {
  if (bytes.readUInt32BE(at) !== requestMagic) return null;
  const offsetHigh = bytes.readUInt32BE(at + 16);
  const offsetLow = bytes.readUInt32BE(at + 20);
  return {
    flags: bytes.readUInt16BE(at + 4),
    type: bytes.readUInt16BE(at + 6),
    cookieHigh: bytes.readUInt32BE(at + 8),
    cookieLow: bytes.readUInt32BE(at + 12),
    offsetBytes: offsetHigh >= 0x20_0000 ? Number.POSITIVE_INFINITY : offsetHigh * twoTo32 + offsetLow,
    lengthBytes: bytes.readUInt32BE(at + 24),
  };
}

/** For tests and clients: a request header as a client sends it. */
export function encodeRequestHeader(request: {
  flags?: number;
  type: number;
  cookie: bigint;
  offsetBytes: bigint | number;
  lengthBytes: number;
}): Buffer {
  const out = Buffer.allocUnsafe(requestHeaderBytes);
  out.writeUInt32BE(requestMagic, 0);
  out.writeUInt16BE(request.flags ?? 0, 4);
  out.writeUInt16BE(request.type, 6);
  out.writeBigUInt64BE(request.cookie, 8);
  out.writeBigUInt64BE(BigInt(request.offsetBytes), 16);
  out.writeUInt32BE(request.lengthBytes >>> 0, 24);
  return out;
}

export interface Cookie {
  readonly cookieHigh: number;
  readonly cookieLow: number;
}

export function encodeSimpleReply(error: number, cookie: Cookie): Buffer {
  const out = Buffer.allocUnsafe(simpleReplyBytes);
  writeSimpleReply(out, error, cookie);
  return out;
}

/** A simple reply written into the first `simpleReplyBytes` of `out` (data may follow it there). */
export function writeSimpleReply(out: Buffer, error: number, cookie: Cookie): void {
  out.writeUInt32BE(simpleReplyMagic, 0);
  out.writeUInt32BE(error, 4);
  out.writeUInt32BE(cookie.cookieHigh, 8);
  out.writeUInt32BE(cookie.cookieLow, 12);
}

function writeStructuredHeader(out: Buffer, flags: number, type: number, cookie: Cookie, lengthBytes: number): void {
  out.writeUInt32BE(structuredReplyMagic, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.writeUInt32BE(cookie.cookieHigh, 8);
  out.writeUInt32BE(cookie.cookieLow, 12);
  out.writeUInt32BE(lengthBytes, 16);
}

/** The final NBD_REPLY_TYPE_NONE chunk: success of a command with nothing to return. */
export function encodeStructuredDone(cookie: Cookie): Buffer {
  const out = Buffer.allocUnsafe(structuredHeaderBytes);
  writeStructuredHeader(out, replyFlag.done, replyType.none, cookie, 0);
  return out;
}

/** Header and offset of an OFFSET_DATA chunk; the `dataBytes` of data follow it on the wire. */
export function encodeOffsetDataHeader(cookie: Cookie, offsetBytes: number, dataBytes: number, done: boolean): Buffer {
  const out = Buffer.allocUnsafe(offsetDataHeaderBytes);
  writeOffsetDataHeader(out, cookie, offsetBytes, dataBytes, done);
  return out;
}

/** An OFFSET_DATA chunk's header written into the first `offsetDataHeaderBytes` of `out` (the data follows). */
export function writeOffsetDataHeader(out: Buffer, cookie: Cookie, offsetBytes: number, dataBytes: number, done: boolean): void {
  writeStructuredHeader(out, done ? replyFlag.done : 0, replyType.offsetData, cookie, 8 + dataBytes);
  writeU64(out, structuredHeaderBytes, offsetBytes);
}

export function encodeOffsetHole(cookie: Cookie, offsetBytes: number, holeBytes: number, done: boolean): Buffer {
  const out = Buffer.allocUnsafe(structuredHeaderBytes + 12);
  writeStructuredHeader(out, done ? replyFlag.done : 0, replyType.offsetHole, cookie, 12);
  writeU64(out, structuredHeaderBytes, offsetBytes);
  out.writeUInt32BE(holeBytes, structuredHeaderBytes + 8);
  return out;
}

/** A final NBD_REPLY_TYPE_ERROR chunk with a message for humans. */
export function encodeStructuredError(cookie: Cookie, error: number, message: string): Buffer {
  const text = utf8Limited(message);
  const out = Buffer.allocUnsafe(structuredHeaderBytes + 6 + text.length);
  writeStructuredHeader(out, replyFlag.done, replyType.error, cookie, 6 + text.length);
  out.writeUInt32BE(error, structuredHeaderBytes);
  out.writeUInt16BE(text.length, structuredHeaderBytes + 4);
  text.copy(out, structuredHeaderBytes + 6);
  return out;
}

export interface StatusDescriptor {
  readonly lengthBytes: number;
  readonly flags: number;
}

/** One final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one metadata context. */
export function encodeBlockStatus(cookie: Cookie, contextId: number, descriptors: readonly StatusDescriptor[]): Buffer {
  const out = Buffer.allocUnsafe(structuredHeaderBytes + 4 + 8 * descriptors.length);
  writeStructuredHeader(out, replyFlag.done, replyType.blockStatus, cookie, 4 + 8 * descriptors.length);
  out.writeUInt32BE(contextId, structuredHeaderBytes);
  let at = structuredHeaderBytes + 4;
  for (const descriptor of descriptors) {
    out.writeUInt32BE(descriptor.lengthBytes, at);
    out.writeUInt32BE(descriptor.flags, at + 4);
    at += 8;
  }
  return out;
}

/** A name for logs and errors. */
export function commandName(type: number): string {
  for (const [name, value] of Object.entries(command)) if (value === type) return name;
  return `unknown(${type})`;
}

export function optionName(type: number): string {
  for (const [name, value] of Object.entries(option)) if (value === type) return name;
  return `unknown(${type})`;
}

const emptyBuffer = Buffer.alloc(0);
// proto.md's string limit, kept here so the codec stays free of the node's constants.
const nbdStringBytesMaxForCodec = 4096;

function writeU64(out: Buffer, at: number, value: number): void {
  out.writeUInt32BE(Math.floor(value / twoTo32), at);
  out.writeUInt32BE(value % twoTo32, at + 4);
}

/** UTF-8 bytes of `text`, cut to at most 4096 bytes (never inside a character). */
function utf8Limited(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= nbdStringBytesMaxForCodec) return bytes;
  let end = nbdStringBytesMaxForCodec;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
