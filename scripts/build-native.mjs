// `npm install`/`npm ci` hook: builds the optional native CRC addon with node-gyp, never failing the install.
//
// The addon only speeds things up (src/checksum/native.ts falls back to TypeScript without it), so a
// missing compiler, Python or node headers must not break `npm ci`: any failure prints one line and
// exits 0. The full node-gyp output goes to build/native-build.log for whoever wants the details.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const addonPath = join(root, 'build', 'Release', 'lvnode_crc64.node');
const logPath = join(root, 'build', 'native-build.log');
// Generous for a two-file compile; it only bounds a node-gyp stuck fetching headers offline.
const timeoutMs = 5 * 60 * 1000;
const verbose = process.env.LVNODE_NATIVE_BUILD_VERBOSE === '1';

function fallback(reason) {
  console.log(`lvnode: native CRC addon not built (${reason}); the TypeScript fallback will be used`);
  process.exit(0);
}

const quote = (text) => `"${text.replace(/(["\\$`])/g, '\\$1')}"`;

/** The ways to run node-gyp, best first: npm puts it on PATH in lifecycle scripts; npm also bundles one. */
function nodeGypCommands() {
  const commands = [];
  const onPath = (process.env.PATH ?? '')
    .split(delimiter)
    .filter(Boolean)
    .some((dir) => existsSync(join(dir, process.platform === 'win32' ? 'node-gyp.cmd' : 'node-gyp')));
  if (onPath) commands.push('node-gyp');
  const bundled = [
    process.env.npm_execpath && join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  for (const script of bundled) {
    if (script && existsSync(script)) commands.push(`${quote(process.execPath)} ${quote(script)}`);
  }
  commands.push('npm exec --yes=false -- node-gyp');
  return [...new Set(commands)];
}

/**
 * Arguments after `rebuild`. Without a nodedir node-gyp downloads the headers, which fails offline;
 * a Node installed with its headers (e.g. /usr/include/node) needs no download, so point at it
 * unless npm config already says where they are.
 */
function nodeGypArguments() {
  const args = ['rebuild'];
  const prefix = resolve(dirname(process.execPath), '..');
  const haveLocalHeaders = existsSync(join(prefix, 'include', 'node', 'node_api.h')) && existsSync(join(prefix, 'include', 'node', 'common.gypi'));
  if (!process.env.npm_config_nodedir && haveLocalHeaders) args.push(`--nodedir=${quote(prefix)}`);
  return args;
}

function run(command) {
  return new Promise((resolvePromise) => {
    const output = [];
    const child = spawn(command, { cwd: root, shell: true, stdio: verbose ? 'inherit' : ['ignore', 'pipe', 'pipe'] });
    child.stdout?.on('data', (chunk) => output.push(chunk));
    child.stderr?.on('data', (chunk) => output.push(chunk));
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      resolvePromise({ code: -1, signal: null, output: `${Buffer.concat(output).toString()}\n${error.message}` });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, output: Buffer.concat(output).toString() });
    });
  });
}

/** The most telling line of a failed build, for the one-line message. */
function firstError(output) {
  const lines = output.split('\n').map((line) => line.trim());
  const telling =
    lines.find((line) => /\berror:/i.test(line) && !line.startsWith('gyp ERR! stack')) ??
    lines.find((line) => line.startsWith('gyp ERR! stack Error:')) ??
    lines.find((line) => line.startsWith('gyp ERR!')) ??
    lines.filter(Boolean).at(-1) ??
    'no output';
  return telling.length > 160 ? `${telling.slice(0, 157)}...` : telling;
}

function saveLog(text) {
  try {
    mkdirSync(dirname(logPath), { recursive: true });
    writeFileSync(logPath, text);
    return true;
  } catch {
    return false;
  }
}

async function main() {
  if (process.env.LVNODE_SKIP_NATIVE_BUILD === '1') fallback('LVNODE_SKIP_NATIVE_BUILD=1');
  const args = nodeGypArguments().join(' ');
  const log = [];
  let lastFailure = 'node-gyp not found';
  for (const command of nodeGypCommands()) {
    const full = `${command} ${args}`;
    const result = await run(full);
    log.push(`$ ${full}\n${result.output}\n(exit ${result.code ?? result.signal})\n`);
    if (result.code === 0 && existsSync(addonPath)) {
      saveLog(log.join('\n'));
      console.log(`lvnode: native CRC addon built (${addonPath})`);
      return;
    }
    // 127: the shell could not find the command; try the next way of running node-gyp.
    if (result.code === 127) continue;
    lastFailure = result.signal ? `node-gyp killed by ${result.signal} after ${timeoutMs / 1000} s` : firstError(result.output);
    break;
  }
  const saved = saveLog(log.join('\n'));
  fallback(`${lastFailure}${saved ? `; log in ${logPath}` : ''}`);
}

main().catch((error) => fallback(error instanceof Error ? error.message : String(error)));
