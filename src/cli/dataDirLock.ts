// One node per data directory (SPEC §9): an exclusive lock on `lvnode.lock`, which names the holder.
import { type FileHandle, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { FileLockedError, fileLocksAvailable, lockExclusive, processAlive } from '../device/fileLock.ts';

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
  // Held: record who we are, for people reading the file.
  await handle.truncate(0);
  await handle.write(`${process.pid}\n`, 0);
  // The lock lives as long as the descriptor; closing it (or dying) lets the next node in.
  return { release: () => handle.close() };
}

/** Without the addon: a PID file, taken over only when its process is gone. */
async function pidFileDataDir(dataDir: string, path: string): Promise<DataDirLock> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx');
      await handle.write(`${process.pid}\n`);
      await handle.close();
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
