// CRC32C (Castagnoli), the NVMe/TCP header and data digest: the native addon's SSE4.2 kernel when
// it is built, else slice-by-8 tables here (both give the same value; test/transport/nvmf/crc32c.test.ts).
import { createRequire } from 'node:module';
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

/** The native kernel: in the main addon if it carries one, else its own module (native/crc32c.cc, binding.gyp). */
function loadNative(): { crc32c: NativeCrc32c; kernel: string } | undefined {
  if (addon && typeof addon.crc32c === 'function') return { crc32c: addon.crc32c as NativeCrc32c, kernel: String(addon.crc32cKernel ?? 'native') };
  const require = createRequire(import.meta.url);
  // From src/ (tsx) or from the bundle in build/js/, as src/addon.ts looks.
  for (const candidate of ['../../../build/Release/lvnode_crc32c.node', '../../build/Release/lvnode_crc32c.node', '../build/Release/lvnode_crc32c.node']) {
    try {
      const module = require(candidate) as { crc32c?: unknown; crc32cKernel?: unknown };
      if (typeof module.crc32c === 'function') return { crc32c: module.crc32c as NativeCrc32c, kernel: String(module.crc32cKernel ?? 'native') };
    } catch {
      // Not built (or not here): the tables below serve.
    }
  }
  return undefined;
}

const loaded = process.env.LVNODE_CRC32C === 'js' ? undefined : loadNative();
const native = loaded?.crc32c;

/** Which implementation `crc32c` uses: `sse4.2`/`table` natively, or `js` (LVNODE_CRC32C=js forces it). */
export const crc32cKernel: string = loaded?.kernel ?? 'js';
/** The native kernel itself, for tests that compare it with the tables. */
export const nativeCrc32c: NativeCrc32c | undefined = native;

// Below this many bytes the call into the addon costs more than the table loop here.
const nativeBytesMin = 256;

/** CRC32C of `data[start, end)`, continuing from `crc`. */
export function crc32c(data: Uint8Array, start = 0, end = data.length, crc = 0): number {
  if (native === undefined || end - start < nativeBytesMin) return crc32cTable(data, start, end, crc);
  const view = start === 0 && end === data.length ? data : data.subarray(start, end);
  return native(view, crc) >>> 0;
}
