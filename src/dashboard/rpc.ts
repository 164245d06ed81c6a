// The dashboard's JSON-RPC client over the node's WebSocket (same origin, SPEC §3.1).
//
// Exact 64-bit integers: checksums beyond 2^53 arrive as bare JSON integers, which the browser's
// JSON.parse would round; the node's own exact parser (no Node APIs) reads them as bigints.
import { parseJson } from '../transport/jsonParse.ts';

export class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data: unknown,
  ) {
    super(message);
  }

  /** "message (detail)" as the page shows it. */
  get text(): string {
    const detail = (this.data as { detail?: unknown } | undefined)?.detail;
    return typeof detail === 'string' && detail !== this.message ? `${this.message}: ${detail}` : this.message;
  }
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };

/** The WebSocket URL of the node that served this page, with the token as a query parameter. */
export function socketUrl(location: { protocol: string; host: string }, token: string | null): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/${token ? `?token=${encodeURIComponent(token)}` : ''}`;
}

export class DashboardRpc {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly handlers = new Map<string, Set<(params: unknown) => void>>();

  private constructor(private readonly socket: WebSocket) {
    socket.addEventListener('message', (event) => this.onMessage(String(event.data)));
    socket.addEventListener('close', () => {
      for (const pending of this.pending.values()) pending.reject(new Error('connection to the node closed'));
      this.pending.clear();
    });
  }

  /** Opens the socket; rejects when the node refuses it (wrong token, not running). */
  static connect(url: string): Promise<DashboardRpc> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.addEventListener('open', () => resolve(new DashboardRpc(socket)), { once: true });
      socket.addEventListener('error', () => reject(new Error('the node refused the connection or is not running')), { once: true });
    });
  }

  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  onClose(handler: () => void): void {
    this.socket.addEventListener('close', handler, { once: true });
  }

  close(): void {
    this.socket.close();
  }

  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      if (!this.open) {
        reject(new Error('not connected to the node'));
        return;
      }
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.socket.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  /** Calls `handler` for each notification named `method`; returns the remover. */
  on(method: string, handler: (params: unknown) => void): () => void {
    let set = this.handlers.get(method);
    if (!set) this.handlers.set(method, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  private onMessage(text: string): void {
    let message: { id?: number; method?: string; params?: unknown; result?: unknown; error?: { code: number; message: string; data?: unknown } };
    try {
      message = parseJson(text) as typeof message;
    } catch {
      return;
    }
    if (message.method !== undefined && message.id === undefined) {
      for (const handler of this.handlers.get(message.method) ?? []) handler(message.params);
      return;
    }
    const pending = this.pending.get(Number(message.id));
    if (!pending) return;
    this.pending.delete(Number(message.id));
    if (message.error) pending.reject(new RpcError(message.error.code, message.error.message, message.error.data));
    else pending.resolve(message.result);
  }
}
