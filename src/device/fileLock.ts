// Exclusive locks on the files a node writes (its data directory's lock file, every bdev file), so
// that two nodes never write one lvstore (SPEC §9). The lock is flock(2) through lvnode's native
// addon: it belongs to the open file, dies with the process, and is not dropped when another
// descriptor of the file in this process closes. Without the addon, bdev files go unlocked (one
// warning) and the data directory falls back to a PID file.
import { readFileSync } from 'node:fs';
import { addon as loadedAddon } from '../addon.ts';

interface LockAddon {
  flockExclusive(fd: number): number;
}

const addon: LockAddon | null =
  typeof loadedAddon?.flockExclusive === 'function' ? (loadedAddon as unknown as LockAddon) : null;

/** Whether real file locks are available (the addon is built). */
export const fileLocksAvailable = addon !== null;

/** Another process holds the lock: `holder` names it as well as the system lets us see. */
export class FileLockedError extends Error {
  readonly code = 'EBUSY';
  constructor(
    readonly path: string,
    readonly holder: string,
  ) {
    super(`${path} is locked by ${holder}`);
  }
}

/**
 * Takes the exclusive lock of the open file `fd` (at `path`, inode `inode`), or throws
 * FileLockedError naming the holder. Returns false when locks are unavailable (no addon).
 */
export function lockExclusive(fd: number, path: string, inode: bigint | number): boolean {
  if (!addon) return false;
  const errno = addon.flockExclusive(fd);
  if (errno === 0) return true;
  throw new FileLockedError(path, describeHolder(inode));
}

/** "pid 1234 (node bin/lvnode.mjs serve …)", from /proc/locks, or "another process". */
export function describeHolder(inode: bigint | number): string {
  try {
    const wanted = String(inode);
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      // e.g. "3: FLOCK  ADVISORY  WRITE 4242 fd:01:1835012 0 EOF"
      const fields = line.trim().split(/\s+/);
      if (fields[1] !== 'FLOCK' || fields[5]?.split(':')[2] !== wanted) continue;
      const pid = Number(fields[4]);
      if (pid === process.pid) return `this node (pid ${pid})`;
      return `pid ${pid}${commandOf(pid)}`;
    }
  } catch {
    // No /proc (not Linux): fall through.
  }
  return 'another process';
}

function commandOf(pid: number): string {
  try {
    const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return command ? ` (${command.slice(0, 200)})` : '';
  } catch {
    return '';
  }
}

/** Live PIDs, for the PID-file fallback: is `pid` still a running process? */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
