// A small JSON-RPC client over WebSocket (the `ws` client), with exact 64-bit integers both ways.
import WebSocket from 'ws';
import { parseJson, stringifyJson } from '../transport/json64.ts';

export class RpcCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data: unknown,
  ) {
    super(message);
    this.name = 'RpcCallError';
  }
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };
type NotificationHandler = (params: unknown) => void;

export class RpcClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly handlers = new Map<string, Set<NotificationHandler>>();

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data, isBinary) => {
      if (!isBinary) this.onMessage(data.toString());
    });
    socket.on('close', () => {
      for (const pending of this.pending.values()) pending.reject(new Error('connection closed'));
      this.pending.clear();
    });
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

  private onMessage(text: string): void {
    const message = parseJson(text) as { id?: number; result?: unknown; error?: { code: number; message: string; data?: unknown }; method?: string; params?: unknown };
    if (message.method !== undefined && message.id === undefined) {
      for (const handler of this.handlers.get(message.method) ?? []) handler(message.params);
      return;
    }
    const pending = this.pending.get(Number(message.id));
    if (!pending) return;
    this.pending.delete(Number(message.id));
    if (message.error) pending.reject(new RpcCallError(message.error.code, message.error.message, message.error.data));
    else pending.resolve(message.result);
  }

  /** Sends one request; resolves with its result or rejects with an RpcCallError. */
  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.socket.send(stringifyJson({ jsonrpc: '2.0', id, method, params }), (error) => {
        if (error) {
          this.pending.delete(id);
          reject(error);
        }
      });
    });
  }

  /** Sends raw text (for tests of malformed input). */
  sendRaw(text: string): void {
    this.socket.send(text);
  }

  /** Calls `handler` for every server notification named `method`; returns the remover. */
  on(method: string, handler: NotificationHandler): () => void {
    let set = this.handlers.get(method);
    if (!set) {
      set = new Set();
      this.handlers.set(method, set);
    }
    set.add(handler);
    return () => set.delete(handler);
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
