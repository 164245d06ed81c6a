// CRC-64/GO-ISO written for the tests from its definition, not src/checksum: the oracle for stored checksums.
//
// Reflected polynomial 0xD800000000000000, init and final XOR all ones, chained by passing the
// previous value as the seed (Go's crc64.Update). The 64-bit state is kept as two 32-bit halves so
// a MiB costs milliseconds, not the seconds BigInt arithmetic per byte would.

const polynomialHigh = 0xd800_0000;
const tableLow = new Uint32Array(256);
const tableHigh = new Uint32Array(256);
for (let index = 0; index < 256; index++) {
  let low = index;
  let high = 0;
  for (let bit = 0; bit < 8; bit++) {
    const carry = low & 1;
    low = ((low >>> 1) | ((high & 1) << 31)) >>> 0;
    high >>>= 1;
    if (carry) high = (high ^ polynomialHigh) >>> 0;
  }
  tableLow[index] = low;
  tableHigh[index] = high;
}

/** CRC-64/GO-ISO of `data`, continuing from `seed` (0 starts a new value). */
export function crc64GoIso(data: Uint8Array, seed = 0n): bigint {
  let low = ~Number(seed & 0xffff_ffffn) >>> 0;
  let high = ~Number(seed >> 32n) >>> 0;
  for (let position = 0; position < data.length; position++) {
    const index = (low ^ data[position]!) & 0xff;
    low = (((low >>> 8) | (high << 24)) ^ tableLow[index]!) >>> 0;
    high = ((high >>> 8) ^ tableHigh[index]!) >>> 0;
  }
  return (BigInt(~high >>> 0) << 32n) | BigInt(~low >>> 0);
}
