// The node's bdev list on disk (SPDK save_config form) and replaying such configs at start.
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { SpdkConfig, StorageNode } from '../actors/node.ts';
import { log } from '../log.ts';
import type { MethodTable } from '../transport/methodTable.ts';

/** The node's own record of its bdevs, in the data directory, in SPDK's save_config form. */
export const savedConfigName = 'lvnode-config.json';
const configMethods: ReadonlySet<string> = new Set(['bdev_aio_create', 'bdev_malloc_create']);
// Config calls run through the method table like RPCs, but on behalf of no connection.
const noConnection = { id: 0, notify: () => false, onClose: () => {} };

/**
 * Writes the file so that a crash leaves the old or the new version: temp file, fsync, rename,
 * fsync dir. A write that fails (ENOSPC) leaves the old file as it was and removes the temp file,
 * which would otherwise hold on to the last free blocks.
 */
export async function writeFileAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp`;
  try {
    const file = await open(temporary, 'w');
    try {
      await file.writeFile(text);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw withPath(error, path);
  }
  const directory = await open(dirname(path), 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

/** The same error (its `code` kept, ENOSPC stays ENOSPC), saying which file it was about. */
function withPath(error: unknown, path: string): unknown {
  if (!(error instanceof Error)) return error;
  const { code, errno, syscall } = error as NodeJS.ErrnoException;
  return Object.assign(new Error(`cannot write ${path}: ${error.message}`, { cause: error }), { code, errno, syscall });
}

export async function readConfig(path: string): Promise<ConfigCall[] | undefined> {
  const text = await readConfigText(path);
  return text === undefined ? undefined : parseConfig(text);
}

/** The file's text, or undefined when there is none. */
export async function readConfigText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

export function parseConfig(text: string): ConfigCall[] {
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
 * leaves the list once a list naming a bdev of that name is saved; from then on the node's own
 * list rules.
 */
export class SavedConfigWriter {
  private readonly unattached = new Map<string, ConfigCall>();
  private queue: Promise<void> = Promise.resolve();
  private held: { config: SpdkConfig | undefined } | undefined;
  /** The file's text as read at start: a list that says the same is not written again. */
  private savedText: string | undefined;

  constructor(private readonly path: string) {}

  /** Until `release`, writes only remember the newest list (nothing is saved if release never comes). */
  hold(): void {
    this.held = { config: undefined };
  }

  /** Saves the newest list remembered since `hold`, unless the file already says exactly that. */
  release(): Promise<void> {
    const config = this.held?.config;
    this.held = undefined;
    if (!config || this.textOf(config).text === this.savedText) return Promise.resolve();
    return this.write(config);
  }

  /** The saved calls, as read at start (`text` is the file's text). */
  keep(calls: readonly ConfigCall[], text?: string): void {
    this.savedText = text;
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
    const { text, attachedNames } = this.textOf(config);
    const written = this.queue.then(async () => {
      await writeFileAtomically(this.path, text);
      // Only once saved: a list that failed to save must not make the file forget a bdev.
      for (const name of attachedNames) this.unattached.delete(name);
      this.savedText = text;
    });
    this.queue = written.catch(() => undefined);
    return written;
  }

  private textOf(config: SpdkConfig): { text: string; attachedNames: Set<string> } {
    const attached = config.subsystems.flatMap((subsystem) => subsystem.config);
    const attachedNames = new Set(attached.map((call) => String(call.params.name)));
    const kept = [...this.unattached].filter(([name]) => !attachedNames.has(name)).map(([, call]) => call);
    const merged = { subsystems: [{ subsystem: 'bdev', config: [...attached, ...kept] }] };
    return { text: `${JSON.stringify(merged, null, 2)}\n`, attachedNames };
  }
}
