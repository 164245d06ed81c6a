// Goal (issue 20, item 4): SPDK's Unix socket is 0600, and that only means something if no other
// user can replace the file: the node refuses a directory chain another user could write (group or
// other writable without the sticky bit, or owned by another user) and a socket another user made,
// before it creates anything. A sticky shared directory (/tmp, /var/tmp, SPDK's own place for
// spdk.sock) is taken: its other users cannot remove or rename the node's entries.
import { createServer } from 'node:net';
import { chmod, chown, lstat, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startNode } from '../../src/cli/serve.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';
import { type SpdkSocketServer, assertSocketDirectorySafe, startSpdkSocketServer } from '../../src/transport/spdkSocket.ts';

const isRoot = process.getuid?.() === 0;
const dispatcher = createDispatcher({}, { allowBatch: false, flavor: 'spdk' });
let cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  cleanups = [];
});

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-spdk-dir-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function serve(path: string): Promise<SpdkSocketServer> {
  const server = await startSpdkSocketServer({ path, dispatcher, log: () => {} });
  cleanups.push(() => server.close());
  return server;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

describe('the SPDK socket’s directory', () => {
  it('is refused when group or others may write it without the sticky bit, and nothing is created', async () => {
    for (const mode of [0o777, 0o775, 0o757]) {
      const dir = join(await scratchDir(), 'shared');
      await mkdir(dir);
      await chmod(dir, mode);
      const path = join(dir, 'spdk.sock');
      await expect(serve(path), mode.toString(8)).rejects.toThrow(/writable by group or others \(mode 0\d+\) without the sticky bit/);
      expect(await exists(path)).toBe(false);
    }
  });

  it('is refused when a directory above it is writable by others (they could swap the whole directory)', async () => {
    const above = join(await scratchDir(), 'above');
    await mkdir(join(above, 'below'), { recursive: true });
    await chmod(above, 0o777);
    await chmod(join(above, 'below'), 0o700);
    await expect(serve(join(above, 'below', 'spdk.sock'))).rejects.toThrow(new RegExp(`${above} is writable by group or others`));
  });

  it('is taken when it is sticky (as /tmp and /var/tmp) or only the node’s user can write it; the socket is 0600', async () => {
    const sticky = join(await scratchDir(), 'sticky');
    await mkdir(sticky);
    await chmod(sticky, 0o1777);
    const shared = await serve(join(sticky, 'spdk.sock'));
    expect((await stat(shared.path)).mode & 0o777).toBe(0o600);
    const own = await serve(join(await scratchDir(), 'spdk.sock'));
    expect((await stat(own.path)).mode & 0o777).toBe(0o600);
  });

  it('is refused before lvnode serve creates anything', async () => {
    const scratch = await scratchDir();
    const open = join(scratch, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    const dataDir = join(scratch, 'data');
    await expect(startNode({ dataDir, listen: '127.0.0.1:0', defaultDiskBytes: 0, rpcSocket: join(open, 'spdk.sock') })).rejects.toThrow(/without the sticky bit/);
    expect(await exists(dataDir)).toBe(false);
  });
});

describe.skipIf(!isRoot)('another user’s files on the way (as root, changing owners)', () => {
  it('refuses a directory another user owns, even one only they can write', async () => {
    const theirs = join(await scratchDir(), 'theirs');
    await mkdir(theirs, { mode: 0o755 });
    await chown(theirs, 65534, 65534);
    await expect(assertSocketDirectorySafe(join(theirs, 'spdk.sock'))).rejects.toThrow(/belongs to uid 65534/);
  });

  it('neither talks to nor removes a socket another user made at the path (in a sticky shared directory)', async () => {
    const sticky = join(await scratchDir(), 'sticky');
    await mkdir(sticky);
    await chmod(sticky, 0o1777);
    const path = join(sticky, 'spdk.sock');
    let connections = 0;
    const squatter = createServer(() => connections++);
    await new Promise<void>((resolve) => squatter.listen(path, resolve));
    cleanups.push(() => new Promise((resolve) => squatter.close(resolve)));
    await chown(path, 65534, 65534);
    await expect(serve(path)).rejects.toThrow(/belongs to uid 65534, not to this node's user/);
    expect((await lstat(path)).uid).toBe(65534);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(connections).toBe(0);
  });
});
