// An outside oracle for checksum tests over a real node: CRC-64/GO-ISO by hash-wasm (not
// src/checksum), and cluster-sized bytes no two seeds share.
import { createCRC64 } from 'hash-wasm';

const hasher = await createCRC64('d800000000000000');

/** One CRC over the parts, as if they were one buffer. */
export function oneCrc(...parts: Buffer[]): bigint {
  hasher.init();
  for (const part of parts) hasher.update(part);
  return BigInt(`0x${hasher.digest('hex')}`);
}

/** `lengthBytes` of xorshift32 output seeded by `seed`. */
export function pattern(seed: number, lengthBytes: number): Buffer {
  const out = Buffer.alloc(lengthBytes);
  let state = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  for (let offset = 0; offset < lengthBytes; offset += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out.writeUInt32LE(state >>> 0, offset);
  }
  return out;
}
