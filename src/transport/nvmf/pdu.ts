// NVMe/TCP PDU codec (NVMe-oF TCP transport, NVMe/TCP 1.0): PDU types, header layouts and the
// encoders of the PDUs a controller sends. The connection (queuePair.ts) parses what hosts send.
import { crc32c } from './crc32c.ts';
import { cqeBytes, sqeBytes, writeU16, writeU32 } from './nvmeSpec.ts';

export const pduType = {
  icReq: 0x00,
  icResp: 0x01,
  h2cTermReq: 0x02,
  c2hTermReq: 0x03,
  capsuleCmd: 0x04,
  capsuleResp: 0x05,
  h2cData: 0x06,
  c2hData: 0x07,
  r2t: 0x09,
} as const;

export const pduFlag = {
  headerDigest: 0x01,
  dataDigest: 0x02,
  /** H2CData/C2HData: the last PDU of this command's data (of this R2T, for H2C). */
  lastPdu: 0x04,
  /** C2HData: the command succeeded; no CapsuleResp follows. */
  success: 0x08,
} as const;

export const commonHeaderBytes = 8;
export const digestBytes = 4;
export const icBytes = 128;
export const capsuleCmdHeaderBytes = commonHeaderBytes + sqeBytes;
export const capsuleRespHeaderBytes = commonHeaderBytes + cqeBytes;
export const dataHeaderBytes = 24;
export const r2tHeaderBytes = 24;
export const termReqHeaderBytes = 24;
/** A TermReq carries at most this much of the offending PDU's header. */
export const termReqErrorDataBytesMax = 128;

/** The header length each PDU type must have (hlen), or undefined for a type a host must not send. */
export function expectedHostHeaderBytes(type: number): number | undefined {
  switch (type) {
    case pduType.icReq:
      return icBytes;
    case pduType.h2cTermReq:
      return termReqHeaderBytes;
    case pduType.capsuleCmd:
      return capsuleCmdHeaderBytes;
    case pduType.h2cData:
      return dataHeaderBytes;
    default:
      return undefined;
  }
}

/** Fatal Error Status of a TermReq. */
export const termReqFes = {
  invalidHeaderField: 0x01,
  pduSequenceError: 0x02,
  headerDigestError: 0x03,
  dataTransferOutOfRange: 0x04,
  dataTransferLimitExceeded: 0x05,
  unsupportedParameter: 0x06,
} as const;

/** What a connection negotiated in ICReq/ICResp. */
export interface Digests {
  readonly header: boolean;
  readonly data: boolean;
}

export function encodeIcResp(options: { digests: Digests; maxH2cDataBytes: number }): Buffer {
  const pdu = Buffer.alloc(icBytes);
  writeCommonHeader(pdu, pduType.icResp, 0, icBytes, 0, icBytes);
  pdu.writeUInt16LE(0, 8); // PFV 0: the only version
  pdu.writeUInt8(0, 10); // CPDA 0: host data may start right after the header (and digest)
  pdu.writeUInt8((options.digests.header ? 1 : 0) | (options.digests.data ? 2 : 0), 11);
  pdu.writeUInt32LE(options.maxH2cDataBytes, 12);
  return pdu;
}

/** The 8-byte common header every NVMe/TCP PDU starts with (host and controller PDUs alike). */
export function writeCommonHeader(pdu: Buffer, type: number, flags: number, hlen: number, pdo: number, plen: number): void {
  pdu[0] = type;
  pdu[1] = flags;
  pdu[2] = hlen;
  pdu[3] = pdo;
  writeU32(pdu, 4, plen);
}

/** Appends the header digest (CRC32C of the `hlen` header bytes) when it was negotiated. */
function sealHeader(pdu: Buffer, hlen: number, digests: Digests): void {
  if (digests.header) writeU32(pdu, hlen, crc32c(pdu, 0, hlen));
}

/** A CapsuleResp carrying one completion queue entry. */
export function encodeCapsuleResp(digests: Digests, cqe: { dw0: number; dw1: number; sqhd: number; cid: number; status: number }): Buffer {
  const plen = capsuleRespHeaderBytes + (digests.header ? digestBytes : 0);
  const pdu = Buffer.allocUnsafe(plen);
  writeCommonHeader(pdu, pduType.capsuleResp, digests.header ? pduFlag.headerDigest : 0, capsuleRespHeaderBytes, 0, plen);
  writeU32(pdu, 8, cqe.dw0 >>> 0);
  writeU32(pdu, 12, cqe.dw1 >>> 0);
  writeU16(pdu, 16, cqe.sqhd);
  writeU16(pdu, 18, 0); // SQID: reserved over fabrics
  writeU16(pdu, 20, cqe.cid);
  writeU16(pdu, 22, cqe.status);
  sealHeader(pdu, capsuleRespHeaderBytes, digests);
  return pdu;
}

/** Ready to Transfer: asks the host for `lengthBytes` of a command's data from `offsetBytes`. */
export function encodeR2t(digests: Digests, fields: { cid: number; ttag: number; offsetBytes: number; lengthBytes: number }): Buffer {
  const plen = r2tHeaderBytes + (digests.header ? digestBytes : 0);
  const pdu = Buffer.allocUnsafe(plen);
  writeCommonHeader(pdu, pduType.r2t, digests.header ? pduFlag.headerDigest : 0, r2tHeaderBytes, 0, plen);
  writeU16(pdu, 8, fields.cid);
  writeU16(pdu, 10, fields.ttag);
  writeU32(pdu, 12, fields.offsetBytes);
  writeU32(pdu, 16, fields.lengthBytes);
  writeU32(pdu, 20, 0);
  sealHeader(pdu, r2tHeaderBytes, digests);
  return pdu;
}

/**
 * The header (with digest and padding to the host's alignment) of a C2HData PDU whose data is
 * sent right behind it; `dataDigest` is the CRC32C of that data when data digests are on.
 */
export function encodeC2hDataHeader(
  digests: Digests,
  alignmentBytes: number,
  fields: { cid: number; offsetBytes: number; lengthBytes: number; last: boolean; success: boolean },
): Buffer {
  const pdu = Buffer.alloc(c2hDataOffset(digests, alignmentBytes));
  writeC2hDataHeader(pdu, digests, alignmentBytes, fields);
  return pdu;
}

/** Where a C2HData PDU's data starts (PDO): after the header and its digest, at the host's alignment. */
export function c2hDataOffset(digests: Digests, alignmentBytes: number): number {
  const headerEnd = dataHeaderBytes + (digests.header ? digestBytes : 0);
  return Math.ceil(headerEnd / alignmentBytes) * alignmentBytes;
}

/**
 * Writes a C2HData header (and zero padding up to PDO) at the front of `pdu`: the buffer whose
 * data follows it directly, so header and data leave in one socket write.
 */
export function writeC2hDataHeader(
  pdu: Buffer,
  digests: Digests,
  alignmentBytes: number,
  fields: { cid: number; offsetBytes: number; lengthBytes: number; last: boolean; success: boolean },
): void {
  const pdo = c2hDataOffset(digests, alignmentBytes);
  const plen = pdo + fields.lengthBytes + (digests.data ? digestBytes : 0);
  for (let at = dataHeaderBytes; at < pdo; at++) pdu[at] = 0;
  let flags = fields.last ? pduFlag.lastPdu : 0;
  if (fields.success) flags |= pduFlag.success;
  if (digests.header) flags |= pduFlag.headerDigest;
  if (digests.data) flags |= pduFlag.dataDigest;
  writeCommonHeader(pdu, pduType.c2hData, flags, dataHeaderBytes, pdo, plen);
  writeU16(pdu, 8, fields.cid);
  writeU16(pdu, 10, 0);
  writeU32(pdu, 12, fields.offsetBytes);
  writeU32(pdu, 16, fields.lengthBytes);
  writeU32(pdu, 20, 0);
  sealHeader(pdu, dataHeaderBytes, digests);
}

/** A data digest trailer. */
export function encodeDataDigest(data: Uint8Array): Buffer {
  const trailer = Buffer.allocUnsafe(digestBytes);
  trailer.writeUInt32LE(crc32c(data), 0);
  return trailer;
}

/**
 * C2HTermReq: the controller ends the connection for a fatal transport error, quoting the
 * offending PDU's header (at most 128 bytes). `fei` is the byte offset of the bad field (or the
 * digest found, for a header digest error).
 */
export function encodeC2hTermReq(fes: number, fei: number, offending: Uint8Array): Buffer {
  const quoted = offending.subarray(0, termReqErrorDataBytesMax);
  const plen = termReqHeaderBytes + quoted.length;
  const pdu = Buffer.alloc(plen);
  writeCommonHeader(pdu, pduType.c2hTermReq, 0, termReqHeaderBytes, 0, plen);
  pdu.writeUInt16LE(fes, 8);
  pdu.writeUInt32LE(fei >>> 0, 10);
  pdu.set(quoted, termReqHeaderBytes);
  return pdu;
}
