// A legitimate NBD client under a connection flood (issue 20, item 3): how often `nbdinfo` over
// TLS-PSK gets through, and how long it takes, while hostile connections that never finish their
// handshake keep coming (1000 of them, and more than the node's 2048 handshake slots), against the
// same client with no flood in the same run. The node runs in its own process; the flood runs in
// this one (test/transport/nbdFlood.ts: silent, flags only, STARTTLS then nothing, and chatty
// connections, each opened again as soon as the node drops it). Figures only, nothing asserted.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ConnectionFlood } from '../test/transport/nbdFlood.ts';
import { libnbdTlsUri, missingNbdTools, newPskKey, writePskFile } from '../test/integration/nbdTools.ts';
import { spawnBenchNode } from './childNode.ts';
import { envInteger, fixed, median, printTable, quantile, sleepMs } from './support.ts';

// A try that has not finished by then counts as failed (nbdinfo would otherwise wait for TCP's retries).
const tryTimeoutMs = 30_000;

interface Outcome {
  readonly ok: boolean;
  readonly ms: number;
}

function nbdinfoSize(uri: string): Promise<Outcome> {
  const startMs = performance.now();
  return new Promise((resolve) => {
    execFile('nbdinfo', ['--size', uri], { timeout: tryTimeoutMs }, (error, stdout) => {
      resolve({ ok: error === null && stdout.trim() !== '', ms: performance.now() - startMs });
    });
  });
}

/** `tries` connections one after another; each opens, negotiates TLS, asks the size and leaves. */
async function tryConnecting(uri: string, tries: number): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  for (let index = 0; index < tries; index++) outcomes.push(await nbdinfoSize(uri));
  return outcomes;
}

export async function nbdFloodBenchmark(): Promise<void> {
  console.log('\nnbdFlood: nbdinfo over TLS-PSK while hostile connections never finish their handshake');
  const missing = missingNbdTools(['nbdinfo']);
  if (missing.length > 0) {
    console.log(`  skipped: ${missing.join(', ')} not installed (apt-get install libnbd-bin)`);
    return;
  }
  const tries = envInteger('LVNODE_BENCH_FLOOD_TRIES', 20);
  const floods = (process.env.LVNODE_BENCH_FLOOD_CONNECTIONS ?? '1000,4000').split(',').map(Number);
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bench-flood-'));
  const key = newPskKey('qemu');
  const keyFile = join(dir, 'keys.psk');
  await writePskFile(keyFile, [key]);
  const bench = await spawnBenchNode({ sizeMib: 64, lvolCount: 1, nbdListen: '127.0.0.1:0', nbdArgs: ['--nbd-tls-psk', keyFile] });
  try {
    const [host, portText] = bench.nbdAddress!.split(':');
    const port = Number(portText);
    await bench.client.call('nbd_start_export', { bdev_name: bench.lvolNames[0], export_name: 'flood' });
    const uri = libnbdTlsUri(host!, port, 'flood', keyFile, key.identity);
    // Warm up (the node's first TLS handshake, nbdinfo's libraries in the page cache).
    await tryConnecting(uri, 3);
    const rows: string[][] = [];
    const baseline = await tryConnecting(uri, tries);
    const baselineMs = median(baseline.filter((outcome) => outcome.ok).map((outcome) => outcome.ms));
    rows.push(row('no flood (baseline)', baseline, baselineMs, undefined));
    for (const connections of floods) {
      const flood = new ConnectionFlood({ kind: 'tcp', host: host!, port }, { connections });
      const startMs = performance.now();
      flood.start();
      // Let it reach its full size before the first try.
      while (flood.opened < connections) await sleepMs(10);
      await sleepMs(2000);
      const outcomes = await tryConnecting(uri, tries);
      const seconds = (performance.now() - startMs) / 1000;
      const rate = { opened: flood.opened / seconds, dropped: flood.closedByServer / seconds };
      await flood.stop();
      rows.push(row(`${connections} hostile connections`, outcomes, baselineMs, rate));
      // The node lets go of what is left before the next flood.
      await sleepMs(1000);
    }
    console.log(`  ${tries} tries each, one after another (LVNODE_BENCH_FLOOD_TRIES, LVNODE_BENCH_FLOOD_CONNECTIONS); a try times out after ${tryTimeoutMs / 1000} s`);
    printTable(['condition', 'succeeded', 'median ms', 'p90 ms', 'max ms', 'median / baseline', 'hostile opened/s', 'dropped/s'], rows);
  } finally {
    await bench.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function row(condition: string, outcomes: readonly Outcome[], baselineMs: number, rate: { opened: number; dropped: number } | undefined): string[] {
  const succeeded = outcomes.filter((outcome) => outcome.ok).map((outcome) => outcome.ms);
  const medianMs = succeeded.length > 0 ? median(succeeded) : Number.NaN;
  return [
    condition,
    `${succeeded.length} of ${outcomes.length}`,
    fixed(medianMs, 1),
    succeeded.length > 0 ? fixed(quantile(succeeded, 0.9), 1) : '-',
    succeeded.length > 0 ? fixed(Math.max(...succeeded), 1) : '-',
    rate === undefined ? '1.00' : fixed(medianMs / baselineMs, 2),
    rate === undefined ? '-' : fixed(rate.opened, 0),
    rate === undefined ? '-' : fixed(rate.dropped, 0),
  ];
}
