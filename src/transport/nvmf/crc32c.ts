// CRC32C (Castagnoli), the NVMe/TCP header and data digest: the native addon's SSE4.2 kernel when
// it is built, else slice-by-8 tables here (both give the same value; test/transport/nvmf/crc32c.test.ts).
import { addon } from '../../addon.ts';

const polynomialReflected = 0x82f63b78;

function makeTables(): Uint32Array[] {
  const tables = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ polynomialReflected : crc >>> 1;
    tables[0]![byte] = crc >>> 0;
  }
  for (let byte = 0; byte < 256; byte++) {
    let crc = tables[0]![byte]!;
    for (let slice = 1; slice < 8; slice++) {
      crc = (crc >>> 8) ^ tables[0]![crc & 0xff]!;
      tables[slice]![byte] = crc >>> 0;
    }
  }
  return tables;
}

const [t0, t1, t2, t3, t4, t5, t6, t7] = makeTables() as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];

/** CRC32C of `data[start, end)` continuing from `crc` (the finished value of the bytes before). */
export function crc32cTable(data: Uint8Array, start = 0, end = data.length, crc = 0): number {
  let value = ~crc >>> 0;
  let index = start;
  // Eight bytes a step: two words looked up in eight tables instead of eight dependent lookups.
  while (end - index >= 8) {
    const low = (value ^ (data[index]! | (data[index + 1]! << 8) | (data[index + 2]! << 16) | (data[index + 3]! << 24))) >>> 0;
    value =
      t7[low & 0xff]! ^
      t6[(low >>> 8) & 0xff]! ^
      t5[(low >>> 16) & 0xff]! ^
      t4[low >>> 24]! ^
      t3[data[index + 4]!]! ^
      t2[data[index + 5]!]! ^
      t1[data[index + 6]!]! ^
      t0[data[index + 7]!]!;
    index += 8;
  }
  while (index < end) value = t0[(value ^ data[index++]!) & 0xff]! ^ (value >>> 8);
  return ~value >>> 0;
}

type NativeCrc32c = (data: Uint8Array, crc: number) => number;
const native = addon && typeof addon.crc32c === 'function' ? (addon.crc32c as NativeCrc32c) : undefined;

/** Which implementation `crc32c` uses: `sse4.2`/`table` from the addon, or `js`. */
export const crc32cKernel: string = native ? String(addon!.crc32cKernel ?? 'native') : 'js';

// Below this many bytes the call into the addon costs more than the table loop here.
const nativeBytesMin = 256;

/** CRC32C of `data[start, end)`, continuing from `crc`. */
export function crc32c(data: Uint8Array, start = 0, end = data.length, crc = 0): number {
  if (native === undefined || end - start < nativeBytesMin) return crc32cTable(data, start, end, crc);
  const view = start === 0 && end === data.length ? data : data.subarray(start, end);
  return native(view, crc) >>> 0;
}
