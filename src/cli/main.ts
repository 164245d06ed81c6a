// The `lvnode` command: serve, rpc, status, demo.
import { parseArgs } from 'node:util';
import { log } from '../log.ts';
import { join } from 'node:path';
import { nbdSocketNameDefault } from '../constants.ts';
import { stringifyJson, parseJson } from '../transport/json64.ts';
import { checksumRegisterMethods, watchChecksum } from './checksumProgress.ts';
import { ProgressLine } from './progress.ts';
import { connectToNode, nodeConnectionOptions } from './nodeConnection.ts';
import { RpcCallError, type RpcClient } from './rpcClient.ts';
import { collectStatus, renderStatus } from './status.ts';

const usage = `lvnode — a storage node where every logical volume is an XState actor

Usage:
  lvnode serve [--data-dir DIR] [--listen HOST:PORT] [--token TOKEN] [--default-disk-size SIZE|0] [--config FILE]
               [--insecure-no-auth] (no credential at all, loopback only; by default clients need the
               token the node keeps in DATA-DIR/lvnode.token, or the one given with --token)
               [--nbd-listen [HOST:PORT|/path/to/socket]] (default off; DATA-DIR/${nbdSocketNameDefault}, mode 0600, without a value)
               [--nbd-tls-psk FILE] (TLS-PSK keys, psktool's "identity:hexkey" lines; required for TCP)
               [--nbd-insecure-tcp] (TCP without TLS, for a trusted network only)
               [--rpc-socket PATH] (SPDK's JSON-RPC on a Unix socket, e.g. /var/tmp/spdk.sock)
               [--nvmf-insecure-tcp] (NVMe/TCP listeners on loopback: no credential, any local user can connect)
               [--nvmf-allow-remote] (NVMe/TCP listeners beyond loopback too; no authentication: a trusted network only)
               [--inspect stately[=URL]] [--max-frame-bytes N] [--max-connections N]
               [--max-in-flight N] [--heartbeat-ms N]
  lvnode rpc METHOD [JSON-PARAMS] [--url URL] [--token TOKEN] [--data-dir DIR] [--no-progress]
               (bdev_lvol_register_snapshot_checksum and _range_checksums draw a progress bar on
               stderr when it is a terminal; Ctrl-C leaves the checksum running in the node)
  lvnode status [--url URL] [--token TOKEN] [--data-dir DIR]
               (lvstores, their lvols as snapshot chains, checksums, copies and the node's health)
  lvnode demo [--url URL] [--token TOKEN] [--data-dir DIR] [--size-mib N]

The client commands send --token, else LVNODE_TOKEN, else the node's own token when they can read
DATA-DIR/lvnode.token (--data-dir, LVNODE_DATA_DIR, ./data), after the node proved it knows it.

Environment: LVNODE_DATA_DIR, LVNODE_TOKEN, LVNODE_URL, LVNODE_RPC_SOCKET, LVNODE_LOG_LEVEL (debug|info|warn|error|silent).`;

/** "1G", "512MiB", "64k" or plain bytes. */
export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new Error(`not a size: ${text}`);
  const power = ['', 'k', 'm', 'g', 't'].indexOf(match[2]!.toLowerCase());
  return Number(match[1]) * 1024 ** power;
}

function positiveInteger(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${flag} wants a positive integer, got ${text}`);
  return value;
}

/**
 * `--nbd-listen` may stand alone (SPEC §1): then it means the Unix socket in the data directory.
 * parseArgs wants a value for a string option, so a bare flag (last, or followed by another flag)
 * gets this marker, replaced once the data directory is known. No argument can hold a NUL.
 */
const nbdListenInDataDir = '\0data-dir';

function withNbdListenDefault(args: string[]): string[] {
  return args.flatMap((arg, index) => {
    const next = args[index + 1];
    return arg === '--nbd-listen' && (next === undefined || next.startsWith('--')) ? [arg, nbdListenInDataDir] : [arg];
  });
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args: withNbdListenDefault(args),
    options: {
      'data-dir': { type: 'string' },
      listen: { type: 'string' },
      config: { type: 'string' },
      token: { type: 'string' },
      'insecure-no-auth': { type: 'boolean' },
      'default-disk-size': { type: 'string' },
      inspect: { type: 'string' },
      'max-frame-bytes': { type: 'string' },
      'max-connections': { type: 'string' },
      'max-in-flight': { type: 'string' },
      'heartbeat-ms': { type: 'string' },
      'nbd-listen': { type: 'string' },
      'nbd-tls-psk': { type: 'string' },
      'nbd-insecure-tcp': { type: 'boolean' },
      'rpc-socket': { type: 'string' },
      'nvmf-allow-remote': { type: 'boolean' },
      'nvmf-insecure-tcp': { type: 'boolean' },
    },
    strict: true,
  });
  const inspect = values.inspect;
  if (values.token !== undefined) {
    // Every local user can read a process's arguments (ps, /proc/PID/cmdline), not its environment.
    log('warn', '--token on the command line is visible to every local user (ps); prefer LVNODE_TOKEN or the token file the node makes');
  }
  if (inspect !== undefined && !/^stately(=.+)?$/.test(inspect)) throw new Error('--inspect takes "stately" or "stately=URL"');
  const limits = Object.fromEntries(
    Object.entries({
      frameBytesMax: positiveInteger(values['max-frame-bytes'], '--max-frame-bytes'),
      connectionsMax: positiveInteger(values['max-connections'], '--max-connections'),
      inFlightPerConnectionMax: positiveInteger(values['max-in-flight'], '--max-in-flight'),
      heartbeatIntervalMs: positiveInteger(values['heartbeat-ms'], '--heartbeat-ms'),
    }).filter(([, value]) => value !== undefined),
  );
  // Loaded here, not at the top: `lvnode rpc` needs none of the node (xstate, zod, WASM CRC), and
  // loading it cost every CLI call about 0.3 s.
  const { accessLines, describeNbdListener, serveDefaults, startNode } = await import('./serve.ts');
  outliveOutputReaders();
  const dataDir = values['data-dir'] ?? process.env.LVNODE_DATA_DIR ?? serveDefaults.dataDir;
  const nbdListen = values['nbd-listen'];
  const running = await startNode({
    dataDir,
    listen: values.listen ?? serveDefaults.listen,
    configFile: values.config,
    token: values.token ?? (process.env.LVNODE_TOKEN || undefined), // an empty variable is an unset one
    insecureNoAuth: values['insecure-no-auth'] ?? false,
    defaultDiskBytes: values['default-disk-size'] ? parseSize(values['default-disk-size']) : serveDefaults.defaultDiskBytes,
    statelyInspectUrl: inspect === undefined ? undefined : (inspect.split('=')[1] ?? 'ws://localhost:8080'),
    limits,
    nbdListen: nbdListen === nbdListenInDataDir ? join(dataDir, nbdSocketNameDefault) : nbdListen,
    nbdTlsPskFile: values['nbd-tls-psk'],
    nbdInsecureTcp: values['nbd-insecure-tcp'] ?? false,
    rpcSocket: values['rpc-socket'] ?? process.env.LVNODE_RPC_SOCKET,
    nvmfAllowRemote: values['nvmf-allow-remote'] ?? false,
    nvmfInsecureTcp: values['nvmf-insecure-tcp'] ?? false,
  });
  // Signals are handled before the node says it is ready: a SIGTERM sent as soon as the lines
  // below appear must shut it down cleanly, not kill it with the default action.
  const stopped = new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      process.stdout.write(`\n${signal}: shutting down\n`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    watchLauncher(() => stop('npm (the launcher) exited'));
  });
  process.stdout.write(`lvnode serving JSON-RPC at ${running.url}\n`);
  for (const line of accessLines(running)) process.stdout.write(line);
  if (running.nbd) process.stdout.write(`lvnode serving NBD at ${describeNbdListener(running.nbd)}\n`);
  if (running.spdkSocket) process.stdout.write(`lvnode serving SPDK JSON-RPC at ${running.spdkSocket.path}\n`);
  await stopped;
  // A device that could not be flushed or closed may have lost writes: said, and the exit code
  // tells the service manager (the node's own log lines name each device).
  const exitCode = await running.close().then(
    () => 0,
    (error: unknown) => {
      process.stderr.write(`lvnode serve: ${error instanceof Error ? error.message : String(error)}\n`);
      return 1;
    },
  );
  // A library timer may still hold the event loop (the @statelyai/inspect adapter keeps retrying
  // its relay every 5 s even after stop()), so the exit is bounded: leave within a second
  // whatever still holds on.
  setTimeout(() => process.exit(exitCode), 1000).unref();
  return exitCode;
}

/**
 * The node outlives whoever reads its output. Once a supervisor's log pipe (or `| tee`) closes,
 * a write fails with EPIPE and the stream emits 'error', which unhandled killed the node at its
 * next log line, mid-operation or mid-shutdown. From then on lines are lost; the node, its data
 * and its clients are not.
 */
function outliveOutputReaders(): void {
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
}

/**
 * Under `npm start`, npm is the process a service manager signals, and npm 11 exits on SIGTERM
 * without passing it on: the node would run on as an orphan, still listening. So a node that
 * npm started shuts down, cleanly, once npm is gone (its parent changes). A node started any
 * other way (`bin/lvnode.mjs serve`, nohup, systemd) is left alone.
 */
function watchLauncher(onGone: () => void): void {
  if (process.env.npm_lifecycle_event === undefined) return;
  const launcherPid = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === launcherPid) return;
    clearInterval(timer);
    onGone();
  }, launcherPollMs);
  timer.unref();
}

const launcherPollMs = 500;

async function rpc(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...nodeConnectionOptions, 'no-progress': { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  const [method, paramsText] = positionals;
  if (!method) throw new Error('lvnode rpc METHOD [JSON-PARAMS]');
  const params = paramsText === undefined ? {} : parseJson(paramsText);
  if (typeof params !== 'object' || params === null || Array.isArray(params)) throw new Error('JSON-PARAMS must be an object');
  const client = await connectToNode(values);
  try {
    if (checksumRegisterMethods.has(method)) {
      return await registerChecksum(client, method, params as Record<string, unknown>, { progress: !values['no-progress'] && process.stderr.isTTY === true });
    }
    return printOutcome(await settle(client.call(method, params as Record<string, unknown>)));
  } finally {
    await client.close();
  }
}

type Outcome = { ok: true; result: unknown } | { ok: false; error: unknown };

function settle(call: Promise<unknown>): Promise<Outcome> {
  return call.then(
    (result) => ({ ok: true, result }),
    (error: unknown) => ({ ok: false, error }),
  );
}

/** The result on stdout, or the RPC error object on stderr with exit 1; other failures throw. */
function printOutcome(outcome: Outcome): number {
  if (outcome.ok) {
    process.stdout.write(`${stringifyJson(outcome.result)}\n`);
    return 0;
  }
  const error = outcome.error;
  if (!(error instanceof RpcCallError)) throw error;
  process.stderr.write(`${stringifyJson({ code: error.code, message: error.message, ...(error.data ? { data: error.data } : {}) })}\n`);
  return 1;
}

/**
 * A register call, which waits for the whole walk: with `progress`, a live line on stderr from
 * the checksum notifications of this connection. Ctrl-C leaves the walk running in the node.
 */
async function registerChecksum(client: RpcClient, method: string, params: Record<string, unknown>, options: { progress: boolean }): Promise<number> {
  const name = typeof params.name === 'string' ? params.name : '';
  const line = new ProgressLine(process.stderr);
  const watch = options.progress && name !== '' ? await watchChecksum(client, name, line) : null;
  let onInterrupt = (): void => undefined;
  const interrupted = new Promise<'interrupted'>((resolve) => {
    onInterrupt = () => resolve('interrupted');
    process.once('SIGINT', onInterrupt);
  });
  try {
    const outcome = await Promise.race([settle(client.call(method, params)), interrupted]);
    if (outcome === 'interrupted') {
      line.clear();
      const stopCommand = `lvnode rpc bdev_lvol_stop_snapshot_checksum '${stringifyJson({ name })}'`;
      // On a terminal, erase the echoed ^C first.
      const erase = process.stderr.isTTY ? '\r\x1b[K' : '';
      process.stderr.write(`${erase}lvnode rpc: interrupted; the checksum continues in the node (stop it with ${stopCommand})\n`);
      return sigintExitCode;
    }
    watch?.end(outcome.ok ? undefined : outcome.error);
    return printOutcome(outcome);
  } finally {
    process.off('SIGINT', onInterrupt);
    line.clear();
  }
}

/** 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C. */
const sigintExitCode = 130;

async function status(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: nodeConnectionOptions,
    strict: true,
  });
  const client = await connectToNode(values);
  try {
    process.stdout.write(renderStatus(await collectStatus(client)));
    return 0;
  } finally {
    await client.close();
  }
}

/**
 * `lvnode status | head`: once the reader has what it wanted and closes the pipe, the rest of
 * the output is not wanted. That is not an error to report with a stack trace (Node ignores
 * SIGPIPE, so a write fails with EPIPE instead): the command stops there, exit 0.
 */
function stopWhenOutputClosed(): void {
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
    process.exit(0);
  });
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // The node itself outlives its output's reader instead (see serve).
  if (command !== 'serve') stopWhenOutputClosed();
  // `lvnode serve --help` and friends: usage, not a parser error about an unknown option.
  if (command !== undefined && (rest.includes('--help') || rest.includes('-h'))) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'rpc':
        return await rpc(rest);
      case 'status':
        return await status(rest);
      case 'demo':
        return await (await import('./demo.ts')).runDemo(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${usage}\n`);
        return command === undefined ? 1 : 0;
      default:
        process.stderr.write(`unknown command ${command}\n\n${usage}\n`);
        return 1;
    }
  } catch (error) {
    process.stderr.write(`lvnode ${command}: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
