// `lvnode serve`: composes devices, the node, the method table and the WebSocket server.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { clusterSizeBytesDefault, dataDirDefault, diskSizeBytesDefault, listenDefault } from '../constants.ts';
import { FileDevice } from '../device/fileDevice.ts';
import { fileIoInfo } from '../device/fileIo.ts';
import { type ShutdownFailure, StorageNode } from '../actors/node.ts';
import { type BackgroundOptions, defaultBackgroundOptions, validateBackgroundOptions } from '../actors/scheduler.ts';
import { validateVerifyPolicy } from '../actors/verifyPolicy.ts';
import { type VerifyPolicy, defaultVerifyPolicy } from '../machines/verifyPolicyMachine.ts';
import { configureBackgroundThreads, crcInfo } from '../checksum/clusterCrc.ts';
import { log } from '../log.ts';
import { type Runtime, systemRuntime } from '../runtime.ts';
import { createDispatcher } from '../transport/jsonRpc.ts';
import type { MethodTable } from '../transport/methodTable.ts';
import { type DataDirLock, lockDataDir } from './dataDirLock.ts';
import { loadOrCreateNodeToken, tokenProblem } from './nodeToken.ts';
import { SavedConfigWriter, parseConfig, readConfig, readConfigText, replayConfig, savedConfigName, writeFileAtomically } from './config.ts';
import { createMethodTable } from '../transport/methods.ts';
import { RpcStats } from '../transport/stats.ts';
import { type SpdkSocketServer, claimSocketPath, startSpdkSocketServer } from '../transport/spdkSocket.ts';
import { buildDashboard } from '../transport/dashboardAssets.ts';
import { StaticFiles } from '../transport/httpStatic.ts';
import { type RpcServer, type RpcServerLimits, isLoopbackHost, startRpcServer } from '../transport/wsServer.ts';
import { NvmfTcpTransport } from '../transport/nvmf/target.ts';
import { type NbdAddress, type NbdListenerConfig, NbdServer, assertNbdAddressFree, describeNbdListener, formatNbdAddress, resolveNbdListener } from '../transport/nbd/server.ts';

export { describeNbdListener, formatNbdAddress };

export interface ServeOptions {
  dataDir: string;
  listen: string;
  /** An SPDK-style JSON config whose bdev calls are replayed at start (after the saved ones). */
  configFile?: string | undefined;
  /** The credential clients must present (--token, LVNODE_TOKEN); else the data directory's token file. */
  token?: string | undefined;
  /** No credential at all (--insecure-no-auth): loopback only, a warning at every start. */
  insecureNoAuth?: boolean | undefined;
  defaultDiskBytes: number;
  /** Attach @statelyai/inspect, sending to this relay URL. */
  statelyInspectUrl?: string | undefined;
  limits?: Partial<RpcServerLimits>;
  /** Serve NBD (SPEC §7) on `HOST:PORT` (port 0 picks one) or a Unix socket path; off when undefined. */
  nbdListen?: string | undefined;
  /** TLS-PSK key file for the NBD listener (psktool's lines); TCP needs it unless `nbdInsecureTcp`. */
  nbdTlsPskFile?: string | undefined;
  /** NBD over TCP without TLS, for a trusted network (--nbd-insecure-tcp): a warning at every start. */
  nbdInsecureTcp?: boolean | undefined;
  /** Serve SPDK's own JSON-RPC framing and error codes (SPEC §3.2) on this Unix socket path too. */
  rpcSocket?: string | undefined;
  /** NVMe/TCP listeners (added by nvmf_subsystem_add_listener) may bind non-loopback addresses. */
  nvmfAllowRemote?: boolean | undefined;
  /** --nvmf-insecure-tcp: NVMe/TCP listeners on loopback, which has no credential (every local user reaches it). */
  nvmfInsecureTcp?: boolean | undefined;
  runtime?: Runtime;
}

/** How clients authenticate to the WebSocket endpoint (SPEC §3.1), as the node started. */
export type NodeAuth =
  | { readonly kind: 'token'; readonly token: string; readonly source: 'file'; readonly path: string; readonly created: boolean }
  | { readonly kind: 'token'; readonly token: string; readonly source: 'option' }
  | { readonly kind: 'none' };

export interface RunningNode {
  readonly node: StorageNode;
  readonly server: RpcServer;
  readonly url: string;
  /** The dashboard's address, without the token. */
  readonly dashboardUrl: string;
  readonly auth: NodeAuth;
  /** The NBD listener, when `nbdListen` was given. */
  readonly nbd: NbdServer | undefined;
  /** Where NBD clients connect (the actual port when 0 was asked for). */
  readonly nbdAddress: NbdAddress | undefined;
  /** The NVMe/TCP transport: its ports open as nvmf_subsystem_add_listener asks. */
  readonly nvmf: NvmfTcpTransport;
  /** SPDK's Unix socket, when `rpcSocket` was given. */
  readonly spdkSocket: SpdkSocketServer | undefined;
  /** Stops everything; rejects with ShutdownIncompleteError (after closing the rest) when a device could not be flushed or closed. */
  close(): Promise<void>;
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(listen);
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port > 65_535) throw new Error(`--listen wants HOST:PORT, got ${listen}`);
  return { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

/**
 * The embedded default (SPEC §1), on first start only: a sparse `disk0.img` in the data directory
 * attached as file bdev `disk0`, carrying lvstore `lvs0` with 4 MiB clusters.
 */
async function createDefaultDisk(node: StorageNode, dataDir: string, sizeBytes: number): Promise<void> {
  const path = join(dataDir, 'disk0.img');
  await FileDevice.createSparse(path, sizeBytes);
  await node.createAioBdev({ name: 'disk0', filename: path, blockSize: 512, readOnly: false });
  if (node.registry.baseBdev('disk0').claims.writer() === undefined && !node.damaged.has('disk0')) {
    await node.lvstores.create({ bdevName: 'disk0', lvsName: 'lvs0', clusterBytes: clusterSizeBytesDefault, clearMethod: 'unmap' });
  }
}

/**
 * Re-attaches the saved bdevs (their lvstores load as they attach), or creates the default.
 * Loading what exists needs no free space: the saved list is not rewritten while it is replayed
 * (it already names these bdevs), and a list that cannot be saved at the end is logged, not fatal.
 */
async function attachBdevs(table: MethodTable, node: StorageNode, options: ServeOptions, dataDir: string, writer: SavedConfigWriter): Promise<void> {
  const savedText = await readConfigText(join(dataDir, savedConfigName));
  // Held either way: the replay saves nothing; the first start saves once disk0 carries lvs0, so
  // a first start that fails or is killed halfway is simply a first start again next time (it
  // re-uses disk0.img and what is on it).
  writer.hold();
  if (savedText !== undefined) {
    const saved = parseConfig(savedText);
    writer.keep(saved, savedText);
    await replayConfig(table, node, saved, savedConfigName);
  } else if (options.defaultDiskBytes > 0) {
    // --default-disk-size 0: start with no bdev at all (as spdk_tgt does; SPDK's own tests expect it).
    await createDefaultDisk(node, dataDir, options.defaultDiskBytes);
  }
  await writer.release().catch((error: unknown) =>
    log('error', 'the bdev list could not be saved; serving what is attached (a later bdev change saves it again)', {
      path: join(dataDir, savedConfigName),
      error: String(error),
    }),
  );
  if (options.configFile) {
    const calls = await readConfig(resolve(options.configFile));
    if (!calls) throw new Error(`--config ${options.configFile}: no such file`);
    await replayConfig(table, node, calls, options.configFile);
  }
}

/** Binds and releases the port: EADDRINUSE (or EACCES) here, with nothing touched yet. */
function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (error: NodeJS.ErrnoException) => reject(new Error(`cannot listen on ${host}:${port}: ${error.code ?? error.message}`)));
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

/** The node's background options (SPEC §6.6), kept in the data directory across restarts. */
const backgroundOptionsName = 'lvnode-background.json';

async function readBackgroundOptions(path: string): Promise<BackgroundOptions> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return defaultBackgroundOptions();
    throw error;
  }
  try {
    return validateBackgroundOptions({ ...defaultBackgroundOptions(), ...(JSON.parse(text) as Partial<BackgroundOptions>) });
  } catch (error) {
    // A damaged options file must not keep the node from starting: say so, and run on defaults.
    log('error', 'background options file is unreadable; using defaults', { path, error: String(error) });
    return defaultBackgroundOptions();
  }
}

/** The verification policy (issue 21 item 4), kept in the data directory; read only at start. */
const verifyPolicyName = 'lvnode-verify-policy.json';

export async function readVerifyPolicy(path: string): Promise<VerifyPolicy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return defaultVerifyPolicy();
    throw error;
  }
  try {
    return validateVerifyPolicy({ ...defaultVerifyPolicy(), ...(JSON.parse(text) as Partial<VerifyPolicy>) });
  } catch (error) {
    // A damaged file must not keep the node from starting: say so, and run on the default (disabled).
    log('error', 'verify policy file is unreadable; using the default', { path, error: String(error) });
    return defaultVerifyPolicy();
  }
}

/** Returns the function that detaches it (its socket would otherwise keep the process alive). */
async function attachStatelyInspector(node: StorageNode, url: string): Promise<() => void> {
  const { createWebSocketInspector } = await import('@statelyai/inspect');
  // Bounded: events wait for the relay in a queue of at most this many.
  const inspector = createWebSocketInspector({ url, maxDeferredEvents: 1000 });
  node.inspector.addObserver((event) => inspector.inspect.next?.(event));
  log('warn', '@statelyai/inspect attached: it costs throughput; use only while debugging', { url });
  return () => inspector.stop();
}

export async function startNode(options: ServeOptions): Promise<RunningNode> {
  const { host, port } = parseListen(options.listen);
  assertAuthOptions(options, host);
  const nbdListener = await resolveNbdListener({ listen: options.nbdListen, tlsPskFile: options.nbdTlsPskFile, insecureTcp: options.nbdInsecureTcp });
  const nbdAddress = nbdListener?.address;
  const dataDir = resolve(options.dataDir);
  // A busy port fails the start before anything is created (not after the default disk is made).
  if (port !== 0) await assertPortFree(host, port);
  if (nbdAddress && !(nbdAddress.kind === 'tcp' && nbdAddress.port === 0)) await assertNbdAddressFree(nbdAddress);
  // A live SPDK socket (another node, or SPDK) fails the start before anything is created.
  if (options.rpcSocket) await claimSocketPath(resolve(options.rpcSocket));
  // Owner-only when made here: its disk images and files are the node's user's alone.
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // First of all: a second node on this data directory must stop before it touches anything.
  const dataDirLock = await lockDataDir(dataDir);
  try {
    return await startLockedNode(options, dataDir, host, port, nbdListener, dataDirLock);
  } catch (error) {
    await dataDirLock.release();
    throw error;
  }
}

async function startLockedNode(
  options: ServeOptions,
  dataDir: string,
  host: string,
  port: number,
  nbdListener: NbdListenerConfig | undefined,
  dataDirLock: DataDirLock,
): Promise<RunningNode> {
  // Before anything is made: a first start that cannot create its token leaves nothing behind.
  const auth = await resolveAuth(options, dataDir);
  await warnIfDataDirShared(dataDir);
  const writer = new SavedConfigWriter(join(dataDir, savedConfigName));
  const backgroundPath = join(dataDir, backgroundOptionsName);
  const verifyPolicyPath = join(dataDir, verifyPolicyName);
  const threads = configureBackgroundThreads();
  log('info', 'checksum CRC path', { ...crcInfo(), ...threads });
  log('info', 'file I/O path', { ...fileIoInfo() });
  const node = new StorageNode(options.runtime ?? systemRuntime, {
    onBaseBdevsChanged: (config) => writer.write(config),
    backgroundOptions: await readBackgroundOptions(backgroundPath),
    onBackgroundOptionsChanged: (changed) => writeFileAtomically(backgroundPath, `${JSON.stringify(changed, null, 2)}\n`),
    verifyPolicy: {
      policy: await readVerifyPolicy(verifyPolicyPath),
      onPolicyChanged: (changed) => writeFileAtomically(verifyPolicyPath, `${JSON.stringify(changed, null, 2)}\n`),
    },
    nvmfListeners: options.nvmfAllowRemote === true ? 'remote' : options.nvmfInsecureTcp === true ? 'loopback' : 'none',
  });
  // NVMe/TCP ports open only when nvmf_subsystem_add_listener asks (SPDK's model: listeners come from RPC).
  const nvmfTransport = new NvmfTcpTransport(node.nvmf, () => node.scheduler.noteForeground());
  const detachStately = options.statelyInspectUrl ? await attachStatelyInspector(node, options.statelyInspectUrl) : () => {};
  const rpcStats = new RpcStats();
  let server: RpcServer | undefined;
  const table = createMethodTable(node, { rpc: rpcStats, connectionCount: () => server?.connectionCount() ?? 0 });
  // What a failed start closes, newest first: listeners, then the node (its file locks too), so
  // a later start in this process can take them.
  const opened: Array<() => Promise<void> | void> = [() => node.shutdown(), () => nvmfTransport.shutdown(), () => rpcStats.close(), detachStately];
  const startStep = async <T>(step: () => Promise<T>): Promise<T> => {
    try {
      return await step();
    } catch (error) {
      for (const close of opened.splice(0).reverse()) await close();
      throw error;
    }
  };
  // The dashboard bundles while the bdevs attach; its first request waits for it.
  const dashboard = new StaticFiles(async () => {
    const files = await buildDashboard();
    // Tells the page whether to ask for a token; the token itself is never served.
    files.set('/config.json', { body: Buffer.from(JSON.stringify({ token_required: auth.kind === 'token' })), contentType: 'application/json; charset=utf-8' });
    return files;
  });
  void dashboard.loaded().then((failure) => {
    if (failure) log('warn', 'dashboard not available', { error: failure.message });
  });
  await startStep(() => attachBdevs(table, node, options, dataDir, writer));
  // Both transports run the same table; what clients ask for goes first: checksum steps back off
  // while requests keep coming.
  const dispatcherHooks = {
    onCall: rpcStats.record,
    onStart: (method: { priority: string }) => {
      if (method.priority !== 'background') node.scheduler.noteForeground();
    },
  };
  const listening = await startStep(() =>
    startRpcServer({
      host,
      port,
      dispatcher: createDispatcher(table, { allowBatch: true, ...dispatcherHooks }),
      log: ({ level, msg, ...fields }) => log(level, msg, fields),
      httpHandler: dashboard.handle,
      ...(auth.kind === 'token' ? { token: auth.token } : { insecureNoAuth: true }),
      ...(options.limits ? { limits: options.limits } : {}),
    }),
  );
  opened.push(() => listening.close());
  server = listening;
  const url = `ws://${host.includes(':') ? `[${host}]` : host}:${listening.address.port}/`;
  const nbd = nbdListener
    ? await startStep(() => NbdServer.listen({ ...nbdListener, exports: node.nbd, noteForeground: () => node.scheduler.noteForeground() }))
    : undefined;
  if (nbd) opened.push(() => nbd.close());
  // SPDK's clients (rpc.py, go-spdk-helper) on their own socket: the same table and handlers,
  // SPDK's framing and error codes.
  const spdkSocket = options.rpcSocket
    ? await startStep(() =>
        startSpdkSocketServer({
          path: resolve(options.rpcSocket!),
          dispatcher: createDispatcher(table, { allowBatch: false, flavor: 'spdk', ...dispatcherHooks }),
          log: ({ level, msg, ...fields }) => log(level, msg, fields),
        }),
      )
    : undefined;
  const dashboardUrl = `http://${host.includes(':') ? `[${host}]` : host}:${listening.address.port}/`;
  // The token itself is never logged: `lvnode serve` prints the dashboard's link with it once.
  log('info', 'lvnode listening', { url, dashboard: dashboardUrl, auth: authText(auth), dataDir, ...(nbd ? { nbd: nbd.address } : {}), ...(spdkSocket ? { rpcSocket: spdkSocket.path } : {}) });
  if (auth.kind === 'none') log('warn', insecureNoAuthWarning, { url });
  return {
    node,
    server: listening,
    url,
    dashboardUrl,
    auth,
    nbd,
    nbdAddress: nbd?.address,
    nvmf: nvmfTransport,
    spdkSocket,
    close: async () => {
      // Running registrations are answered "preempted by shutdown" while their connections are
      // still open; NBD clients finish their in-flight requests and are disconnected; then the
      // RPC server stops, then the node closes its stores and devices.
      await node.preemptAll('shutdown');
      await nbd?.close();
      await node.nvmf.stopAll('shutdown');
      await nvmfTransport.shutdown();
      await spdkSocket?.close();
      await listening.close();
      const failures = await node.shutdown();
      detachStately();
      rpcStats.close();
      await dataDirLock.release();
      // Everything else is closed; what could not be flushed is the caller's to hear (exit code).
      if (failures.length > 0) throw new ShutdownIncompleteError(failures);
    },
  };
}

/** Refuses contradicting or unsafe auth options before anything is created. Never names the token. */
function assertAuthOptions(options: ServeOptions, host: string): void {
  if (options.token !== undefined && options.insecureNoAuth) {
    throw new Error('--insecure-no-auth and a token (--token or LVNODE_TOKEN) contradict each other; give one');
  }
  if (options.token !== undefined) {
    const problem = tokenProblem(options.token);
    if (problem !== undefined) throw new Error(`--token (or LVNODE_TOKEN) is not usable: ${problem}`);
  }
  if (options.insecureNoAuth && !isLoopbackHost(host)) {
    throw new Error(`--insecure-no-auth is refused on ${host}, which is not a loopback address: anyone who reaches it could drive the node; use a token`);
  }
}

/** The given token, or none when asked for by name, or the data directory's (made on first start). */
async function resolveAuth(options: ServeOptions, dataDir: string): Promise<NodeAuth> {
  if (options.insecureNoAuth) return { kind: 'none' };
  if (options.token !== undefined) return { kind: 'token', token: options.token, source: 'option' };
  const { token, path, created } = await loadOrCreateNodeToken(dataDir);
  if (created) log('info', 'created the access token file (mode 0600); clients that can read it find it there', { path });
  return { kind: 'token', token, source: 'file', path, created };
}

function authText(auth: NodeAuth): string {
  if (auth.kind === 'none') return 'none (--insecure-no-auth)';
  return auth.source === 'file' ? `token in ${auth.path}` : 'token from --token or LVNODE_TOKEN';
}

/**
 * What `lvnode serve` prints once it listens: the dashboard's link, carrying the node's own token
 * (as Jupyter does; the page takes it out of the address bar and keeps it for the tab). This is
 * the only place the token is ever printed; a token given with --token is not repeated.
 */
export function accessLines(running: RunningNode): string[] {
  const { auth, dashboardUrl } = running;
  if (auth.kind === 'none') return [`WARNING: ${insecureNoAuthWarning}\n`, `lvnode dashboard at ${dashboardUrl}\n`];
  if (auth.source === 'option') return [`lvnode dashboard at ${dashboardUrl} (it asks for the token given with --token or LVNODE_TOKEN)\n`];
  return [`lvnode dashboard at ${dashboardUrl}?token=${encodeURIComponent(auth.token)} (token file: ${auth.path})\n`];
}

export const insecureNoAuthWarning =
  'running WITHOUT authentication (--insecure-no-auth): every local user and every local process, web pages aside, can drive this node with its user\'s rights';

/**
 * Other users that can enter the data directory can read (and, when writable, change) its disk
 * images and files without asking the node. Said at every start; not fatal, and nothing is changed.
 */
async function warnIfDataDirShared(dataDir: string): Promise<void> {
  const info = await stat(dataDir);
  if ((info.mode & 0o077) === 0) return;
  log('warn', 'the data directory is open to other users: they can read its disk images directly; chmod 700 it', {
    dataDir,
    mode: (info.mode & 0o777).toString(8).padStart(3, '0'),
  });
}

/** Shutdown closed everything it could, but some store or device could not be flushed or closed. */
export class ShutdownIncompleteError extends Error {
  constructor(readonly failures: readonly ShutdownFailure[]) {
    const what = failures.map((failure) => `bdev ${failure.bdev}${failure.lvstore ? ` (lvstore ${failure.lvstore})` : ''}: ${failure.step} failed: ${failure.error}`);
    super(`shutdown could not flush or close ${failures.length} device(s); data written since their last flush may be lost: ${what.join('; ')}`);
    this.name = 'ShutdownIncompleteError';
  }
}

export const serveDefaults = {
  dataDir: dataDirDefault,
  listen: listenDefault,
  defaultDiskBytes: diskSizeBytesDefault,
};
