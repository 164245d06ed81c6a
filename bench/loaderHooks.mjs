// Module hooks for bench/loader.mjs: TypeScript files outside node_modules are compiled by esbuild
// (as the CLI bundle is: ESM, node20, no keepNames); everything else loads as Node loads it.
// Specifiers already name their .ts files (allowImportingTsExtensions), so resolution is Node's own.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { transform } from 'esbuild';

const typescript = /\.(m?ts|tsx)$/;

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || url.includes('/node_modules/') || !typescript.test(url)) return nextLoad(url, context);
  const path = fileURLToPath(url);
  const { code } = await transform(await readFile(path, 'utf8'), {
    loader: url.endsWith('.tsx') ? 'tsx' : 'ts',
    format: 'esm',
    target: 'node20',
    sourcemap: 'inline',
    sourcefile: path,
    tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true } },
  });
  return { format: 'module', source: code, shortCircuit: true };
}
