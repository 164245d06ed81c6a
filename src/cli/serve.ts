// `lvnode serve`: composes devices, the node, the method table and the WebSocket server.
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { clusterSizeBytesDefault, diskSizeBytesDefault, listenDefault } from '../constants.ts';
import { FileDevice } from '../device/fileDevice.ts';
import { type SpdkConfig, StorageNode } from '../actors/node.ts';
import { log } from '../log.ts';
import { type Runtime, systemRuntime } from '../runtime.ts';
import { createDispatcher } from '../transport/jsonRpc.ts';
import type { MethodTable } from '../transport/methodTable.ts';
import { createMethodTable } from '../transport/methods.ts';
import { type RpcServer, type RpcServerLimits, startRpcServer } from '../transport/wsServer.ts';

export interface ServeOptions {
  dataDir: string;
  listen: string;
  /** An SPDK-style JSON config whose bdev calls are replayed at start (after the saved ones). */
  configFile?: string | undefined;
  token?: string | undefined;
  defaultDiskBytes: number;
  /** Attach @statelyai/inspect, sending to this relay URL. */
  statelyInspectUrl?: string | undefined;
  limits?: Partial<RpcServerLimits>;
  runtime?: Runtime;
}

export interface RunningNode {
  readonly node: StorageNode;
  readonly server: RpcServer;
  readonly url: string;
  close(): Promise<void>;
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(listen);
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port > 65_535) throw new Error(`--listen wants HOST:PORT, got ${listen}`);
  return { host: match[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

/** The node's own record of its bdevs, in the data directory, in SPDK's save_config form. */
export const savedConfigName = 'lvnode-config.json';
const configMethods: ReadonlySet<string> = new Set(['bdev_aio_create', 'bdev_malloc_create']);

/** Writes the file so that a crash leaves the old or the new version: temp file, fsync, rename, fsync dir. */
async function writeFileAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w');
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  const directory = await open(dirname(path), 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

async function readConfig(path: string): Promise<Array<{ method: string; params: unknown }> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const parsed = JSON.parse(text) as { subsystems?: Array<{ subsystem?: string; config?: Array<{ method: string; params: unknown }> }> };
  return (parsed.subsystems ?? []).filter((subsystem) => subsystem.subsystem === 'bdev').flatMap((subsystem) => subsystem.config ?? []);
}

type ConfigCall = { method: string; params: unknown };

function bdevNameOf(call: ConfigCall): string | undefined {
  const name = (call.params as { name?: unknown } | undefined)?.name;
  return typeof name === 'string' ? name : undefined;
}

/**
 * Replays bdev creation calls through the method table (so each is validated like an RPC). A call
 * that fails is logged and skipped: the node still starts and serves everything else.
 */
async function replayConfig(table: MethodTable, node: StorageNode, calls: ConfigCall[], source: string): Promise<void> {
  for (const call of calls) {
    const name = bdevNameOf(call);
    if (name !== undefined && node.registry.bdevs.has(name)) continue;
    try {
      if (!configMethods.has(call.method)) throw new Error(`method ${call.method} is not allowed in a config`);
      const method = table[call.method]!;
      await method.handler(method.params.parse(call.params ?? {}), noConnection);
    } catch (error) {
      log('error', 'config call failed; continuing without it', { source, method: call.method, bdev: name, error: String(error) });
    }
  }
}

/**
 * Writes the node's bdev list to the data directory, one write at a time (concurrent bdev RPCs
 * would otherwise share the temporary file and fail each other's rename), in call order, so the
 * file ends with the newest list.
 *
 * The saved bdevs that are not attached (yet, or at all in this run, e.g. a file that is missing
 * for now) stay in the saved config: a start that cannot attach one must not forget it. An entry
 * leaves the list once a bdev of that name is attached; from then on the node's own list rules.
 */
class SavedConfigWriter {
  private readonly unattached = new Map<string, ConfigCall>();
  private queue: Promise<void> = Promise.resolve();
  private held: { config: SpdkConfig | undefined } | undefined;

  constructor(private readonly path: string) {}

  /** Until `release`, writes only remember the newest list (nothing is saved if release never comes). */
  hold(): void {
    this.held = { config: undefined };
  }

  release(): Promise<void> {
    const config = this.held?.config;
    this.held = undefined;
    return config ? this.write(config) : Promise.resolve();
  }

  keep(calls: readonly ConfigCall[]): void {
    for (const call of calls) {
      const name = bdevNameOf(call);
      if (name !== undefined && configMethods.has(call.method)) this.unattached.set(name, call);
    }
  }

  write(config: SpdkConfig): Promise<void> {
    if (this.held) {
      this.held.config = config;
      return Promise.resolve();
    }
    const attached = config.subsystems.flatMap((subsystem) => subsystem.config);
    for (const call of attached) this.unattached.delete(String(call.params.name));
    const merged = { subsystems: [{ subsystem: 'bdev', config: [...attached, ...this.unattached.values()] }] };
    const text = `${JSON.stringify(merged, null, 2)}\n`;
    const written = this.queue.then(() => writeFileAtomically(this.path, text));
    this.queue = written.catch(() => undefined);
    return written;
  }
}

const noConnection = { id: 0, notify: () => false, onClose: () => {} };

/**
 * The embedded default (SPEC §1), on first start only: a sparse `disk0.img` in the data directory
 * attached as file bdev `disk0`, carrying lvstore `lvs0` with 4 MiB clusters.
 */
async function createDefaultDisk(node: StorageNode, dataDir: string, sizeBytes: number): Promise<void> {
  const path = join(dataDir, 'disk0.img');
  await FileDevice.createSparse(path, sizeBytes);
  await node.createAioBdev({ name: 'disk0', filename: path, blockSize: 512, readOnly: false });
  if (!node.registry.bdev('disk0').claimedBy && !node.damaged.has('disk0')) {
    await node.createLvstore({ bdevName: 'disk0', lvsName: 'lvs0', clusterBytes: clusterSizeBytesDefault, clearMethod: 'unmap' });
  }
}

/** Re-attaches the saved bdevs (their lvstores load as they attach), or creates the default. */
async function attachBdevs(table: MethodTable, node: StorageNode, options: ServeOptions, dataDir: string, writer: SavedConfigWriter): Promise<void> {
  const saved = await readConfig(join(dataDir, savedConfigName));
  if (saved) {
    writer.keep(saved);
    await replayConfig(table, node, saved, savedConfigName);
  } else {
    // The bdev list is saved only once disk0 carries lvs0: a first start that fails or is killed
    // halfway is simply a first start again next time (it re-uses disk0.img and what is on it).
    writer.hold();
    await createDefaultDisk(node, dataDir, options.defaultDiskBytes);
    await writer.release();
  }
  if (options.configFile) {
    const calls = await readConfig(resolve(options.configFile));
    if (!calls) throw new Error(`--config ${options.configFile}: no such file`);
    await replayConfig(table, node, calls, options.configFile);
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
  const dataDir = resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true });
  const writer = new SavedConfigWriter(join(dataDir, savedConfigName));
  const node = new StorageNode(options.runtime ?? systemRuntime, {
    onBaseBdevsChanged: (config) => writer.write(config),
  });
  const detachStately = options.statelyInspectUrl ? await attachStatelyInspector(node, options.statelyInspectUrl) : () => {};
  const table = createMethodTable(node);
  await attachBdevs(table, node, options, dataDir, writer);
  const dispatcher = createDispatcher(table, { allowBatch: true });
  let server: RpcServer;
  try {
    server = await startRpcServer({
      host,
      port,
      dispatcher,
      log: ({ level, msg, ...fields }) => log(level, msg, fields),
      ...(options.token ? { token: options.token } : {}),
      ...(options.limits ? { limits: options.limits } : {}),
    });
  } catch (error) {
    detachStately();
    await node.shutdown();
    throw error;
  }
  const url = `ws://${host.includes(':') ? `[${host}]` : host}:${server.address.port}/`;
  log('info', 'lvnode listening', { url, dataDir });
  return {
    node,
    server,
    url,
    close: async () => {
      // Running registrations are answered "preempted by shutdown" while their connections are
      // still open; then the server stops, then the node closes its stores and devices.
      await node.preemptAll('shutdown');
      await server.close();
      await node.shutdown();
      detachStately();
    },
  };
}

export const serveDefaults = {
  dataDir: 'data',
  listen: listenDefault,
  defaultDiskBytes: diskSizeBytesDefault,
};
