// CRC-64/GO-ISO computed bit by bit, for tests that must not trust src/checksum to check itself.
//
// SPEC §6.1: reflected polynomial 0xD800000000000000, init and final XOR all ones, chained by
// passing the previous value as the seed of the next call (seed 0 to begin). The 64-bit register is
// held as two unsigned 32-bit halves so that the loop stays on plain numbers, not bigints.

const polyHigh = 0xd8000000; // 0xD800000000000000: its low half is zero.

/** CRC-64/GO-ISO of `bytes`, continuing from `seed` (the CRC of everything before them). */
export function crc64Oracle(seed: bigint, bytes: Uint8Array): bigint {
  let low = ~Number(seed & 0xffffffffn) >>> 0;
  let high = ~Number((seed >> 32n) & 0xffffffffn) >>> 0;
  for (let index = 0; index < bytes.length; index++) {
    low = (low ^ bytes[index]!) >>> 0;
    for (let bit = 0; bit < 8; bit++) {
      const carry = low & 1;
      low = ((low >>> 1) | ((high & 1) << 31)) >>> 0;
      high >>>= 1;
      if (carry) high = (high ^ polyHigh) >>> 0;
    }
  }
  return (BigInt(~high >>> 0) << 32n) | BigInt(~low >>> 0);
}

/** The CRC of several pieces chained in order, as a walk folds clusters (SPEC §6.1). */
export function crc64OracleChained(pieces: readonly Uint8Array[]): bigint {
  return pieces.reduce((crc, piece) => crc64Oracle(crc, piece), 0n);
}
