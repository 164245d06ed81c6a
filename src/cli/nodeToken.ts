// The node's access token (SPEC §3.1): made once in the data directory, read by the node at every
// start and by the CLI (`lvnode rpc`, `status`, `demo`) when it can read the data directory.
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { type FileHandle, link, open, rename, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { authTokenCharsMax, authTokenCharsMin, authTokenFileBytesMax, authTokenRandomBytes } from '../constants.ts';

export const tokenFileName = 'lvnode.token';

export function tokenFilePath(dataDir: string): string {
  return join(dataDir, tokenFileName);
}

const tokenPattern = new RegExp(`^[\\x21-\\x7e]{${authTokenCharsMin},${authTokenCharsMax}}$`);

/**
 * Why `token` cannot be one (undefined when it can). A token travels in an HTTP header and a URL,
 * so it is visible ASCII without spaces. The answer never contains the token itself.
 */
export function tokenProblem(token: string): string | undefined {
  if (tokenPattern.test(token)) return undefined;
  return `a token is ${authTokenCharsMin} to ${authTokenCharsMax} visible ASCII characters, without spaces`;
}

/**
 * The node's token from `<dataDir>/lvnode.token`, created on first start. Loading needs no free
 * space: an existing file is only read (and checked: a regular file of the node's user that no
 * one else may read or write, else the token may be known and the start is refused). A file that
 * must be created but cannot (a full disk) fails the start, naming the ways round it — the node
 * never falls back to running without a credential.
 */
export async function loadOrCreateNodeToken(dataDir: string): Promise<{ token: string; path: string; created: boolean }> {
  const path = tokenFilePath(dataDir);
  const existing = await readOwnTokenFile(path);
  if (existing !== undefined) return { token: existing, path, created: false };
  const created = await createTokenFile(path);
  // Another process made it meanwhile (the data directory lock makes that a second node that lost
  // the race to its lock; read what it wrote rather than replace it).
  if (created === undefined) {
    const raced = await readOwnTokenFile(path);
    if (raced === undefined) throw new Error(`${path} vanished while it was being created`);
    return { token: raced, path, created: false };
  }
  return { token: created, path, created: true };
}

/** The token in an existing file (undefined when there is none), checked as the node requires. */
async function readOwnTokenFile(path: string): Promise<string | undefined> {
  let handle: FileHandle;
  try {
    // No symlinks: the node's credential is the file in its own data directory, nothing it points at.
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new Error(`${path} is a symbolic link; the token file must be a regular file (remove it to make a new token)`);
    throw new Error(`cannot read the node's token file ${path}: ${code ?? String(error)}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new Error(`${path} is not a regular file (remove it to make a new token)`);
    const uid = process.geteuid?.();
    if (uid !== undefined && info.uid !== uid) {
      throw new Error(`${path} belongs to uid ${info.uid}, not to this node's user (uid ${uid}); its token may be known to others: remove it to make a new one`);
    }
    if ((info.mode & 0o077) !== 0) {
      const mode = (info.mode & 0o777).toString(8).padStart(3, '0');
      throw new Error(`${path} has mode ${mode}: others may have read the token; chmod 600 it if no one did, or remove it to make a new one`);
    }
    return await readTokenText(handle, path);
  } finally {
    await handle.close();
  }
}

/** The CLI's view: the token when this user can read it, else why not (for a 401's message). */
export async function readNodeToken(dataDir: string): Promise<{ token: string; path: string } | { token: undefined; path: string; problem: string }> {
  const path = tokenFilePath(dataDir);
  let handle: FileHandle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const problem = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied (it is readable by the node\'s user only)' : (code ?? String(error));
    return { token: undefined, path, problem };
  }
  try {
    if (!(await handle.stat()).isFile()) return { token: undefined, path, problem: 'not a regular file' };
    return { token: await readTokenText(handle, path), path };
  } catch (error) {
    return { token: undefined, path, problem: error instanceof Error ? error.message : String(error) };
  } finally {
    await handle.close();
  }
}

async function readTokenText(handle: FileHandle, path: string): Promise<string> {
  const buffer = Buffer.alloc(authTokenFileBytesMax + 1);
  let filled = 0;
  while (filled < buffer.length) {
    const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  if (filled > authTokenFileBytesMax) throw new Error(`${path} is longer than a token (${authTokenFileBytesMax} bytes at most)`);
  const token = buffer.subarray(0, filled).toString('latin1').replace(/\r?\n$/, '');
  const problem = tokenProblem(token);
  if (problem !== undefined) throw new Error(`${path} does not hold a token: ${problem}`);
  return token;
}

/**
 * Writes a new random token: a temp file made owner-only from the start (O_EXCL, mode 0600, so
 * it never existed with wider permissions and a planted symlink is not followed), synced, then
 * hard-linked into place, which never replaces an existing file. Undefined when one appeared.
 */
async function createTokenFile(path: string): Promise<string | undefined> {
  const token = randomBytes(authTokenRandomBytes).toString('base64url');
  const temporary = `${path}.tmp`;
  await unlink(temporary).catch(() => undefined); // left by a start that died here
  try {
    const handle = await open(temporary, 'wx', 0o600);
    try {
      await handle.chmod(0o600); // the umask can only have narrowed it; say it anyway
      await handle.writeFile(`${token}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (!(await placeWithoutReplacing(temporary, path))) return undefined;
    await syncDirectory(dirname(path));
  } catch (error) {
    throw creationError(error, path);
  } finally {
    await unlink(temporary).catch(() => undefined);
  }
  return token;
}

/** link(2), which fails on an existing target; rename(2) where the file system has no hard links. */
async function placeWithoutReplacing(temporary: string, path: string): Promise<boolean> {
  try {
    await link(temporary, path);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw error;
  }
  // The data directory is locked by this node, so nothing else creates the file meanwhile.
  await rename(temporary, path);
  return true;
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function creationError(error: unknown, path: string): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const why = code === 'ENOSPC' || code === 'EDQUOT' ? 'no space left on device' : (code ?? String(error));
  const created = new Error(
    `cannot create the node's access token ${path}: ${why}. The node does not start without a credential: ` +
      'free some space, or give one with --token TOKEN (or LVNODE_TOKEN), or run with --insecure-no-auth on a loopback address',
  );
  return Object.assign(created, { code });
}
