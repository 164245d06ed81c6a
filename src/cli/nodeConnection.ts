// How `lvnode rpc`, `status` and `demo` reach a node: its URL and its token, found by themselves
// when they can read the node's data directory (SPEC §3.1), so the README's commands work as written.
import { dataDirDefault, listenDefault } from '../constants.ts';
import { readNodeToken } from './nodeToken.ts';
import { ConnectionRefusedError, RpcClient } from './rpcClient.ts';

/** The options every client command takes (parseArgs form). */
export const nodeConnectionOptions = {
  url: { type: 'string' },
  token: { type: 'string' },
  'data-dir': { type: 'string' },
} as const;

export interface NodeConnectionFlags {
  url?: string | undefined;
  token?: string | undefined;
  'data-dir'?: string | undefined;
}

export function nodeUrl(flags: NodeConnectionFlags): string {
  return flags.url ?? process.env.LVNODE_URL ?? `ws://${listenDefault}/`;
}

/**
 * The token is --token, else LVNODE_TOKEN, else the one in the data directory (--data-dir,
 * LVNODE_DATA_DIR, ./data) when this user can read it; a found token goes only to a node that
 * proves it knows it. A 401 says which of these was missing, never the token.
 */
export async function connectToNode(flags: NodeConnectionFlags): Promise<RpcClient> {
  const url = nodeUrl(flags);
  const given = flags.token ?? (process.env.LVNODE_TOKEN || undefined);
  if (given !== undefined) return RpcClient.connect(url, { token: given });
  const found = await readNodeToken(flags['data-dir'] ?? process.env.LVNODE_DATA_DIR ?? dataDirDefault);
  try {
    return await RpcClient.connect(url, found.token === undefined ? {} : { token: found.token, tokenNeedsProof: true });
  } catch (error) {
    if (!(error instanceof ConnectionRefusedError) || error.status !== 401 || found.token !== undefined) throw error;
    throw new Error(
      `${error.message}: the node wants its token, and none was given (--token, LVNODE_TOKEN) or found ` +
        `(${found.path}: ${found.problem}; --data-dir or LVNODE_DATA_DIR name the node's data directory)`,
    );
  }
}
