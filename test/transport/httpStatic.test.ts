// The dashboard's static files over real HTTP on loopback: content types, caching, traversal.
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDashboard } from '../../src/transport/dashboardAssets.ts';
import { StaticFiles } from '../../src/transport/httpStatic.ts';
import { type RpcServer, startRpcServer } from '../../src/transport/wsServer.ts';
import { createDispatcher } from '../../src/transport/jsonRpc.ts';

let server: RpcServer;
let files: StaticFiles;

function get(path: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: server.address.port, path, method: options.method ?? 'GET', headers: options.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  files = new StaticFiles(() => buildDashboard());
  server = await startRpcServer({ host: '127.0.0.1', port: 0, dispatcher: createDispatcher({}, { allowBatch: false }), insecureNoAuth: true, httpHandler: files.handle, log: () => {} });
  expect(await files.loaded()).toBeUndefined();
});

afterAll(async () => {
  await server?.close();
});

describe('dashboard static files', () => {
  it('serves the page, its script and its style with their content types and security headers', async () => {
    const page = await get('/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.body).toContain('<script type="module" src="/app.js">');
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    expect(page.headers['content-security-policy']).toContain("default-src 'none'");
    expect(page.headers['cache-control']).toBe('private, no-cache');
    const script = await get('/app.js');
    expect(script.status).toBe(200);
    expect(script.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(script.body.length).toBeGreaterThan(10_000);
    expect((await get('/app.css')).headers['content-type']).toBe('text/css; charset=utf-8');
    expect((await get('/app.js.map')).headers['content-type']).toBe('application/json; charset=utf-8');
    expect((await get('/index.html?x=1')).status).toBe(200);
  });

  it('answers 304 to a matching If-None-Match, and HEAD without a body', async () => {
    const first = await get('/app.js');
    const etag = first.headers.etag as string;
    expect(etag).toMatch(/^"[\w-]+"$/);
    expect((await get('/app.js', { headers: { 'If-None-Match': etag } })).status).toBe(304);
    expect((await get('/app.js', { headers: { 'If-None-Match': '"other"' } })).status).toBe(200);
    const head = await get('/app.js', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(first.body));
  });

  it('gives 404 for anything else, traversal in every spelling included, and 405 for other methods', async () => {
    for (const path of ['/../package.json', '/%2e%2e/package.json', '/..%2fpackage.json', '/%2e%2e%2f%2e%2e%2fetc%2fpasswd', '/..%5cpackage.json', '/app.js%00', '/%zz', '/src/dashboard/main.tsx', '//app.js', '/index.html/..', '/APP.JS']) {
      const answer = await get(path);
      expect(answer.status, path).toBe(404);
      expect(answer.body).toBe('not found\n');
    }
    expect((await get('/', { method: 'POST' })).status).toBe(405);
    expect((await get('/app.js', { method: 'DELETE' })).headers.allow).toBe('GET, HEAD');
  });
});
