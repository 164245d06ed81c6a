// Loads the optional native CRC-64 addon (SIMD kernels and low-priority pread+CRC threads), or reports why not.
//
// The addon is built by `npm install` when a compiler is there (scripts/build-native.mjs); without it
// every caller uses the hash-wasm path in crc64.ts, so nothing here may throw at import time.
import { addon as loadedAddon, addonError } from '../addon.ts';

export type CrcKernel = 'vpclmulqdq' | 'pclmulqdq' | 'table';
export type BackgroundPolicy = 'idle' | 'nice' | 'normal';

export interface BackgroundStats {
  /** Threads in the current pool (0 until the first configure or submit starts it). */
  threads: number;
  /** The priority the pool's threads actually got (the weakest if they differ); the configured one before start. */
  policy: BackgroundPolicy;
  queued: number;
  running: number;
  /** Jobs the threads finished, failed ones included. */
  completed: number;
  /** Bytes CRC'd by successful jobs (a file range past EOF counts in full). */
  bytes: number;
}

export type CrcDone = (error: NodeJS.ErrnoException | null, crc: bigint) => void;

export interface NativeCrc {
  /** The kernel crc64() uses: the fastest available, unless env LVNODE_CRC_KERNEL forced another. */
  readonly kernel: CrcKernel;
  /** Kernels this CPU can run, fastest first. */
  readonly kernels: readonly CrcKernel[];
  /** CRC-64/GO-ISO with ISA-L's seed convention: seed 0 starts, a previous result chains. */
  crc64(seed: bigint, data: Uint8Array): bigint;
  crc64With(kernel: CrcKernel, seed: bigint, data: Uint8Array): bigint;
  /**
   * Replaces the pool (old threads exit after their current job). The result says which policy
   * applied: SCHED_IDLE falls back to nice 19, then to normal, when the OS refuses.
   */
  configureBackground(options: { threads: number; policy: BackgroundPolicy }): { threads: number; policy: BackgroundPolicy };
  /**
   * CRC of `lengthBytes` of `fd` from `offsetBytes`, read on a background thread; bytes past EOF
   * count as zeros. Returns the job id for cancel(). `fd` must stay open until `done` runs (or
   * cancel() returned true): a device's descriptor is borrowed for that long through its
   * `withFd` (BlockDevice), never read from `device.fd` and used after the call returns, or a
   * close racing the job closes it under the thread, and the number may be reused by another file
   * whose bytes the job would then CRC.
   */
  submitFileCrc(fd: number, offsetBytes: number, lengthBytes: number, done: CrcDone): number;
  /** CRC of `data` on a background thread; do not transfer or detach its buffer before `done` runs. */
  submitBufferCrc(data: Uint8Array, done: CrcDone): number;
  /** True if the job had not started: it is dropped and its callback never runs. False otherwise. */
  cancel(jobId: number): boolean;
  /**
   * Ends a running file job at its next 256 KiB piece: its callback then gets ECANCELED. True if
   * the job was running. Absent in an addon built before it (a halted read then runs to its end).
   */
  halt?(jobId: number): boolean;
  backgroundStats(): BackgroundStats;
}

/** What the .node file exports; it validates again, but the messages here name the caller's mistake. */
interface NativeAddon {
  kernel: CrcKernel;
  kernels: CrcKernel[];
  kernelWarning?: string;
  crc64(seed: bigint, data: Uint8Array): bigint;
  crc64With(kernel: string, seed: bigint, data: Uint8Array): bigint;
  configureBackground(threads: number, policy: string): { threads: number; policy: BackgroundPolicy };
  submitFileCrc(fd: number, offsetBytes: number, lengthBytes: number, done: CrcDone): number;
  submitBufferCrc(data: Uint8Array, done: CrcDone): number;
  cancel(jobId: number): boolean;
  halt?(jobId: number): boolean;
  backgroundStats(): BackgroundStats;
}

const maxSeed = (1n << 64n) - 1n;
const maxThreads = 64;
const maxFd = 2 ** 31 - 1;
const policies: readonly BackgroundPolicy[] = ['idle', 'nice', 'normal'];

function checkSeed(seed: bigint): void {
  if (typeof seed !== 'bigint') throw new TypeError(`seed must be a bigint, got ${typeof seed}`);
  if (seed < 0n || seed > maxSeed) throw new RangeError(`seed must be in 0 .. 2^64-1, got ${seed}`);
}

function checkData(data: Uint8Array): void {
  if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
}

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number, got ${typeof value}`);
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new RangeError(`${name} must be an integer in ${min} .. ${max}, got ${value}`);
}

function checkDone(done: CrcDone): void {
  if (typeof done !== 'function') throw new TypeError('done must be a function');
}

function wrap(addon: NativeAddon): NativeCrc {
  const kernels = Object.freeze([...addon.kernels]);
  return Object.freeze({
    kernel: addon.kernel,
    kernels,
    crc64(seed: bigint, data: Uint8Array): bigint {
      checkSeed(seed);
      checkData(data);
      return addon.crc64(seed, data);
    },
    crc64With(kernel: CrcKernel, seed: bigint, data: Uint8Array): bigint {
      if (!kernels.includes(kernel)) throw new RangeError(`CRC kernel ${String(kernel)} is not available here (have ${kernels.join(', ')})`);
      checkSeed(seed);
      checkData(data);
      return addon.crc64With(kernel, seed, data);
    },
    configureBackground(options: { threads: number; policy: BackgroundPolicy }) {
      checkInteger('threads', options.threads, 1, maxThreads);
      if (!policies.includes(options.policy)) throw new RangeError(`policy must be one of ${policies.join(', ')}, got ${String(options.policy)}`);
      return addon.configureBackground(options.threads, options.policy);
    },
    submitFileCrc(fd: number, offsetBytes: number, lengthBytes: number, done: CrcDone): number {
      checkInteger('fd', fd, 0, maxFd);
      checkInteger('offsetBytes', offsetBytes, 0, Number.MAX_SAFE_INTEGER);
      checkInteger('lengthBytes', lengthBytes, 0, Number.MAX_SAFE_INTEGER - offsetBytes);
      checkDone(done);
      return addon.submitFileCrc(fd, offsetBytes, lengthBytes, done);
    },
    submitBufferCrc(data: Uint8Array, done: CrcDone): number {
      checkData(data);
      checkDone(done);
      return addon.submitBufferCrc(data, done);
    },
    cancel(jobId: number): boolean {
      checkInteger('jobId', jobId, 0, Number.MAX_SAFE_INTEGER);
      return addon.cancel(jobId);
    },
    ...(typeof addon.halt === 'function'
      ? {
          halt(jobId: number): boolean {
            checkInteger('jobId', jobId, 0, Number.MAX_SAFE_INTEGER);
            return addon.halt!(jobId);
          },
        }
      : {}),
    backgroundStats: () => addon.backgroundStats(),
  });
}

function load(): { crc: NativeCrc | null; status: string } {
  if (process.env.LVNODE_CRC === 'fallback') return { crc: null, status: 'disabled by LVNODE_CRC=fallback' };
  if (!loadedAddon) {
    if (addonError === null || addonError.code === 'MODULE_NOT_FOUND') {
      return { crc: null, status: 'not built (no build/Release/lvnode_crc64.node; `npm run install` builds it)' };
    }
    return { crc: null, status: `failed to load: ${addonError.message.split('\n')[0]}` };
  }
  const addon = loadedAddon as unknown as NativeAddon;
  const methods = ['crc64', 'crc64With', 'configureBackground', 'submitFileCrc', 'submitBufferCrc', 'cancel', 'backgroundStats'] as const;
  if (methods.some((name) => typeof addon[name] !== 'function') || !Array.isArray(addon.kernels)) {
    return { crc: null, status: 'failed to load: the built addon does not match this source (rebuild with `npm run install`)' };
  }
  // A forced kernel that this CPU lacks leaves the fastest in use; say so rather than fail.
  return { crc: wrap(addon), status: addon.kernelWarning ? `loaded (${addon.kernelWarning}; using ${addon.kernel})` : 'loaded' };
}

const loaded = load();

/** The addon, or null when it is not built, fails to load, or env LVNODE_CRC=fallback forces the TypeScript path. */
export const nativeCrc: NativeCrc | null = loaded.crc;
/** Why nativeCrc is null (or 'loaded'), for the one log line and node_get_stats. */
export const nativeCrcStatus: string = loaded.status;
