// The NBD clients nobody here wrote (Debian qemu-utils, libnbd-bin): finding them and running them.
//
// Tests that need them skip with the reason when one is missing, unless LVNODE_REQUIRE_NBD_CLIENTS=1
// (CI sets it after installing them), in which case a missing client fails the run.
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const nbdClientTools = ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'] as const;

export function missingNbdTools(tools: readonly string[] = nbdClientTools): string[] {
  return tools.filter((tool) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).error !== undefined);
}

/**
 * Why NBD client tests cannot run here, or undefined when they can. Throws when the clients are
 * required (LVNODE_REQUIRE_NBD_CLIENTS=1) and missing.
 */
export function nbdClientsSkipReason(tools: readonly string[] = nbdClientTools): string | undefined {
  const missing = missingNbdTools(tools);
  if (missing.length === 0) return undefined;
  const reason = `NBD clients missing: ${missing.join(', ')} (apt-get install qemu-utils libnbd-bin)`;
  if (process.env.LVNODE_REQUIRE_NBD_CLIENTS === '1') throw new Error(`${reason}; LVNODE_REQUIRE_NBD_CLIENTS=1 requires them`);
  console.warn(`skipping: ${reason}`);
  return reason;
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion; never rejects on a non-zero exit (the test looks at `code`). */
export function runTool(tool: string, args: readonly string[]): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(tool, args, { maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a tool and fails with its output when it exits non-zero. */
export async function runToolOk(tool: string, args: readonly string[]): Promise<string> {
  const result = await runTool(tool, args);
  if (result.code !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${result.code}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** An interactive `qemu-io` whose commands are written to its stdin one at a time. */
export class InteractiveQemuIo {
  private output = '';
  private readonly child: ChildProcess;
  readonly exited: Promise<void>;

  constructor(uri: string) {
    this.child = spawn('qemu-io', ['-f', 'raw', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (this.output += chunk));
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.output += chunk));
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  /** Sends one command and resolves with the output it produced, once `until` matches. */
  async command(line: string, until: RegExp): Promise<string> {
    const start = this.output.length;
    this.child.stdin!.write(`${line}\n`);
    while (!until.test(this.output.slice(start))) {
      if (this.child.exitCode !== null) throw new Error(`qemu-io exited; output:\n${this.output}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return this.output.slice(start);
  }

  async quit(): Promise<void> {
    this.child.stdin!.end('quit\n');
    await this.exited;
  }
}

/** A TLS-PSK identity and its key. */
export interface PskKey {
  readonly identity: string;
  readonly key: Buffer;
}

/** A fresh 256-bit key for `identity` (what `psktool -u IDENTITY` makes). */
export function newPskKey(identity = 'qemu'): PskKey {
  return { identity, key: randomBytes(32) };
}

/**
 * Writes psktool's format (`identity:hexkey` lines) to `path`, mode 0600, and the same keys as
 * `keys.psk` in `qemuDir` when given (qemu's tls-creds-psk reads a directory).
 */
export async function writePskFile(path: string, keys: readonly PskKey[], qemuDir?: string): Promise<void> {
  const text = keys.map((entry) => `${entry.identity}:${entry.key.toString('hex')}\n`).join('');
  await writeFile(path, text, { mode: 0o600 });
  if (qemuDir !== undefined) {
    await mkdir(qemuDir, { recursive: true, mode: 0o700 });
    await writeFile(join(qemuDir, 'keys.psk'), text, { mode: 0o600 });
  }
}

/** qemu's arguments for a TLS-PSK client object `tls0` reading `qemuDir`/keys.psk as `identity`. */
export function qemuTlsObject(qemuDir: string, identity: string): string[] {
  return ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuDir},username=${identity}`];
}

/** qemu's --image-opts for an NBD export over TCP with TLS object `tls0`. */
export function qemuTlsImage(host: string, port: number, exportName: string): string {
  return `driver=nbd,host=${host},port=${port},export=${exportName},tls-creds=tls0`;
}

/** libnbd's URI (nbdinfo, nbdcopy) for an export over TCP with TLS-PSK (libnbd 1.14 takes the identity as the URI's user). */
export function libnbdTlsUri(host: string, port: number, exportName: string, pskFile: string, identity: string): string {
  return `nbds://${encodeURIComponent(identity)}@${host}:${port}/${encodeURI(exportName)}?tls-psk-file=${encodeURIComponent(pskFile)}`;
}
