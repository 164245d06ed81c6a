#!/usr/bin/env node
// Entry point: runs the CLI bundled at install (build/js/, see scripts/build-cli.mjs) when it is
// at least as new as every source file, else registers tsx and runs the TypeScript directly.
import { readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const bundle = new URL('../build/js/main.js', import.meta.url);

function newestMs(directory) {
  let newest = 0;
  for (const entry of readdirSync(directory, { withFileTypes: true })) {
    const path = `${directory}/${entry.name}`;
    newest = Math.max(newest, entry.isDirectory() ? newestMs(path) : statSync(path).mtimeMs);
  }
  return newest;
}

function bundleIsFresh() {
  if (process.env.LVNODE_FROM_SOURCE === '1') return false;
  try {
    return statSync(bundle).mtimeMs >= newestMs(fileURLToPath(new URL('../src', import.meta.url)));
  } catch {
    return false;
  }
}

let main;
if (bundleIsFresh()) {
  ({ main } = await import(bundle.href));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
