// Goal (issue 20, item 1): how `lvnode serve` decides who may drive it, on the real process. By
// default the token it keeps in its data directory (printed once, in the dashboard's link);
// --token / LVNODE_TOKEN instead (no file made); no credential only with --insecure-no-auth, on
// loopback, with a warning at every start. Contradicting or unusable choices fail the start.
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { RpcClient } from '../../src/cli/rpcClient.ts';
import { killAllNodes, spawnNode } from '../integration/processNode.ts';

const binPath = fileURLToPath(new URL('../../bin/lvnode.mjs', import.meta.url));
let cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  await killAllNodes();
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  cleanups = [];
});

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-serve-auth-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `lvnode ARGS` with an environment free of the caller's LVNODE_* settings, plus `env`. */
function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('LVNODE_')));
  return new Promise((resolve) => {
    execFile(process.execPath, [binPath, ...args], { timeout: 30_000, env: { ...clean, ...env } }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('lvnode serve and its credential', () => {
  it('by default keeps one token in the data directory across restarts, and the CLI finds it there', async () => {
    const dataDir = join(await scratchDir(), 'data');
    const first = await spawnNode({ dataDir, diskSize: '0' });
    expect(first.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(first.dashboardUrl).toBe(`${first.url.replace(/^ws:/, 'http:')}?token=${first.token}`);
    expect((await first.terminate()).code).toBe(0);
    const second = await spawnNode({ dataDir, diskSize: '0' });
    expect(second.token).toBe(first.token);
    expect(await runCli(['rpc', 'bdev_get_bdevs', '--url', second.url, '--data-dir', dataDir])).toEqual({ code: 0, stdout: '[]\n', stderr: '' });
    const elsewhere = await runCli(['rpc', 'bdev_get_bdevs', '--url', second.url, '--data-dir', join(dataDir, 'nope')]);
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.stderr).toContain('HTTP 401');
    expect(elsewhere.stderr).toContain('no such file');
    // The environment names the data directory as well as the flag does.
    expect((await runCli(['status', '--url', second.url], { LVNODE_DATA_DIR: dataDir })).code).toBe(0);
  });

  it('with --token uses that one: no token file is made, the link does not repeat it, the CLI needs it given', async () => {
    const dataDir = join(await scratchDir(), 'data');
    const token = 'given-by-the-operator-42';
    const node = await spawnNode({ dataDir, diskSize: '0', extraArgs: ['--token', token] });
    expect(node.dashboardUrl).toBe(node.url.replace(/^ws:/, 'http:'));
    expect(node.stdout()).not.toContain(token);
    expect(node.stderr()).not.toContain(token);
    await expect.poll(() => node.logLines().some((record) => record.level === 'warn' && String(record.msg).includes('visible to every local user'))).toBe(true);
    expect(await readdir(dataDir)).not.toContain('lvnode.token');
    expect((await runCli(['rpc', 'bdev_get_bdevs', '--url', node.url, '--data-dir', dataDir])).stderr).toContain('HTTP 401');
    expect(await runCli(['rpc', 'bdev_get_bdevs', '--url', node.url], { LVNODE_TOKEN: token })).toMatchObject({ code: 0, stdout: '[]\n' });
  });

  it('runs without a credential only with --insecure-no-auth, warning at every start; the page is told no token is needed', async () => {
    const dataDir = join(await scratchDir(), 'data');
    for (let start = 0; start < 2; start++) {
      const node = await spawnNode({ dataDir, diskSize: '0', logLevel: 'warn', extraArgs: ['--insecure-no-auth'] });
      expect(node.token).toBeUndefined();
      expect(node.stdout()).toContain('WARNING: running WITHOUT authentication (--insecure-no-auth)');
      // stderr is its own pipe: its lines may come after stdout's.
      await expect.poll(() => node.logLines().filter((record) => record.level === 'warn' && String(record.msg).includes('WITHOUT authentication')).length).toBe(1);
      const client = await RpcClient.connect(node.url);
      expect(await client.call('bdev_get_bdevs', {})).toEqual([]);
      await client.close();
      const config = await fetch(`${node.url.replace(/^ws:/, 'http:')}config.json`);
      expect(await config.json()).toEqual({ token_required: false });
      expect((await node.terminate()).code).toBe(0);
    }
    expect(await readdir(dataDir)).not.toContain('lvnode.token');
  });

  it('refuses --insecure-no-auth off loopback, next to a token, and a token it cannot use, without echoing it', async () => {
    const dataDir = join(await scratchDir(), 'data');
    await expect(spawnNode({ dataDir, extraArgs: ['--insecure-no-auth', '--listen', '0.0.0.0:0'] })).rejects.toThrow(/code 1[\s\S]*--insecure-no-auth is refused on 0\.0\.0\.0/);
    await expect(spawnNode({ dataDir, extraArgs: ['--insecure-no-auth', '--token', 'x'] })).rejects.toThrow(/code 1[\s\S]*contradict each other/);
    const unusable = await spawnNode({ dataDir, extraArgs: ['--token', 'two words'] }).catch((error: Error) => error.message);
    expect(unusable).toContain('is not usable');
    expect(unusable).not.toContain('two words');
    // Nothing was made by the refused starts.
    await expect(readdir(dataDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
