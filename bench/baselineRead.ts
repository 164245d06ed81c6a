// The checksum benchmark's baselines: read a file range in 4 MiB chunks, with or without a CRC.
//
// Runs in the benchmark's own process (`readRange`) or as a standalone process (`node --import
// tsx bench/baselineRead.ts FILE OFFSET LENGTH MODE` prints the elapsed ms), so the two can be
// compared in the same run.
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { crc64, crc64Combine } from '../src/checksum/crc64.ts';

export type BaselineMode = 'read' | 'read+hash-wasm';
const chunkBytes = 4 * 1024 * 1024;

/** Reads [offset, offset+length) in 4 MiB chunks into one reused buffer; returns ms and the CRC (0 for `read`). */
export async function readRange(path: string, offsetBytes: number, lengthBytes: number, mode: BaselineMode): Promise<{ ms: number; crc: bigint }> {
  const handle = await open(path, 'r');
  const buffer = Buffer.allocUnsafe(chunkBytes);
  try {
    const startMs = performance.now();
    let crc = 0n;
    for (let done = 0; done < lengthBytes; ) {
      const want = Math.min(chunkBytes, lengthBytes - done);
      let filled = 0;
      while (filled < want) {
        const { bytesRead } = await handle.read(buffer, filled, want - filled, offsetBytes + done + filled);
        if (bytesRead === 0) throw new Error('file ends early');
        filled += bytesRead;
      }
      if (mode === 'read+hash-wasm') crc = crc64Combine(crc, crc64(buffer.subarray(0, want)), want);
      done += want;
    }
    return { ms: performance.now() - startMs, crc };
  } finally {
    await handle.close();
  }
}

/**
 * The native reader alone: the cluster's 4 MiB jobs one after another on one background thread,
 * as a walk submits them but with no actor, queue or RPC around them (the walk's ceiling).
 */
export async function nativeJobsAlone(path: string, offsetBytes: number, lengthBytes: number): Promise<{ ms: number; crc: bigint }> {
  const { nativeCrc } = await import('../src/checksum/native.ts');
  if (!nativeCrc) throw new Error('native addon not loaded');
  nativeCrc.configureBackground({ threads: 1, policy: 'idle' });
  const handle = await open(path, 'r');
  try {
    const startMs = performance.now();
    let crc = 0n;
    for (let done = 0; done < lengthBytes; done += chunkBytes) {
      const length = Math.min(chunkBytes, lengthBytes - done);
      const piece = await new Promise<bigint>((resolve, reject) =>
        nativeCrc.submitFileCrc(handle.fd, offsetBytes + done, length, (error, value) => (error ? reject(error) : resolve(value))),
      );
      crc = crc64Combine(crc, piece, length);
    }
    return { ms: performance.now() - startMs, crc };
  } finally {
    await handle.close();
  }
}

const selfPath = fileURLToPath(import.meta.url);

/** The same read in a fresh process; its own timing, so process start-up is not counted. */
export function readRangeInChild(path: string, offsetBytes: number, lengthBytes: number, mode: BaselineMode): Promise<{ ms: number; crc: bigint }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', selfPath, path, String(offsetBytes), String(lengthBytes), mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`baseline child exited ${code}`));
      const parsed = JSON.parse(out) as { ms: number; crc: string };
      resolve({ ms: parsed.ms, crc: BigInt(parsed.crc) });
    });
  });
}

if (process.argv[1] === selfPath) {
  const [path, offset, length, mode] = process.argv.slice(2);
  const result = await readRange(path!, Number(offset), Number(length), mode as BaselineMode);
  process.stdout.write(JSON.stringify({ ms: result.ms, crc: result.crc.toString() }));
}
