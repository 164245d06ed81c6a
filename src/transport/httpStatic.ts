// Serves a fixed set of in-memory files over plain HTTP (the dashboard, SPEC §8).
//
// Only paths in the set exist: there is no file system behind a request, so `/../`, `%2e%2e`,
// `%2f`, backslashes and NUL bytes can only ever miss (404). Bodies are hashed once for a strong
// ETag; `If-None-Match` answers 304. The page itself is never cached without revalidation, so a
// restarted node with a new dashboard is picked up on the next load.
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface StaticFile {
  readonly body: Buffer;
  readonly contentType: string;
}

interface Prepared extends StaticFile {
  readonly etag: string;
}

/**
 * Security headers for every answer: no MIME sniffing, no framing (clickjacking of the buttons),
 * and a CSP that allows only the node's own origin (its WebSocket included).
 */
const securityHeaders = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

export class StaticFiles {
  private files = new Map<string, Prepared>();
  private ready: Promise<void>;
  private failure: Error | undefined;

  /** `load` gives the files (it may build them); requests that come first wait for it. */
  constructor(load: () => Promise<Map<string, StaticFile>>) {
    this.ready = load().then(
      (files) => {
        for (const [path, file] of files) this.files.set(path, { ...file, etag: `"${createHash('sha256').update(file.body).digest('base64url').slice(0, 27)}"` });
      },
      (error: unknown) => {
        this.failure = error instanceof Error ? error : new Error(String(error));
      },
    );
  }

  /** Resolves once the files are loaded (or failed to); for start-up logs and tests. */
  async loaded(): Promise<Error | undefined> {
    await this.ready;
    return this.failure;
  }

  /** The RpcServer's `httpHandler`: answers requests for the served paths; false for any other. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): boolean => {
    const path = pathOf(req.url);
    if (path === undefined) return false;
    void this.ready
      .then(() => this.answer(req, res, path))
      .catch(() => {
        // The answer runs after the server's own try/catch: a failure here must not become an
        // unhandled rejection (which would end the node); the client just loses this response.
        res.destroy();
      });
    return true;
  };

  private answer(req: IncomingMessage, res: ServerResponse, path: string): void {
    if (this.failure) {
      res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8', ...securityHeaders });
      res.end(`dashboard unavailable: ${this.failure.message}\n`);
      return;
    }
    const file = this.files.get(path);
    if (!file) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', ...securityHeaders });
      res.end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8', ...securityHeaders });
      res.end('method not allowed\n');
      return;
    }
    const headers = {
      'Content-Type': file.contentType,
      ETag: file.etag,
      // Revalidate every time (a 304 costs one round trip on loopback); never store elsewhere.
      'Cache-Control': 'private, no-cache',
      ...securityHeaders,
    };
    if (etagMatches(req.headers['if-none-match'], file.etag)) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    res.writeHead(200, { ...headers, 'Content-Length': file.body.length });
    res.end(req.method === 'HEAD' ? undefined : file.body);
  }
}

/**
 * The request's path with the query cut, or undefined when it is not one this handler takes
 * (the root `/` maps to `/index.html`). Percent-encoded bytes are decoded once; anything that
 * does not decode cleanly, or decodes to a dot segment, a backslash or NUL, is answered 404 by
 * the lookup simply failing.
 */
function pathOf(url: string | undefined): string | undefined {
  if (url === undefined || !url.startsWith('/')) return undefined;
  const raw = url.split('?', 1)[0]!;
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    return '/\u0000malformed'; // answered 404
  }
  return decoded === '/' ? '/index.html' : decoded;
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  return header.split(',').some((candidate) => {
    const trimmed = candidate.trim();
    return trimmed === '*' || trimmed === etag || trimmed === `W/${etag}`;
  });
}
