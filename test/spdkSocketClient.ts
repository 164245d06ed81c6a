// A client that speaks SPDK's Unix-socket JSON-RPC the way SPDK's own clients do (go-spdk-helper,
// rpc.py): tab-indented multi-line requests written back to back, several in flight, replies
// matched by id. Replies are read as a stream of JSON values (here: one per line, as SPDK and
// lvnode write them).
import { type Socket, connect } from 'node:net';
import { parseJson, stringifyJson } from '../src/transport/json64.ts';

export interface SpdkReply {
  jsonrpc: '2.0';
  id: unknown;
  result?: unknown;
  error?: { code: number; message: string; data?: unknown };
}

export class SpdkSocketClient {
  private buffered = '';
  private nextId = 1000 + Math.floor(Math.random() * 9000);
  readonly replies: SpdkReply[] = [];
  readonly rawReplies: string[] = [];
  private readonly waiters: Array<() => void> = [];
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buffered += text;
      for (let newline = this.buffered.indexOf('\n'); newline !== -1; newline = this.buffered.indexOf('\n')) {
        const line = this.buffered.slice(0, newline);
        this.buffered = this.buffered.slice(newline + 1);
        this.rawReplies.push(line);
        this.replies.push(parseJson(line) as SpdkReply);
      }
      for (const waiter of this.waiters.splice(0)) waiter();
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => {
      for (const waiter of this.waiters.splice(0)) waiter();
    });
  }

  static connect(path: string): Promise<SpdkSocketClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once('connect', () => resolve(new SpdkSocketClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Writes one request as go-spdk-helper does (tab-indented, multi-line); returns its id. */
  send(method: string, params?: unknown, id: unknown = this.nextId++): unknown {
    const request: Record<string, unknown> = { jsonrpc: '2.0', method, id };
    if (params !== undefined) request.params = params;
    this.socket.write(tabIndented(request));
    return id;
  }

  writeRaw(text: string): void {
    this.socket.write(text);
  }

  async waitFor(predicate: (reply: SpdkReply) => boolean): Promise<SpdkReply> {
    for (;;) {
      const found = this.replies.find(predicate);
      if (found) return found;
      if (this.socket.destroyed) throw new Error('connection closed before the reply');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  reply(id: unknown): Promise<SpdkReply> {
    return this.waitFor((reply) => reply.id === id);
  }

  /** Sends and waits; resolves with the result, rejects with the error object. */
  async call<T = unknown>(method: string, params?: unknown): Promise<T> {
    const reply = await this.reply(this.send(method, params));
    if (reply.error) throw Object.assign(new Error(`${method}: ${reply.error.message}`), { rpc: reply.error });
    return reply.result as T;
  }

  close(): Promise<void> {
    this.socket.end();
    return this.closed;
  }
}

/** JSON with tab indentation, as go-spdk-helper's encoder writes it; bigints are exact integers. */
export function tabIndented(value: unknown, indent = ''): string {
  const inner = `${indent}\t`;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((item) => inner + tabIndented(item, inner)).join(',\n')}\n${indent}]`;
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, item]) => item !== undefined);
    if (entries.length === 0) return '{}';
    return `{\n${entries.map(([key, item]) => `${inner}${JSON.stringify(key)}: ${tabIndented(item, inner)}`).join(',\n')}\n${indent}}`;
  }
  return stringifyJson(value);
}
