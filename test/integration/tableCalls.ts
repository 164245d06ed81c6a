// Calling the method table directly (no transport), as the node-level integration tests do.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StorageNode } from '../../src/actors/node.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';
import { createMethodTable } from '../../src/transport/methods.ts';
import type { MethodTable } from '../../src/transport/methodTable.ts';

/** A connection for handlers that want one: no notifications, nothing to clean up. */
export const noConnection = { id: 0, notify: () => false, onClose: () => {} };

/** Runs `method` with `params` validated by its own schema, as the dispatcher would. */
export async function call<T = unknown>(table: MethodTable, method: string, params: Record<string, unknown> = {}): Promise<T> {
  const entry = table[method]!;
  return (await entry.handler(entry.params.parse(params), noConnection)) as T;
}

/** The errno of the StorageError `work` rejects with, or 'no error'; anything else is rethrown. */
export async function errnoOf(work: Promise<unknown>): Promise<string> {
  try {
    await work;
  } catch (error) {
    if (error instanceof StorageError) return error.errno;
    throw error;
  }
  return 'no error';
}

/**
 * Nodes made in a test, and a temporary directory for their files: `cleanup` (in afterEach) shuts
 * every node down and removes the directory.
 */
export function nodeHarness(seed: number): {
  tempDir(prefix: string): Promise<string>;
  newNode(): { node: StorageNode; table: MethodTable };
  cleanup(): Promise<void>;
} {
  const nodes: StorageNode[] = [];
  let dir: string | undefined;
  return {
    tempDir: async (prefix) => (dir = await mkdtemp(join(tmpdir(), prefix))),
    newNode: () => {
      const node = new StorageNode(seededRuntime(seed + nodes.length));
      nodes.push(node);
      return { node, table: createMethodTable(node) };
    },
    cleanup: async () => {
      for (const node of nodes.splice(0)) await node.shutdown();
      if (dir) await rm(dir, { recursive: true, force: true });
      dir = undefined;
    },
  };
}
