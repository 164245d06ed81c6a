// Chaining many CRCs of equal-length pieces, as crc64Combine does, at a table lookup per piece.
//
// A merge derives a snapshot's whole checksum from its per-cluster CRCs (issue 21 item 2): one
// crc64Combine per owned cluster. crc64Combine(a, b, L) is M·a ⊕ b, where M (multiplication by
// x^(8L) modulo the polynomial) is linear over GF(2); so M·a is the XOR of M applied to each byte
// of a in its place. Eight tables of 256 values, made from crc64Combine itself on the 64 single
// bits and by linearity, turn a step into eight lookups on 32-bit halves: ~0.05 µs where
// crc64Combine's BigInt loop costs ~6 µs (a snapshot of 1,000,000 clusters: 50 ms, not 6 s of
// event loop). The value is crc64Combine's bit for bit (test/checksum/crc64Chain.test.ts).
import { crc64Combine } from './crc64.ts';

interface ShiftTables {
  readonly low: Uint32Array;
  readonly high: Uint32Array;
}

const tablesByLength = new Map<number, ShiftTables>();

/** M·(b << 8k) for every byte value b at every byte position k, as 32-bit halves. */
function shiftTables(pieceBytes: number): ShiftTables {
  let tables = tablesByLength.get(pieceBytes);
  if (tables) return tables;
  const low = new Uint32Array(8 * 256);
  const high = new Uint32Array(8 * 256);
  for (let position = 0; position < 8; position++) {
    const base = position * 256;
    for (let bit = 0; bit < 8; bit++) {
      // crc64Combine(a, 0, L) = M·a: the operator applied to one bit.
      const shifted = crc64Combine(1n << BigInt(position * 8 + bit), 0n, pieceBytes);
      low[base + (1 << bit)] = Number(shifted & 0xffffffffn);
      high[base + (1 << bit)] = Number(shifted >> 32n);
    }
    for (let value = 3; value < 256; value++) {
      const lowestBit = value & -value;
      if (lowestBit === value) continue;
      low[base + value] = (low[base + lowestBit]! ^ low[base + (value ^ lowestBit)]!) >>> 0;
      high[base + value] = (high[base + lowestBit]! ^ high[base + (value ^ lowestBit)]!) >>> 0;
    }
  }
  tables = { low, high };
  // Checksums use one cluster size per lvstore: a handful of lengths at most.
  if (tablesByLength.size < 16) tablesByLength.set(pieceBytes, tables);
  return tables;
}

/**
 * The CRC of pieces of `pieceBytes` each, given their CRCs in order: what folding them with
 * `crc64Combine(running, crc, pieceBytes)` from 0 gives (0 for no piece, as a snapshot owning no
 * cluster has checksum 0).
 */
export class Crc64Chain {
  private readonly tables: ShiftTables;
  private low = 0;
  private high = 0;
  // A bigint goes in and out through these, without BigInt arithmetic per piece.
  private readonly word = new DataView(new ArrayBuffer(8));

  constructor(readonly pieceBytes: number) {
    if (!Number.isSafeInteger(pieceBytes) || pieceBytes <= 0) throw new RangeError(`bad piece length ${pieceBytes}`);
    this.tables = shiftTables(pieceBytes);
  }

  /** Appends one piece, given its CRC. */
  add(crc: bigint): void {
    const { low: tableLow, high: tableHigh } = this.tables;
    const low = this.low;
    const high = this.high;
    let index = low & 0xff;
    let outLow = tableLow[index]!;
    let outHigh = tableHigh[index]!;
    index = 256 + ((low >>> 8) & 0xff);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 512 + ((low >>> 16) & 0xff);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 768 + (low >>> 24);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 1024 + (high & 0xff);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 1280 + ((high >>> 8) & 0xff);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 1536 + ((high >>> 16) & 0xff);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    index = 1792 + (high >>> 24);
    outLow ^= tableLow[index]!;
    outHigh ^= tableHigh[index]!;
    this.word.setBigUint64(0, crc, true);
    this.low = (outLow ^ this.word.getUint32(0, true)) >>> 0;
    this.high = (outHigh ^ this.word.getUint32(4, true)) >>> 0;
  }

  /** The CRC of every piece added so far, in order. */
  get value(): bigint {
    this.word.setUint32(0, this.low, true);
    this.word.setUint32(4, this.high, true);
    return this.word.getBigUint64(0, true);
  }
}
