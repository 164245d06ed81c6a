// A small JSON-RPC client over WebSocket (the `ws` client), with exact 64-bit integers both ways.
import WebSocket from 'ws';
import { RpcCallError, RpcCalls } from '../transport/rpcCalls.ts';

export { RpcCallError };

export class RpcClient {
  private readonly calls: RpcCalls;

  private constructor(private readonly socket: WebSocket) {
    this.calls = new RpcCalls((text, failed) => socket.send(text, (error) => error && failed(error)));
    socket.on('message', (data, isBinary) => {
      if (!isBinary) this.calls.receive(data.toString());
    });
    socket.on('close', () => this.calls.closed(new Error('connection closed')));
  }

  static connect(url: string, options: { token?: string | undefined } = {}): Promise<RpcClient> {
    const socket = new WebSocket(url, {
      perMessageDeflate: false,
      ...(options.token ? { headers: { Authorization: `Bearer ${options.token}` } } : {}),
    });
    return new Promise((resolve, reject) => {
      socket.once('open', () => resolve(new RpcClient(socket)));
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) =>
        reject(new Error(`server refused the connection: HTTP ${response.statusCode}`)),
      );
    });
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
