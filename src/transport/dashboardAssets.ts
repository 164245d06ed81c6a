// Builds the browser dashboard (src/dashboard/) in memory with esbuild when the node starts.
//
// Nothing built is committed or written: esbuild (already a dependency, for the CLI bundle)
// bundles the TypeScript/JSX and CSS from node_modules offline in a few hundred milliseconds,
// while the node goes on starting; the first page request waits for it.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StaticFile } from './httpStatic.ts';

const contentTypes: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
};

/** The dashboard's source folder: found upward from this module (it runs from src/ or build/js/). */
export function dashboardSourceDir(): string {
  let directory = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(directory, 'src', 'dashboard');
    if (existsSync(join(candidate, 'index.html'))) return candidate;
    const parent = dirname(directory);
    if (parent === directory) throw new Error('dashboard sources (src/dashboard/index.html) not found');
    directory = parent;
  }
}

/** index.html, app.js (+ source map) and app.css, keyed by URL path. */
export async function buildDashboard(sourceDir = dashboardSourceDir()): Promise<Map<string, StaticFile>> {
  const { build, stop } = await import('esbuild');
  const result = await build({
    entryPoints: { app: join(sourceDir, 'main.tsx') },
    bundle: true,
    write: false,
    outdir: '/',
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    jsx: 'automatic',
    jsxImportSource: 'preact',
    minify: true,
    sourcemap: 'linked',
    legalComments: 'none',
    logLevel: 'silent',
  });
  // esbuild's service process stays up after a build and pings the node every second or so (about
  // 0.005 of a core on an idle node, answering). Built once, it is stopped. Not when
  // running from source: tsx transforms modules through the same service, maybe at this moment.
  if (!import.meta.url.includes('/src/transport/')) await stop();
  const files = new Map<string, StaticFile>();
  for (const output of result.outputFiles) {
    const path = `/${output.path.split('/').pop()!}`;
    files.set(path, { body: Buffer.from(output.contents), contentType: contentTypeOf(path) });
  }
  files.set('/index.html', { body: await readFile(join(sourceDir, 'index.html')), contentType: contentTypes['.html']! });
  return files;
}

function contentTypeOf(path: string): string {
  const extension = path.slice(path.lastIndexOf('.'));
  return contentTypes[extension] ?? 'application/octet-stream';
}
