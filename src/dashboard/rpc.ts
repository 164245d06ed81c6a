// The dashboard's JSON-RPC client over the node's WebSocket (same origin, SPEC §3.1): the browser
// WebSocket around the shared client core (src/transport/rpcCalls.ts), which reads checksums
// beyond 2^53 exactly (the browser's JSON.parse would round them).
import { RpcCallError, RpcCalls } from '../transport/rpcCalls.ts';

export { RpcCallError };

/** The WebSocket URL of the node that served this page, with the token as a query parameter. */
export function socketUrl(location: { protocol: string; host: string }, token: string | null): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/${token ? `?token=${encodeURIComponent(token)}` : ''}`;
}

export class DashboardRpc {
  private readonly calls: RpcCalls;

  private constructor(private readonly socket: WebSocket) {
    this.calls = new RpcCalls((text, failed) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(text);
      else failed(new Error('not connected to the node'));
    });
    socket.addEventListener('message', (event) => {
      if (typeof event.data === 'string') this.calls.receive(event.data);
    });
    socket.addEventListener('close', () => this.calls.closed(new Error('connection to the node closed')));
  }

  /** Opens the socket; rejects when the node refuses it (wrong token, not running). */
  static connect(url: string): Promise<DashboardRpc> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.addEventListener('open', () => resolve(new DashboardRpc(socket)), { once: true });
      socket.addEventListener('error', () => reject(new Error('the node refused the connection or is not running')), { once: true });
    });
  }

  onClose(handler: () => void): void {
    this.socket.addEventListener('close', handler, { once: true });
  }

  close(): void {
    this.socket.close();
  }

  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    return this.calls.call<T>(method, params);
  }

  /** Calls `handler` for each notification named `method`; returns the remover. */
  on(method: string, handler: (params: unknown) => void): () => void {
    return this.calls.on(method, handler);
  }
}
