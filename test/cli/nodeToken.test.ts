// Goal (issue 20, item 1): the node's token file. Made once, owner-only from its first byte, never
// replaced; an existing one is only read (a start on a full disk needs no space), and refused when
// others may know it; one that cannot be made fails the start rather than run without a credential.
// No error message ever carries the token.
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, stat, statfs, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { loadOrCreateNodeToken, readNodeToken, tokenFileName, tokenProblem } from '../../src/cli/nodeToken.ts';
import { killAllNodes, spawnNode } from '../integration/processNode.ts';
import { mountUnavailable } from '../mountable.ts';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;

let cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  await killAllNodes();
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  cleanups = [];
});

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-token-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The start's error message, which must say what is wrong without the secret in it. */
async function startError(dataDir: string): Promise<string> {
  const error = await loadOrCreateNodeToken(dataDir).then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(Error);
  return (error as Error).message;
}

describe('the token file', () => {
  it('is made on first start: 256 random bits, mode 0600, the node user’s, and read back unchanged on later starts', async () => {
    const dataDir = await scratchDir();
    const first = await loadOrCreateNodeToken(dataDir);
    expect(first.created).toBe(true);
    expect(first.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const info = await stat(join(dataDir, tokenFileName));
    expect(info.mode & 0o777).toBe(0o600);
    expect(info.uid).toBe(process.geteuid!());
    expect(await readFile(join(dataDir, tokenFileName), 'utf8')).toBe(`${first.token}\n`);
    // Nothing else is left in the directory (the temp file is gone).
    expect(await readdir(dataDir)).toEqual([tokenFileName]);
    const again = await loadOrCreateNodeToken(dataDir);
    expect(again).toEqual({ token: first.token, path: first.path, created: false });
    // Another data directory gets another token.
    expect((await loadOrCreateNodeToken(await scratchDir())).token).not.toBe(first.token);
  });

  it('is owner-only even under a permissive umask', async () => {
    const dataDir = await scratchDir();
    const previous = process.umask(0);
    try {
      await loadOrCreateNodeToken(dataDir);
    } finally {
      process.umask(previous);
    }
    expect((await stat(join(dataDir, tokenFileName))).mode & 0o777).toBe(0o600);
  });

  it('takes a token file an operator wrote (0600), with or without a final newline', async () => {
    const dataDir = await scratchDir();
    await writeFile(join(dataDir, tokenFileName), 'chosen-by-the-operator', { mode: 0o600 });
    expect(await loadOrCreateNodeToken(dataDir)).toMatchObject({ token: 'chosen-by-the-operator', created: false });
  });

  it('refuses a token file others can read, or that another user owns, naming the fix but not the token', async () => {
    const dataDir = await scratchDir();
    const { token } = await loadOrCreateNodeToken(dataDir);
    const path = join(dataDir, tokenFileName);
    await chmod(path, 0o644);
    const readable = await startError(dataDir);
    expect(readable).toContain('mode 644');
    expect(readable).toContain('remove it to make a new one');
    expect(readable).not.toContain(token);
    await chmod(path, 0o620);
    expect(await startError(dataDir)).toContain('mode 620');
    await chmod(path, 0o600);
    if (isRoot) {
      await chown(path, 65534, 65534);
      const foreign = await startError(dataDir);
      expect(foreign).toContain('belongs to uid 65534');
      expect(foreign).not.toContain(token);
    }
  });

  it('refuses a symbolic link and a file that holds no token, without printing what it holds', async () => {
    const dataDir = await scratchDir();
    const elsewhere = join(await scratchDir(), 'elsewhere');
    await writeFile(elsewhere, 'a-fine-token\n', { mode: 0o600 });
    await symlink(elsewhere, join(dataDir, tokenFileName));
    expect(await startError(dataDir)).toContain('is a symbolic link');
    await unlink(join(dataDir, tokenFileName));
    await writeFile(join(dataDir, tokenFileName), 'two words\n', { mode: 0o600 });
    const message = await startError(dataDir);
    expect(message).toContain('does not hold a token');
    expect(message).not.toContain('two words');
    await writeFile(join(dataDir, tokenFileName), 'x'.repeat(5000), { mode: 0o600 });
    expect(await startError(dataDir)).toContain('longer than a token');
  });

  it('is read by a client that can, and a client that cannot is told why', async () => {
    const dataDir = await scratchDir();
    expect(await readNodeToken(dataDir)).toMatchObject({ token: undefined, problem: 'no such file' });
    const { token } = await loadOrCreateNodeToken(dataDir);
    expect(await readNodeToken(dataDir)).toEqual({ token, path: join(dataDir, tokenFileName) });
  });
});

describe('tokens given by the operator', () => {
  it('are visible ASCII without spaces, 1 to 256 characters; the reason never repeats the token', () => {
    expect(tokenProblem('s3cret-Token_with.punctuation!')).toBeUndefined();
    for (const bad of ['', 'has space', 'tab\there', 'new\nline', 'é', 'x'.repeat(257)]) {
      const problem = tokenProblem(bad);
      expect(problem, JSON.stringify(bad)).toBeDefined();
      if (bad.length > 0) expect(problem).not.toContain(bad);
    }
  });
});

describe.skipIf(mountUnavailable !== null)('on a full file system (a real tmpfs)', () => {
  async function fullTmpfs(): Promise<string> {
    const dir = await scratchDir();
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
    cleanups.push(() => run('umount', ['-l', dir]));
    await mkdir(join(dir, 'data'), { mode: 0o700 });
    return dir;
  }

  async function fill(dir: string): Promise<void> {
    const free = async () => {
      const info = await statfs(dir);
      return info.bavail * info.bsize;
    };
    await run('fallocate', ['-l', String(await free()), join(dir, 'fill.zeros')]);
    for (let index = 0; (await free()) > 0; index++) await writeFile(join(dir, `fill-${index}`), Buffer.alloc(4096)).catch(() => undefined);
    expect(await free()).toBe(0);
  }

  it('reads an existing token without writing a byte', async () => {
    const dir = await fullTmpfs();
    const dataDir = join(dir, 'data');
    const { token } = await loadOrCreateNodeToken(dataDir);
    await fill(dir);
    expect(await loadOrCreateNodeToken(dataDir)).toEqual({ token, path: join(dataDir, tokenFileName), created: false });
  });

  it('fails clearly when the token must be made and cannot, leaving no file behind', async () => {
    const dir = await fullTmpfs();
    const dataDir = join(dir, 'data');
    await fill(dir);
    const message = await startError(dataDir);
    expect(message).toContain('no space left on device');
    expect(message).toContain('--token');
    expect(message).toContain('--insecure-no-auth');
    expect(await readdir(dataDir)).toEqual([]);
  });

  it('lvnode serve on a full disk: starts with its token file, refuses to start (exit 1, saying why) without one, never without auth', async () => {
    const dir = await fullTmpfs();
    const dataDir = join(dir, 'data');
    const first = await spawnNode({ dataDir, diskSize: '0' });
    expect((await first.terminate()).code).toBe(0);
    await fill(dir);
    const again = await spawnNode({ dataDir, diskSize: '0' });
    expect(again.token).toBe(first.token);
    const client = await again.connect();
    expect(await client.call('bdev_get_bdevs', {})).toEqual([]);
    expect((await again.terminate()).code).toBe(0);
    await unlink(join(dataDir, tokenFileName));
    await fill(dir); // the removed file's page is free again
    const refused = spawnNode({ dataDir, diskSize: '0' });
    await expect(refused).rejects.toThrow(/exited before it was ready \(code 1[\s\S]*cannot create the node's access token[\s\S]*no space left on device/);
    expect(await readdir(dataDir)).not.toContain(tokenFileName);
  });
});
