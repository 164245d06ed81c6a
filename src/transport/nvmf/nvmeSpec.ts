// NVMe and NVMe-oF numbers the target speaks: opcodes, status codes, registers, log pages
// (NVMe base 1.4, NVMe-oF 1.1; SPDK's include/spdk/nvme_spec.h and nvmf_spec.h name the same).

export const sqeBytes = 64;
export const cqeBytes = 16;

export const adminOpcode = {
  getLogPage: 0x02,
  identify: 0x06,
  abort: 0x08,
  setFeatures: 0x09,
  getFeatures: 0x0a,
  asyncEventRequest: 0x0c,
  keepAlive: 0x18,
  fabrics: 0x7f,
} as const;

export const ioOpcode = {
  flush: 0x00,
  write: 0x01,
  read: 0x02,
  writeZeroes: 0x08,
  datasetManagement: 0x09,
  fabrics: 0x7f,
} as const;

export const fabricsType = {
  propertySet: 0x00,
  connect: 0x01,
  propertyGet: 0x04,
  authSend: 0x05,
  authReceive: 0x06,
  disconnect: 0x08,
} as const;

/** Status Code Type (bits 9..11 of the status field) and Status Code (bits 1..8). */
export const sct = { generic: 0, commandSpecific: 1, media: 2 } as const;

export const genericStatus = {
  success: 0x00,
  invalidOpcode: 0x01,
  invalidField: 0x02,
  dataTransferError: 0x04,
  internalError: 0x06,
  abortedByRequest: 0x07,
  invalidNamespaceOrFormat: 0x0b,
  commandSequenceError: 0x0c,
  invalidSglSegmentDescriptor: 0x0d,
  dataSglLengthInvalid: 0x0f,
  sglDescriptorTypeInvalid: 0x11,
  sglOffsetInvalid: 0x16,
  namespaceIsWriteProtected: 0x20,
  lbaOutOfRange: 0x80,
  namespaceNotReady: 0x82,
} as const;

export const commandSpecificStatus = {
  invalidQueueSize: 0x02,
  asyncEventRequestLimitExceeded: 0x05,
  invalidLogPage: 0x09,
  featureIdNotSaveable: 0x0d,
  connectIncompatibleFormat: 0x80,
  connectControllerBusy: 0x81,
  connectInvalidParameters: 0x82,
  connectInvalidHost: 0x84,
} as const;

export const mediaStatus = { writeFault: 0x80, unrecoveredReadError: 0x81 } as const;

/** The 16-bit status field of a CQE without the phase bit: DNR set when retrying cannot help. */
export function statusField(type: number, code: number, doNotRetry = type !== sct.generic || code !== genericStatus.success): number {
  return ((doNotRetry ? 1 : 0) << 15) | ((type & 0x7) << 9) | ((code & 0xff) << 1);
}

export const statusSuccess = 0;

/** Controller properties (the registers a fabrics host reads with Property Get). */
export const property = {
  cap: 0x00,
  vs: 0x08,
  intms: 0x0c,
  intmc: 0x10,
  cc: 0x14,
  csts: 0x1c,
  nssr: 0x20,
  aqa: 0x24,
  asq: 0x28,
  acq: 0x30,
} as const;

/** NVMe 1.3, as SPDK's target reports. */
export const versionRegister = 0x00010300;

export const identifyCns = {
  namespace: 0x00,
  controller: 0x01,
  activeNamespaceList: 0x02,
  namespaceDescriptors: 0x03,
} as const;

export const logPage = {
  error: 0x01,
  health: 0x02,
  firmwareSlot: 0x03,
  changedNamespaces: 0x04,
  commandEffects: 0x05,
  ana: 0x0c,
  discovery: 0x70,
} as const;

export const featureId = {
  arbitration: 0x01,
  powerManagement: 0x02,
  temperatureThreshold: 0x04,
  errorRecovery: 0x05,
  volatileWriteCache: 0x06,
  numberOfQueues: 0x07,
  interruptCoalescing: 0x08,
  writeAtomicity: 0x0a,
  asyncEventConfiguration: 0x0b,
  keepAliveTimer: 0x0f,
  hostIdentifier: 0x81,
} as const;

/** The well-known NQN of the discovery subsystem. */
export const discoveryNqn = 'nqn.2014-08.org.nvmexpress.discovery';

/** Controller type in Identify Controller (CNTRLTYPE). */
export const controllerType = { io: 1, discovery: 2 } as const;

/** Asynchronous event: type notice, "namespace attribute changed", log page 04h; and the discovery log change. */
export const asyncEvent = {
  namespaceAttributeChanged: (0x02 << 0) | (0x00 << 8) | (logPage.changedNamespaces << 16),
  discoveryLogChanged: (0x02 << 0) | (0xf0 << 8) | (logPage.discovery << 16),
} as const;

// Little-endian fields read and written by index. The hot path (every PDU header, every command)
// uses these rather than Buffer's readUInt32LE & co: a Buffer method call there costs ~10 ns (a
// generic property load off Buffer.prototype each time, in optimized code too), these ~1 ns.
// Writers take values already in range (the fields' widths): unlike Buffer's, they do not check.

export function readU16(buffer: Uint8Array, offset: number): number {
  return buffer[offset]! | (buffer[offset + 1]! << 8);
}

export function readU32(buffer: Uint8Array, offset: number): number {
  return (buffer[offset]! | (buffer[offset + 1]! << 8) | (buffer[offset + 2]! << 16)) + buffer[offset + 3]! * 0x100_0000;
}

export function writeU16(buffer: Uint8Array, offset: number, value: number): void {
  buffer[offset] = value;
  buffer[offset + 1] = value >>> 8;
}

export function writeU32(buffer: Uint8Array, offset: number, value: number): void {
  buffer[offset] = value;
  buffer[offset + 1] = value >>> 8;
  buffer[offset + 2] = value >>> 16;
  buffer[offset + 3] = value >>> 24;
}

/** Reads a 64-bit little-endian field as a number; values past 2^53 become Infinity, so range checks refuse them. */
export function readU64(buffer: Uint8Array, offset: number): number {
  const high = readU32(buffer, offset + 4);
  if (high >= 0x200000) return Number.POSITIVE_INFINITY;
  return high * 0x1_0000_0000 + readU32(buffer, offset);
}

export function writeU64(buffer: Buffer, offset: number, value: number): void {
  buffer.writeUInt32LE(value % 0x1_0000_0000 >>> 0, offset);
  buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000) >>> 0, offset + 4);
}

/** Writes an ASCII string padded with `pad` to `length` bytes (Identify's serial/model: spaces; NQNs: NULs). */
export function writePadded(buffer: Buffer, offset: number, length: number, text: string, pad: number): void {
  buffer.fill(pad, offset, offset + length);
  buffer.write(text.slice(0, length), offset, length, 'latin1');
}

/** A NUL-terminated string of at most `length` bytes (NQNs in the Connect data). */
export function readNulTerminated(buffer: Buffer, offset: number, length: number): string {
  const end = buffer.indexOf(0, offset);
  return buffer.toString('utf8', offset, end < 0 || end > offset + length ? offset + length : end);
}
