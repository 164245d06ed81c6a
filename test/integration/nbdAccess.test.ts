// Goal: the attack of issue 20, on NBD, by another local user. Root starts `lvnode serve` as the
// README says and exports a 0600 root file as a bdev; `nobody` (setpriv) then tries every way in:
// the default Unix socket refuses it (EACCES) even in an open directory; over TCP with TLS-PSK,
// without TLS it gets NBD_REP_ERR_TLS_REQD and no export, with a wrong key the TLS handshake fails;
// nbdinfo, nbdcopy and qemu-io read nothing and write nothing. Also: a TCP listener without
// TLS is refused at start unless --nbd-insecure-tcp, which is warned about.
// Skipped, saying why, when not root (CI runs as root) or when setpriv is missing.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { optionReply } from '../../src/transport/nbd/protocol.ts';
import { type NodeProcess, killAllNodes, spawnNode } from './processNode.ts';
import { type ToolResult, nbdClientsSkipReason, newPskKey, runTool, writePskFile } from './nbdTools.ts';

const nobody = ['--reuid=nobody', '--regid=nogroup', '--clear-groups'];
const nobodyUid = 65534;

function rootSkipReason(): string | undefined {
  const reason =
    process.getuid?.() !== 0
      ? 'not root: a test that acts as another local user (setpriv --reuid=nobody) needs root (CI runs as root)'
      : spawnSync('setpriv', ['--version'], { stdio: 'ignore' }).error !== undefined
        ? 'setpriv missing (util-linux)'
        : undefined;
  if (reason) console.warn(`skipping: ${reason}`);
  return reason;
}

const skipReason = rootSkipReason() ?? nbdClientsSkipReason();

/** Runs a command as nobody (no groups), in a directory nobody may enter. */
function asNobody(command: string, args: readonly string[]): Promise<ToolResult> {
  return runTool('setpriv', [...nobody, command, ...args]);
}

// What nobody runs to speak NBD by hand: connect, then (TCP) ask for everything without TLS.
const probeSource = `
import { connect } from 'node:net';
const [kind, where, port, exportName] = process.argv.slice(2);
const socket = kind === 'unix' ? connect(where) : connect(Number(port), where);
let input = Buffer.alloc(0);
const replies = [];
socket.on('error', (error) => { console.log(JSON.stringify({ error: error.code })); process.exit(0); });
socket.on('close', () => { console.log(JSON.stringify({ replies, closed: true, bytes: input.length })); process.exit(0); });
function option(type, data = Buffer.alloc(0)) {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(0x49484156454f5054n, 0);
  header.writeUInt32BE(type, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}
function go(name) {
  const bytes = Buffer.from(name);
  const out = Buffer.alloc(6 + bytes.length);
  out.writeUInt32BE(bytes.length, 0);
  bytes.copy(out, 4);
  return out;
}
socket.on('connect', () => {
  if (kind === 'unix') { console.log(JSON.stringify({ connected: true })); process.exit(0); }
  socket.write(Buffer.from([0, 0, 0, 3]));
  // LIST, INFO, GO, STRUCTURED_REPLY, then EXPORT_NAME (which cannot be refused, so closes).
  socket.write(Buffer.concat([option(3), option(6, go(exportName)), option(7, go(exportName)), option(8), option(1, Buffer.from(exportName))]));
});
socket.on('data', (chunk) => {
  input = Buffer.concat([input, chunk]);
  let at = 18;
  replies.length = 0;
  while (input.length >= at + 20) {
    const length = input.readUInt32BE(at + 16);
    replies.push({ option: input.readUInt32BE(at + 8), type: input.readUInt32BE(at + 12), text: input.toString('utf8', at + 20, at + 20 + length) });
    at += 20 + length;
  }
});
`;

describe.skipIf(skipReason !== undefined)('NBD as another local user (nobody)', () => {
  let dir: string;
  // One per node: a file is opened by one node at a time.
  const secretPaths: string[] = [];
  let secret: Buffer;
  let probePath: string;
  let socketNode: NodeProcess;
  let tcpNode: NodeProcess;
  let socketPath: string;
  let port: number;
  let wrongKeyFile: string;
  let evilPath: string;

  async function nbdLine(node: NodeProcess): Promise<string> {
    for (;;) {
      const match = /lvnode serving NBD at (.*)\n/.exec(node.stdout());
      if (match) return match[1]!;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async function exportSecret(node: NodeProcess, secretPath: string): Promise<void> {
    const rpc = await node.connect();
    await rpc.call('bdev_aio_create', { name: 'loot', filename: secretPath, block_size: 512 });
    await rpc.call('nbd_start_export', { bdev_name: 'loot' });
  }

  beforeAll(async () => {
    // A directory nobody may enter and read (for the probe and its own files), holding root's secret.
    dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-access-'));
    await chmod(dir, 0o755);
    secret = Buffer.concat([Buffer.from('root secret '), randomBytes(4096 - 12)]);
    for (const name of ['secret-socket.img', 'secret-tcp.img']) {
      secretPaths.push(join(dir, name));
      await writeFile(join(dir, name), secret, { mode: 0o600 });
    }
    probePath = join(dir, 'probe.mjs');
    await writeFile(probePath, probeSource, { mode: 0o644 });
    // nobody's own key file: a key it made up, for the identity qemu clients use.
    wrongKeyFile = join(dir, 'nobody.psk');
    await writePskFile(wrongKeyFile, [newPskKey('qemu')]);
    await chown(wrongKeyFile, nobodyUid, nobodyUid);
    evilPath = join(dir, 'evil.raw');
    await writeFile(evilPath, Buffer.alloc(4096, 0x66), { mode: 0o644 });
    const keyFile = join(dir, 'keys.psk');
    await writePskFile(keyFile, [newPskKey('qemu')]);

    // The README's commands: `--nbd-listen` alone, and TCP with a key file.
    socketNode = await spawnNode({ dataDir: join(dir, 'data-socket'), diskSize: '64M', extraArgs: ['--nbd-listen'] });
    tcpNode = await spawnNode({ dataDir: join(dir, 'data-tcp'), diskSize: '64M', extraArgs: ['--nbd-listen', '127.0.0.1:0', '--nbd-tls-psk', keyFile] });
    socketPath = /^(\S+)/.exec(await nbdLine(socketNode))![1]!;
    port = Number(/^127\.0\.0\.1:(\d+) /.exec(await nbdLine(tcpNode))![1]);
    await exportSecret(socketNode, secretPaths[0]!);
    await exportSecret(tcpNode, secretPaths[1]!);
  });

  afterAll(async () => {
    await killAllNodes();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('serves the default Unix socket in the data directory, mode 0600, and says where', async () => {
    expect(socketPath).toBe(join(dir, 'data-socket', 'nbd.sock'));
    expect(await nbdLine(socketNode)).toContain('mode 0600: this user only');
    expect((await stat(socketPath)).mode & 0o777).toBe(0o600);
  });

  it('refuses nobody at the Unix socket (EACCES), even when the data directory is opened up', async () => {
    // The data directory is the node's alone (0700); opened, the socket's own mode must still refuse.
    await chmod(join(dir, 'data-socket'), 0o755);
    expect((await asNobody('test', ['-S', socketPath])).code).toBe(0);
    const probe = await asNobody(process.execPath, [probePath, 'unix', socketPath]);
    expect(JSON.parse(probe.stdout)).toEqual({ error: 'EACCES' });
    const info = await asNobody('nbdinfo', [`nbd+unix:///loot?socket=${socketPath}`]);
    expect(info.code).not.toBe(0);
    expect(info.stderr).toContain('Permission denied');
    const copy = await asNobody('nbdcopy', [`nbd+unix:///loot?socket=${socketPath}`, '-']);
    expect(copy.code).not.toBe(0);
    expect(copy.stdout).toBe('');
  });

  it('answers nobody over TCP without TLS with NBD_REP_ERR_TLS_REQD only, naming no export, then closes', async () => {
    const probe = await asNobody(process.execPath, [probePath, 'tcp', '127.0.0.1', String(port), 'loot']);
    const { replies, closed, bytes } = JSON.parse(probe.stdout) as { replies: Array<{ type: number; text: string }>; closed: boolean; bytes: number };
    expect(closed).toBe(true);
    expect(replies.map((reply) => reply.type)).toEqual([optionReply.errTlsReqd, optionReply.errTlsReqd, optionReply.errTlsReqd, optionReply.errTlsReqd]);
    expect(replies.every((reply) => !reply.text.includes('loot'))).toBe(true);
    // The greeting and four refusals, nothing else (no export size, no data).
    expect(bytes).toBe(18 + replies.reduce((sum, reply) => sum + 20 + Buffer.byteLength(reply.text), 0));
  });

  it('gives nobody nothing with real clients: no TLS, a key of its own, reads and writes', async () => {
    const tlsUri = `nbds://qemu@127.0.0.1:${port}/loot?tls-psk-file=${wrongKeyFile}`;
    const attempts = [
      await asNobody('nbdcopy', [`nbd://127.0.0.1:${port}/loot`, '-']),
      await asNobody('nbdinfo', ['--list', `nbd://127.0.0.1:${port}/`]),
      await asNobody('nbdcopy', [tlsUri, '-']),
      await asNobody('nbdcopy', [evilPath, tlsUri]),
      await asNobody('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/loot`, '-c', 'write -P 0x66 0 4k', '-c', 'read -v 0 512']),
    ];
    for (const attempt of attempts) {
      expect(attempt.code).not.toBe(0);
      expect(attempt.stdout).not.toContain('root secret');
      expect(attempt.stdout).not.toContain('loot');
    }
    expect(attempts[2]!.stderr).toMatch(/handshake|TLS/i);
    // Root's files are as they were.
    for (const path of secretPaths) expect((await readFile(path)).equals(secret)).toBe(true);
  });
});

describe('who may listen how, as `lvnode serve` says it', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-flags-'));
  });

  afterAll(async () => {
    await killAllNodes();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('refuses to start on TCP without TLS, and warns at every start with --nbd-insecure-tcp', async () => {
    await expect(spawnNode({ dataDir: join(dir, 'refused'), diskSize: '64M', extraArgs: ['--nbd-listen', '127.0.0.1:0'] })).rejects.toThrow(
      /--nbd-listen 127\.0\.0\.1:0 is TCP, which every local user .* --nbd-tls-psk FILE .* --nbd-insecure-tcp/,
    );
    for (let start = 0; start < 2; start++) {
      const node = await spawnNode({ dataDir: join(dir, 'insecure'), diskSize: '64M', logLevel: 'warn', extraArgs: ['--nbd-listen', '127.0.0.1:0', '--nbd-insecure-tcp'] });
      while (!node.stdout().includes('lvnode serving NBD at')) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(node.stdout()).toMatch(/lvnode serving NBD at 127\.0\.0\.1:\d+ \(no TLS: anyone who can reach it reads and writes every export\)/);
      expect(node.logLines().some((line) => line.level === 'warn' && String(line.msg).startsWith('NBD over TCP without TLS (--nbd-insecure-tcp)'))).toBe(true);
      expect((await node.terminate()).code).toBe(0);
    }
  });
});
