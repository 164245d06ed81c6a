// Runs the real `lvnode serve` as a child process, for tests that kill it (SIGKILL) or stop it (SIGTERM).
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { RpcClient } from '../../src/cli/rpcClient.ts';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const binPath = fileURLToPath(new URL('../../bin/lvnode.mjs', import.meta.url));
const readyPattern = /lvnode serving JSON-RPC at (ws:\/\/\S+)/;
// Printed right after the URL: the dashboard's link, with the node's own token unless --token
// or --insecure-no-auth was given.
const dashboardPattern = /lvnode dashboard at (http:\/\/\S+)/;
const readyTimeoutMs = 20_000;
const exitTimeoutMs = 15_000;

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface NodeProcess {
  readonly child: ChildProcess;
  readonly url: string;
  /** The dashboard's link as printed (with `?token=` when the node made its own token). */
  readonly dashboardUrl: string;
  /** What clients present: the printed token, or `--token`'s; undefined under --insecure-no-auth. */
  readonly token: string | undefined;
  /** Resolves when the process has exited (it never rejects). */
  readonly exited: Promise<ProcessExit>;
  stdout(): string;
  stderr(): string;
  /** Every JSON log line on stderr, parsed; other lines are skipped. */
  logLines(): Array<Record<string, unknown>>;
  connect(): Promise<RpcClient>;
  /** `kill -9` and wait for the exit. */
  kill9(): Promise<ProcessExit>;
  /** SIGTERM, and wait for the exit (bounded: SIGKILL after `exitTimeoutMs` and fail). */
  terminate(): Promise<ProcessExit & { elapsedMs: number }>;
}

export interface SpawnOptions {
  dataDir: string;
  diskSize?: string;
  configFile?: string;
  /** Log threshold of the child (its JSON lines go to stderr). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** More `lvnode serve` flags (e.g. `--token`, `--insecure-no-auth`). */
  extraArgs?: string[];
  /**
   * `bin/lvnode.mjs` of an older checkout, which prints no dashboard line (to show a test red on
   * the old code); its token is then `--token`'s, if given.
   */
  legacyBin?: string;
}

const live = new Set<NodeProcess>();

/** Starts `lvnode serve` on an ephemeral loopback port and resolves once it printed its URL. */
export async function spawnNode(options: SpawnOptions): Promise<NodeProcess> {
  const args = [options.legacyBin ?? binPath, 'serve', '--data-dir', options.dataDir, '--listen', '127.0.0.1:0', '--default-disk-size', options.diskSize ?? '256M'];
  if (options.configFile) args.push('--config', options.configFile);
  if (options.extraArgs) args.push(...options.extraArgs);
  const child = spawn(process.execPath, args, {
    cwd: repoRoot,
    env: { ...process.env, LVNODE_LOG_LEVEL: options.logLevel ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<ProcessExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const clients: RpcClient[] = [];

  const [url, dashboardUrl] = await new Promise<[string, string]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`lvnode did not start within ${readyTimeoutMs} ms; stderr:\n${stderr}`)), readyTimeoutMs);
    const onData = () => {
      const match = readyPattern.exec(stdout);
      const dashboard = dashboardPattern.exec(stdout) ?? (options.legacyBin && match ? [, match[1]!.replace(/^ws:/, 'http:')] : null);
      if (!match || !dashboard) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve([match[1]!, dashboard[1]!]);
    };
    child.stdout!.on('data', onData);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`lvnode exited before it was ready (code ${code}, signal ${signal}); stderr:\n${stderr}`));
    });
  }).catch(async (error: unknown) => {
    child.kill('SIGKILL');
    await exited;
    throw error;
  });

  const closeClients = () => Promise.all(clients.splice(0).map((client) => client.close()));
  const waitExit = async (): Promise<ProcessExit> => {
    const result = await exited;
    await closeClients();
    return result;
  };
  const token = new URL(dashboardUrl).searchParams.get('token') ?? givenToken(options.extraArgs ?? []);
  const handle: NodeProcess = {
    child,
    url,
    dashboardUrl,
    token,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    logLines: () =>
      stderr.split('\n').flatMap((line) => {
        try {
          const parsed: unknown = JSON.parse(line);
          return parsed !== null && typeof parsed === 'object' ? [parsed as Record<string, unknown>] : [];
        } catch {
          return [];
        }
      }),
    connect: async () => {
      const client = await RpcClient.connect(url, { token });
      // A client whose server was killed sees errors on its socket; they are expected here.
      client.raw.on('error', () => {});
      clients.push(client);
      return client;
    },
    kill9: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return waitExit();
    },
    terminate: async () => {
      const startedMs = Date.now();
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), exitTimeoutMs);
      const result = await waitExit();
      clearTimeout(timer);
      return { ...result, elapsedMs: Date.now() - startedMs };
    },
  };
  live.add(handle);
  void exited.then(() => live.delete(handle));
  return handle;
}

function givenToken(args: readonly string[]): string | undefined {
  const index = args.indexOf('--token');
  return index === -1 ? undefined : args[index + 1];
}

/** SIGKILLs every node this module started that is still running (for afterEach, also on failure). */
export async function killAllNodes(): Promise<void> {
  await Promise.all([...live].map((node) => node.kill9()));
}
