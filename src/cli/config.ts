// The node's bdev list on disk (SPDK save_config form) and replaying such configs at start.
import { open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SpdkConfig, StorageNode } from '../actors/node.ts';
import { log } from '../log.ts';
import type { MethodTable } from '../transport/methodTable.ts';

/** The node's own record of its bdevs, in the data directory, in SPDK's save_config form. */
export const savedConfigName = 'lvnode-config.json';
const configMethods: ReadonlySet<string> = new Set(['bdev_aio_create', 'bdev_malloc_create']);
// Config calls run through the method table like RPCs, but on behalf of no connection.
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

/** Writes the file so that a crash leaves the old or the new version: temp file, fsync, rename, fsync dir. */
export async function writeFileAtomically(path: string, text: string): Promise<void> {
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

export async function readConfig(path: string): Promise<ConfigCall[] | undefined> {
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

export type ConfigCall = { method: string; params: unknown };

function bdevNameOf(call: ConfigCall): string | undefined {
  const name = (call.params as { name?: unknown } | undefined)?.name;
  return typeof name === 'string' ? name : undefined;
}

/**
 * Replays bdev creation calls through the method table (so each is validated like an RPC). A call
 * that fails is logged and skipped: the node still starts and serves everything else.
 */
export async function replayConfig(table: MethodTable, node: StorageNode, calls: ConfigCall[], source: string): Promise<void> {
  for (const call of calls) {
    const name = bdevNameOf(call);
    if (name !== undefined && node.registry.bdevs.has(name)) {
      // Said, not silently dropped: the config asked for a bdev whose name is already attached.
      log('warn', 'config call skipped: a bdev of that name is already attached', { source, method: call.method, bdev: name });
      continue;
    }
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
export class SavedConfigWriter {
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


