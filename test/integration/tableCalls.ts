// Calling the method table directly (no transport), as the node-level integration tests do.
import { StorageError } from '../../src/errors.ts';
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
