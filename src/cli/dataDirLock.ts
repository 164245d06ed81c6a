// One node per data directory (SPEC §9): an exclusive lock on `lvnode.lock`, which names the holder.
import { type FileHandle, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { FileLockedError, fileLocksAvailable, lockExclusive, processAlive } from '../device/fileLock.ts';
import { log } from '../log.ts';

export const dataDirLockName = 'lvnode.lock';

export interface DataDirLock {
  release(): Promise<void>;
}

function inUse(dataDir: string, holder: string): Error {
  return new Error(`data directory ${dataDir} is in use by ${holder}; one node per data directory`);
}

/** Takes the data directory's lock, or throws naming the node that holds it. */
export async function lockDataDir(dataDir: string): Promise<DataDirLock> {
  const path = join(dataDir, dataDirLockName);
  return fileLocksAvailable ? flockDataDir(dataDir, path) : pidFileDataDir(dataDir, path);
}

async function flockDataDir(dataDir: string, path: string): Promise<DataDirLock> {
  const handle: FileHandle = await open(path, 'a+');
  try {
    const info = await handle.stat({ bigint: true });
    lockExclusive(handle.fd, path, info.ino);
  } catch (error) {
    await handle.close();
    if (error instanceof FileLockedError) throw inUse(dataDir, error.holder);
    throw error;
  }
  // Held: record who we are, for people reading the file. Only a courtesy (the lock names its
  // holder by itself), so a full file system does not keep the node from loading its data.
  await recordPid(handle, path);
  // The lock lives as long as the descriptor; closing it (or dying) lets the next node in.
  return { release: () => handle.close() };
}

async function recordPid(handle: FileHandle, path: string): Promise<void> {
  try {
    await handle.truncate(0);
    await handle.write(`${process.pid}\n`, 0);
  } catch (error) {
    log('warn', 'data directory lock taken, but our PID could not be written into it', { path, error: String(error) });
  }
}

/**
 * Without the addon: a PID file, taken over only when its process is gone. On a full file system
 * the file is made (an inode, no data block) but the PID may not fit: the node still starts, and
 * a second node would read an empty file as stale, so it is said loudly.
 */
async function pidFileDataDir(dataDir: string, path: string): Promise<DataDirLock> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx');
      try {
        await handle.write(`${process.pid}\n`);
      } catch (error) {
        log('error', 'PID file made but our PID could not be written: a second node would not see this one', { path, error: String(error) });
      } finally {
        await handle.close();
      }
      return { release: () => unlink(path).catch(() => undefined) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (processAlive(pid) && pid !== process.pid) throw inUse(dataDir, `pid ${pid}`);
      await unlink(path).catch(() => undefined); // stale: its node is gone
    }
  }
  throw inUse(dataDir, 'another node (its lock file keeps coming back)');
}
