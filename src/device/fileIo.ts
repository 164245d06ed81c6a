// How file devices read and write: through io_uring (the lvnode_file_io addon, native/file_ring.cc)
// where it loads and the kernel allows it, else through Node's fs on libuv's thread pool.
//
// Node's fs.read/fs.write send each request to a pool thread and back: two thread switches and an
// event-loop wakeup per 4 KiB, most of a small request's cost. The ring stages requests and submits
// a turn's worth in one syscall; a read of the page cache completes inside it. Both paths answer
// the same callback, with the same errors (Node's shape: code, errno, syscall), so FileDevice does
// not care which one runs. Chosen once per process, on first use: env LVNODE_FILE_IO=threadpool
// forces the fallback (tests run the device suite both ways); the choice and why is fileIoInfo().
//
// A regular file that lives in memory (tmpfs, ramfs) is the exception, chosen per file by
// fileIoForFile: its requests up to memoryFileInlineBytesMax are done at once, by pread/pwrite on
// the calling thread. Such a file has no device to wait for, and no non-blocking read either, so
// the ring would hand each request to a kernel worker thread and back; SPDK's aio bdev does the
// same copies inline in its reactor.
import { read as fsRead, readSync, statfs, write as fsWrite, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { getSystemErrorName } from 'node:util';
import { isMainThread } from 'node:worker_threads';
import { memoryFileInlineBytesMax } from '../constants.ts';

/** Bytes moved, or the error; `bytes` 0 at the end of the file. */
export type FileIoDone = (error: NodeJS.ErrnoException | null, bytes: number) => void;

export interface FileIo {
  read(fd: number, buffer: Uint8Array, at: number, length: number, position: number, done: FileIoDone): void;
  write(fd: number, buffer: Uint8Array, at: number, length: number, position: number, done: FileIoDone): void;
  /**
   * Reads at once on the calling thread when this path does such a request inline (a file in
   * memory): the bytes read (0 at the end of the file), or undefined when it would be queued and
   * nothing was read. Throws the fs error. Paths that never read inline leave it out.
   */
  readNow?(fd: number, buffer: Uint8Array, at: number, length: number, position: number): number | undefined;
}

export type FileIoPath = 'io_uring' | 'threadpool';
/** How one file's requests go: the process's path, or at once on the calling thread (a file in memory). */
export type FileIoMode = FileIoPath | 'inline';

export interface FileIoInfo {
  readonly path: FileIoPath;
  /** Why the thread pool is used (or the ring's size), for the start-up log and node_get_stats. */
  readonly reason: string;
}

interface RingAddon {
  fileRingOpen(entries: number, onComplete: (count: number) => void, results: Int32Array): number;
  fileRingRead(fd: number, buffer: Uint8Array, at: number, length: number, position: number, token: number): void;
  fileRingWrite(fd: number, buffer: Uint8Array, at: number, length: number, position: number, token: number): void;
}

/** One pread/pwrite at once (native/file_now.cc): bytes moved, or it throws Node's fs error shape. */
type MoveNow = (fd: number, buffer: Uint8Array, at: number, length: number, position: number) => number;

interface FileNowAddon {
  fileReadNow?: MoveNow;
  fileWriteNow?: MoveNow;
}

/** Submission queue entries of the ring; the completion queue (and the requests in the kernel at once) is 4x. */
const ringEntries = 256;
/** Completions handed to JS per call: the most the ring can hold in flight. */
const resultPairsMax = ringEntries * 4;

export const threadPoolFileIo: FileIo = {
  read: (fd, buffer, at, length, position, done) => fsRead(fd, buffer, at, length, position, (error, bytes) => done(error, bytes)),
  write: (fd, buffer, at, length, position, done) => fsWrite(fd, buffer, at, length, position, (error, bytes) => done(error, bytes)),
};

/** An Error shaped like Node's fs errors (`EIO: i/o error, read`). */
function errnoError(negativeErrno: number, syscall: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(negativeErrno);
  const error: NodeJS.ErrnoException = new Error(`${code}: file ${syscall} failed (io_uring), ${syscall}`);
  error.errno = negativeErrno;
  error.code = code;
  error.syscall = syscall;
  return error;
}

/**
 * The ring's JS half: a token per request names its callback (and holds its buffer, which the
 * kernel writes or reads until the completion) until the completion comes back.
 */
class RingFileIo implements FileIo {
  private readonly callbacks: Array<FileIoDone | undefined> = [];
  private readonly buffers: Array<Uint8Array | undefined> = [];
  private readonly writes: boolean[] = [];
  private readonly freeTokens: number[] = [];
  private readonly results = new Int32Array(resultPairsMax * 2);
  /** Requests handed to the ring and not yet answered (tests, stats). */
  inFlight = 0;
  readonly entries: number;

  constructor(private readonly addon: RingAddon) {
    this.entries = addon.fileRingOpen(ringEntries, (count) => this.complete(count), this.results);
  }

  read(fd: number, buffer: Uint8Array, at: number, length: number, position: number, done: FileIoDone): void {
    const token = this.token(buffer, false, done);
    try {
      this.addon.fileRingRead(fd, buffer, at, length, position, token);
    } catch (error) {
      this.release(token);
      throw error;
    }
  }

  write(fd: number, buffer: Uint8Array, at: number, length: number, position: number, done: FileIoDone): void {
    const token = this.token(buffer, true, done);
    try {
      this.addon.fileRingWrite(fd, buffer, at, length, position, token);
    } catch (error) {
      this.release(token);
      throw error;
    }
  }

  private token(buffer: Uint8Array, write: boolean, done: FileIoDone): number {
    const token = this.freeTokens.pop() ?? this.callbacks.length;
    this.callbacks[token] = done;
    this.buffers[token] = buffer;
    this.writes[token] = write;
    this.inFlight++;
    return token;
  }

  private release(token: number): void {
    this.callbacks[token] = undefined;
    this.buffers[token] = undefined;
    this.freeTokens.push(token);
    this.inFlight--;
  }

  /**
   * `count` completions are in `results`. Every one is answered even if a callback throws: the
   * first error is rethrown afterwards (an uncaught exception, as from an fs callback).
   */
  private complete(count: number): void {
    const results = this.results;
    let thrown: { error: unknown } | undefined;
    for (let index = 0; index < count; index++) {
      const token = results[index * 2]!;
      const result = results[index * 2 + 1]!;
      const done = this.callbacks[token];
      const write = this.writes[token]!;
      if (done === undefined) continue; // cannot happen: the kernel answers each token once
      this.release(token);
      try {
        if (result < 0) done(errnoError(result, write ? 'write' : 'read'), 0);
        else done(null, result);
      } catch (error) {
        thrown ??= { error };
      }
    }
    if (thrown) throw thrown.error;
  }
}

let chosen: { io: FileIo; info: FileIoInfo; ring: RingFileIo | undefined } | undefined;

let loaded: { addon: (Partial<RingAddon> & FileNowAddon) | undefined; reason: string } | undefined;

/** The lvnode_file_io addon, loaded once, or why not. */
function loadFileIoAddon(): { addon: (Partial<RingAddon> & FileNowAddon) | undefined; reason: string } {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  loaded = { addon: undefined, reason: 'addon lvnode_file_io not built' };
  try {
    // This file runs from src/device (tsx) or from the bundle in build/js/: two levels below the root either way.
    loaded = { addon: require('../../build/Release/lvnode_file_io.node') as Partial<RingAddon> & FileNowAddon, reason: '' };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'MODULE_NOT_FOUND') loaded = { addon: undefined, reason: `addon lvnode_file_io does not load: ${(error as Error).message}` };
  }
  return loaded;
}

function loadRingAddon(): { addon: RingAddon | undefined; reason: string } {
  const { addon, reason } = loadFileIoAddon();
  if (!addon) return { addon: undefined, reason };
  if (typeof addon.fileRingOpen !== 'function') return { addon: undefined, reason: 'addon lvnode_file_io has no ring (not Linux)' };
  return { addon: addon as RingAddon, reason: '' };
}

/**
 * pread/pwrite at once: the addon's (one N-API call around the syscall), else fs.readSync and
 * fs.writeSync (~230 ns a call more, a tenth of a 4 KiB NVMe/TCP read). Env
 * LVNODE_FILE_NOW=fs forces Node's (tests run the inline path both ways).
 */
function movesNow(): { read: MoveNow; write: MoveNow; native: boolean } {
  const addon = process.env.LVNODE_FILE_NOW === 'fs' ? undefined : loadFileIoAddon().addon;
  if (typeof addon?.fileReadNow === 'function' && typeof addon.fileWriteNow === 'function') {
    return { read: addon.fileReadNow, write: addon.fileWriteNow, native: true };
  }
  return { read: readSync, write: writeSync, native: false };
}

function choose(): { io: FileIo; info: FileIoInfo; ring: RingFileIo | undefined } {
  const fallback = (reason: string) => ({ io: threadPoolFileIo, info: { path: 'threadpool' as const, reason }, ring: undefined });
  if (process.env.LVNODE_FILE_IO === 'threadpool') return fallback('LVNODE_FILE_IO=threadpool');
  // A worker's environment can end with requests in the kernel, writing into memory it frees.
  if (!isMainThread) return fallback('worker thread');
  const { addon, reason } = loadRingAddon();
  if (!addon) return fallback(reason);
  try {
    const ring = new RingFileIo(addon);
    return { io: ring, info: { path: 'io_uring', reason: `ring of ${ring.entries} entries` }, ring };
  } catch (error) {
    // ENOSYS (old kernel), EPERM (seccomp, kernel.io_uring_disabled), ENOMEM (locked-memory limit).
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    return fallback(`io_uring_setup refused (${code})`);
  }
}

/** statfs f_type of file systems whose files live in memory: TMPFS_MAGIC, RAMFS_MAGIC (linux/magic.h). */
const memoryFileSystemTypes: ReadonlySet<number> = new Set([0x01021994, 0x858458f6]);

/** Requests done inline so far, for node_get_stats (a bench or an operator can see the path is taken). */
let inlineRequests = 0;

/**
 * A memory file's I/O: requests up to `inlineBytesMax` done at once with pread/pwrite on the
 * calling thread, `done` called before this returns, with the thread pool's error shape (the same
 * fs calls); larger ones handed to `queued`. Exported for tests.
 */
export function inlineFileIo(queued: FileIo, inlineBytesMax = memoryFileInlineBytesMax, moves = movesNow()): FileIo {
  // The call at once, or undefined (nothing done) for a request too large to hold the loop.
  const now =
    (call: MoveNow): NonNullable<FileIo['readNow']> =>
    (fd, buffer, at, length, position) => {
      if (length > inlineBytesMax) return undefined;
      const bytes = call(fd, buffer, at, length, position);
      inlineRequests++;
      return bytes;
    };
  const inline =
    (callNow: NonNullable<FileIo['readNow']>, queuedCall: FileIo['read']): FileIo['read'] =>
    (fd, buffer, at, length, position, done) => {
      let bytes: number | undefined;
      try {
        bytes = callNow(fd, buffer, at, length, position);
      } catch (error) {
        return done(error as NodeJS.ErrnoException, 0);
      }
      if (bytes === undefined) return queuedCall(fd, buffer, at, length, position, done);
      done(null, bytes);
    };
  const readNow = now(moves.read);
  return {
    read: inline(readNow, (...args) => queued.read(...args)),
    write: inline(now(moves.write), (...args) => queued.write(...args)),
    readNow,
  };
}

/** Whether LVNODE_MEMORY_FILE_IO leaves memory files inline (the default) or queues them like any file. */
function memoryFilesInline(): boolean {
  return process.env.LVNODE_MEMORY_FILE_IO !== 'queued';
}

/**
 * How the file open as `fd` is read and written: inline when it is a regular file on a memory file
 * system, else the process's path. Asked of the descriptor (through /proc/self/fd), not of a path
 * that may since name another file; where that cannot be asked, the process's path.
 */
export function fileIoForFile(fd: number, isRegularFile: boolean): Promise<{ io: FileIo; mode: FileIoMode }> {
  const queued = { io: fileIo(), mode: fileIoInfo().path };
  // A block device's node sits on devtmpfs, which reports TMPFS_MAGIC: only regular files count.
  if (!isRegularFile || !memoryFilesInline()) return Promise.resolve(queued);
  return new Promise((resolve) => {
    statfs(`/proc/self/fd/${fd}`, (error, info) => {
      if (error || !memoryFileSystemTypes.has(info.type)) resolve(queued);
      else resolve({ io: inlineFileIo(queued.io), mode: 'inline' });
    });
  });
}

/** The process's file I/O path, chosen on first use. */
export function fileIo(): FileIo {
  chosen ??= choose();
  return chosen.io;
}

/**
 * Which path file devices use and why (start-up log line, node_get_stats); `memory_files`: whether
 * files in memory (tmpfs) are read and written inline, with the addon's calls or Node's fs, and
 * how many requests were so far.
 */
export function fileIoInfo(): FileIoInfo & { in_flight?: number; memory_files: { inline: boolean; calls: 'addon' | 'fs'; inline_requests: number } } {
  chosen ??= choose();
  const memory_files = { inline: memoryFilesInline(), calls: movesNow().native ? ('addon' as const) : ('fs' as const), inline_requests: inlineRequests };
  return chosen.ring ? { ...chosen.info, in_flight: chosen.ring.inFlight, memory_files } : { ...chosen.info, memory_files };
}
