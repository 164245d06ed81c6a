// Reading an accepted socket into one reused buffer.
//
// By default every read of a net.Socket is a fresh ArrayBuffer (Node allocates 64 KiB per read and
// trims it): at NBD write rates that is thousands of external allocations a second, and V8 answers
// with a major garbage collection every few dozen megabytes. Node's `onread` option makes the
// socket read into a buffer of ours instead and hand over (bytes, buffer) synchronously; the
// bytes are only valid until the callback returns, as the next read lands in the same buffer.
//
// `onread` is only taken by `new net.Socket()` / `net.connect()`, not by `net.createServer()`.
// For a socket a server accepted (created paused: `pauseOnConnect`, so it has not read yet) the
// same state is set here by hand: the three fields the constructor would set (found on a probe
// socket, by their symbols' descriptions) and the handle's `useUserBuffer`, exactly as Node's
// initSocketHandle does. Node 20's onStreamRead, pause() and resume() then treat the socket as one
// created with `onread`. When any piece is missing (another Node version) this reports false and
// the caller reads 'data' events as before.
import { Socket } from 'node:net';

interface ReadBufferSymbols {
  readonly buffer: symbol;
  readonly callback: symbol;
  readonly generator: symbol;
}

let symbols: ReadBufferSymbols | null | undefined;

function findSymbols(): ReadBufferSymbols | null {
  const buffer = Buffer.alloc(1);
  const callback = () => undefined;
  // @types/node has `onread` on connect options only; Node's Socket constructor takes it.
  const probe = new Socket({ onread: { buffer, callback } } as ConstructorParameters<typeof Socket>[0]);
  try {
    const own = Object.getOwnPropertySymbols(probe);
    const named = (description: string) => own.find((candidate) => candidate.description === description);
    const found = { buffer: named('kBuffer'), callback: named('kBufferCb'), generator: named('kBufferGen') };
    const record = probe as unknown as Record<symbol, unknown>;
    if (found.buffer === undefined || found.callback === undefined || found.generator === undefined) return null;
    // The fields must hold what the constructor was given, or they are not the ones we think.
    if (record[found.buffer] !== buffer || record[found.callback] !== callback || record[found.generator] !== null) return null;
    return { buffer: found.buffer, callback: found.callback, generator: found.generator };
  } finally {
    probe.destroy();
  }
}

/**
 * Makes `socket` (accepted paused, not read from yet) read into `buffer`, calling `callback` with
 * the bytes read; false (and nothing changed) when this Node does not allow it. Returning false
 * from `callback` stops reading, as `socket.pause()` does. With `next`, each read after the first
 * lands in the buffer `next` returns after the previous callback (Node's `onread.buffer` as a
 * function): a protocol that knows the next bytes are a large payload reads them in place.
 */
export function readIntoBuffer(
  socket: Socket,
  buffer: Buffer,
  callback: (bytes: number, buffer: Buffer) => boolean | void,
  next?: () => Buffer,
): boolean {
  if (symbols === undefined) symbols = findSymbols();
  if (symbols === null) return false;
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (buffer: Uint8Array) => void; reading?: boolean } })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || handle.reading === true || socket.readableLength > 0) return false;
  const record = socket as unknown as Record<symbol, unknown>;
  if (record[symbols.buffer] !== null || record[symbols.callback] !== null || record[symbols.generator] !== null) return false;
  handle.useUserBuffer(buffer);
  record[symbols.buffer] = buffer;
  record[symbols.callback] = callback;
  if (next) record[symbols.generator] = next;
  return true;
}
