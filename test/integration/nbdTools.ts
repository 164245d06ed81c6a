// The NBD clients nobody here wrote (Debian qemu-utils, libnbd-bin): finding them and running them.
//
// Tests that need them skip with the reason when one is missing, unless LVNODE_REQUIRE_NBD_CLIENTS=1
// (CI sets it after installing them), in which case a missing client fails the run.
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';

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
