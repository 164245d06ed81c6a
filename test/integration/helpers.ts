// Shared set-up for integration tests: a real node on a loopback port in a temporary data directory.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type RunningNode, startNode } from '../../src/cli/serve.ts';
import { RpcCallError, RpcClient } from '../../src/cli/rpcClient.ts';

export interface TestNode {
  running: RunningNode;
  dataDir: string;
  connect(): Promise<RpcClient>;
  close(): Promise<void>;
}

/**
 * `nbdListen`: serve NBD too (`127.0.0.1:0` picks a free port; see `running.nbdAddress`). TCP needs
 * `nbdTlsPskFile` or, for tests of the protocol rather than of access, `nbdInsecureTcp: true`.
 * `rpcSocket`: serve SPDK's Unix-socket JSON-RPC too, at `<dataDir>/spdk.sock` (`running.spdkSocket.path`).
 * Auth is the default's (the token file the node makes in its data directory) unless `token` or
 * `insecureNoAuth` say otherwise; `connect()` presents what the node wants (`nodeToken(running)`).
 */
export async function startTestNode(
  options: {
    diskBytes?: number;
    token?: string;
    nbdListen?: string;
    nbdTlsPskFile?: string;
    nbdInsecureTcp?: boolean;
    nvmfInsecureTcp?: boolean;
    rpcSocket?: boolean;
    insecureNoAuth?: boolean;
  } = {},
): Promise<TestNode> {
  const dataDir = await mkdtemp(join(tmpdir(), 'lvnode-test-'));
  const running = await startNode({
    dataDir,
    listen: '127.0.0.1:0',
    defaultDiskBytes: options.diskBytes ?? 2 * 1024 * 1024 * 1024,
    token: options.token,
    insecureNoAuth: options.insecureNoAuth,
    nbdListen: options.nbdListen,
    nbdTlsPskFile: options.nbdTlsPskFile,
    nbdInsecureTcp: options.nbdInsecureTcp,
    nvmfInsecureTcp: options.nvmfInsecureTcp,
    rpcSocket: options.rpcSocket ? join(dataDir, 'spdk.sock') : undefined,
  });
  const clients: RpcClient[] = [];
  return {
    running,
    dataDir,
    connect: async () => {
      const client = await RpcClient.connect(running.url, { token: nodeToken(running) });
      clients.push(client);
      return client;
    },
    close: async () => {
      await Promise.all(clients.map((client) => client.close()));
      await running.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The token a client must present to `running` (undefined when it runs with --insecure-no-auth). */
export function nodeToken(running: RunningNode): string | undefined {
  return running.auth.kind === 'token' ? running.auth.token : undefined;
}

/** Headers for a raw `ws` client of `running` (tests that send malformed frames). */
export function authHeaders(running: RunningNode): { headers: Record<string, string> } {
  const token = nodeToken(running);
  return { headers: token === undefined ? {} : { Authorization: `Bearer ${token}` } };
}

/** Resolves with the RPC error a call fails with; fails the test if the call succeeds. */
export async function rpcError(call: Promise<unknown>): Promise<RpcCallError> {
  try {
    const result = await call;
    throw new Error(`expected an RPC error, got result ${JSON.stringify(result, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`);
  } catch (error) {
    if (error instanceof RpcCallError) return error;
    throw error;
  }
}

export interface ChecksumStatusView {
  state: string;
  clusters_done: number;
  clusters_total: number;
  bytes_done: number;
  reason?: string;
  resumable: boolean;
}

/** Polls the checksum status until `until` holds (each poll is a real RPC round trip). */
export async function pollStatus(
  client: RpcClient,
  name: string,
  until: (status: ChecksumStatusView) => boolean,
  timeoutMs = 20_000,
): Promise<ChecksumStatusView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await client.call<ChecksumStatusView>('bdev_lvol_get_checksum_status', { name });
    if (until(status)) return status;
    if (Date.now() > deadline) throw new Error(`status never matched; last ${JSON.stringify(status)}`);
  }
}
