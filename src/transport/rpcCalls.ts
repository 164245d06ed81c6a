// The client half of JSON-RPC over one message channel, with no Node or DOM APIs: request ids,
// pending calls, notification handlers, exact 64-bit JSON. The CLI's WebSocket client (`ws`,
// src/cli/rpcClient.ts) and the browser dashboard's (src/dashboard/rpc.ts) are thin shells
// around it that own their socket.
import { parseJson, stringifyJson } from './jsonText.ts';

export class RpcCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data: unknown,
  ) {
    super(message);
    this.name = 'RpcCallError';
  }

  /** "message: detail" as people read it (the node's `data.detail` says what exactly went wrong). */
  get text(): string {
    const detail = (this.data as { detail?: unknown } | undefined)?.detail;
    return typeof detail === 'string' && detail !== this.message ? `${this.message}: ${detail}` : this.message;
  }
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };
type NotificationHandler = (params: unknown) => void;

/** Sends one text frame; calls `failed` if it could not be sent. */
export type SendText = (text: string, failed: (error: Error) => void) => void;

export class RpcCalls {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly handlers = new Map<string, Set<NotificationHandler>>();

  constructor(private readonly send: SendText) {}

  /** Sends one request; resolves with its result or rejects with an RpcCallError. */
  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.send(stringifyJson({ jsonrpc: '2.0', id, method, params }), (error) => {
        this.pending.delete(id);
        reject(error);
      });
    });
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

  /** One received text frame: a reply to a pending call, or a notification. Garbage is ignored. */
  receive(text: string): void {
    let message: { id?: unknown; result?: unknown; error?: { code: number; message: string; data?: unknown }; method?: string; params?: unknown };
    try {
      message = parseJson(text) as typeof message;
    } catch {
      return;
    }
    if (message === null || typeof message !== 'object') return;
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

  /** The channel closed: every call still waiting fails with `reason`. */
  closed(reason: Error): void {
    for (const pending of this.pending.values()) pending.reject(reason);
    this.pending.clear();
  }
}
