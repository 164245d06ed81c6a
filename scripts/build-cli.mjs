// `npm ci` step: bundles the TypeScript CLI into build/js/ with esbuild, so `lvnode` starts without
// compiling TypeScript at every call (bin/lvnode.mjs falls back to tsx when the bundle is missing
// or older than src/). Never fails the install: without the bundle the CLI is only slower.
import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

// Output of an earlier build (chunk names change) must not linger.
await rm(`${root}/build/js`, { recursive: true, force: true });

try {
  const { build } = await import('esbuild');
  await build({
    entryPoints: [`${root}/src/cli/main.ts`],
    bundle: true,
    splitting: true, // serve and demo load only when asked for: `lvnode rpc` stays small
    format: 'esm',
    platform: 'node',
    target: 'node20',
    packages: 'external',
    outdir: `${root}/build/js`,
    logLevel: 'warning',
  });
  console.log('lvnode: CLI bundled (build/js/main.js)');
} catch (error) {
  console.log(`lvnode: CLI not bundled (${error instanceof Error ? error.message : String(error)}); it will run from TypeScript`);
}
