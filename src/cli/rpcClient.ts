// A small JSON-RPC client over WebSocket (the `ws` client), with exact 64-bit integers both ways.
import { randomBytes } from 'node:crypto';
import { type NetConnectOpts, connect as netConnect } from 'node:net';
import WebSocket from 'ws';
import { RpcCallError, RpcCalls } from '../transport/rpcCalls.ts';
import { secretsEqual, tokenChallengeHeader, tokenProof, tokenProofHeader } from '../transport/wsServer.ts';

export { RpcCallError };

/** The node answered the upgrade with an HTTP status instead of a socket (401: no or wrong token). */
export class ConnectionRefusedError extends Error {
  constructor(readonly status: number) {
    super(`server refused the connection: HTTP ${status}`);
    this.name = 'ConnectionRefusedError';
  }
}

/** A token that was found, not given, is sent only to a node that proved it knows it; this one did not. */
export class TokenNotProvedError extends Error {
  constructor(url: string) {
    super(
      `the node at ${url} did not prove that it knows the token found in the data directory, so the token was not sent ` +
        '(a node started with --token wants --token or LVNODE_TOKEN here; or another process holds that port)',
    );
    this.name = 'TokenNotProvedError';
  }
}

export interface ConnectOptions {
  token?: string | undefined;
  /**
   * The token was found (in a data directory), not given: before sending it, ask the node for a
   * proof that it knows it, bound to a fresh challenge and to the address reached (see
   * wsServer's tokenProof), then send it over a connection to that same address. A process that
   * squats the port while the node is down, or that the URL names by mistake, never gets it.
   */
  tokenNeedsProof?: boolean | undefined;
}

type Opened = { socket: WebSocket } | { status: number; proof: string | undefined; address: string | undefined; port: number | undefined };

function pinnedTo(address: string): typeof netConnect {
  return ((options: NetConnectOpts) => netConnect({ ...options, host: address } as NetConnectOpts)) as typeof netConnect;
}

/** Opens the socket, or returns the HTTP status (and token proof) it was refused with. */
function openSocket(url: string, headers: Record<string, string>, pinnedAddress?: string): Promise<Opened> {
  const socket = new WebSocket(url, {
    perMessageDeflate: false,
    headers,
    // The second connection of a proof goes to the address that proved itself, not to whatever
    // the name resolves to now.
    ...(pinnedAddress !== undefined && url.startsWith('ws:') ? { createConnection: pinnedTo(pinnedAddress) } : {}),
  });
  return new Promise((resolve, reject) => {
    socket.once('open', () => resolve({ socket }));
    socket.once('error', reject);
    socket.once('unexpected-response', (request, response) => {
      const proof = response.headers[tokenProofHeader];
      resolve({
        status: response.statusCode ?? 0,
        proof: typeof proof === 'string' ? proof : undefined,
        address: request.socket?.remoteAddress,
        port: request.socket?.remotePort,
      });
      request.destroy();
    });
  });
}

export class RpcClient {
  private readonly calls: RpcCalls;

  private constructor(private readonly socket: WebSocket) {
    this.calls = new RpcCalls((text, failed) => socket.send(text, (error) => error && failed(error)));
    socket.on('message', (data, isBinary) => {
      if (!isBinary) this.calls.receive(data.toString());
    });
    socket.on('close', () => this.calls.closed(new Error('connection closed')));
  }

  /** Rejects with ConnectionRefusedError (HTTP status), TokenNotProvedError, or the socket's error. */
  static async connect(url: string, options: ConnectOptions = {}): Promise<RpcClient> {
    const { token } = options;
    if (token && options.tokenNeedsProof) return RpcClient.connectAfterProof(url, token);
    const opened = await openSocket(url, token ? { Authorization: `Bearer ${token}` } : {});
    if ('socket' in opened) return new RpcClient(opened.socket);
    throw new ConnectionRefusedError(opened.status);
  }

  private static async connectAfterProof(url: string, token: string): Promise<RpcClient> {
    const challenge = randomBytes(32).toString('base64url');
    const probe = await openSocket(url, { [tokenChallengeHeader]: challenge });
    // A node that wants no token (--insecure-no-auth) lets the probe in: it never needed the token.
    if ('socket' in probe) return new RpcClient(probe.socket);
    if (probe.status !== 401) throw new ConnectionRefusedError(probe.status);
    const { proof, address, port } = probe;
    if (proof === undefined || address === undefined || port === undefined) throw new TokenNotProvedError(url);
    if (!secretsEqual(proof, tokenProof(token, challenge, address, port))) throw new TokenNotProvedError(url);
    const opened = await openSocket(url, { Authorization: `Bearer ${token}` }, address);
    if ('socket' in opened) return new RpcClient(opened.socket);
    throw new ConnectionRefusedError(opened.status);
  }

  /** Sends one request; resolves with its result or rejects with an RpcCallError. */
  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    return this.calls.call<T>(method, params);
  }

  /** Sends raw text (for tests of malformed input). */
  sendRaw(text: string): void {
    this.socket.send(text);
  }

  /** Calls `handler` for every server notification named `method`; returns the remover. */
  on(method: string, handler: (params: unknown) => void): () => void {
    return this.calls.on(method, handler);
  }

  get raw(): WebSocket {
    return this.socket;
  }

  close(): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.close();
    });
  }
}
