// Hostile NBD connections, for the slot tests and bench/nbdFlood.ts: many at once, none of which
// ever finishes its handshake, each opened again as soon as the server drops it.
import { type Socket, connect } from 'node:net';
import type { NbdAddress } from '../../src/transport/nbd/server.ts';
import { clientFlag, option } from '../../src/transport/nbd/protocol.ts';
import { optionRequest } from './nbdTestClient.ts';

/**
 * How a hostile connection behaves once connected: `silent` sends nothing; `flags` sends its client
 * flags and stops; `startTls` asks for TLS and then never starts it; `chatty` keeps sending options
 * (answered NBD_REP_ERR_TLS_REQD before TLS) to look busy.
 */
export type HostileStyle = 'silent' | 'flags' | 'startTls' | 'chatty';

export const hostileStyles: readonly HostileStyle[] = ['silent', 'flags', 'startTls', 'chatty'];

// A chatty connection sends an option this often.
const chattyIntervalMs = 100;

function clientFlags(): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(clientFlag.fixedNewstyle | clientFlag.noZeroes, 0);
  return out;
}

/** Keeps `connections` hostile connections trying, styles in turn, until stopped. */
export class ConnectionFlood {
  /** Connections opened so far, and how many of them the server closed. */
  opened = 0;
  closedByServer = 0;
  private readonly live = new Set<Socket>();
  private stopped = false;

  constructor(
    private readonly address: NbdAddress,
    private readonly options: { connections: number; styles?: readonly HostileStyle[] },
  ) {}

  start(): void {
    for (let index = 0; index < this.options.connections; index++) this.open(index);
  }

  /** Closes every hostile connection; resolves once all are gone. */
  async stop(): Promise<void> {
    this.stopped = true;
    const closing = [...this.live].map((socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve()))));
    for (const socket of this.live) socket.destroy();
    await Promise.all(closing);
  }

  private open(index: number): void {
    if (this.stopped) return;
    const styles = this.options.styles ?? hostileStyles;
    const style = styles[index % styles.length]!;
    const socket = this.address.kind === 'tcp' ? connect(this.address.port, this.address.host) : connect(this.address.path);
    this.opened++;
    this.live.add(socket);
    let timer: NodeJS.Timeout | undefined;
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    socket.once('connect', () => {
      if (style === 'silent') return;
      socket.write(clientFlags());
      if (style === 'startTls') socket.write(optionRequest(option.startTls));
      if (style === 'chatty') timer = setInterval(() => socket.write(optionRequest(option.list)), chattyIntervalMs);
    });
    socket.once('close', () => {
      clearInterval(timer);
      this.live.delete(socket);
      if (this.stopped) return;
      this.closedByServer++;
      // Tried again at once: the flood never lets up.
      setImmediate(() => this.open(index));
    });
  }
}
