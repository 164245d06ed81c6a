// The dashboard in a real headless Chromium against a real node on a loopback port (SPEC §8):
// the tree follows RPCs made by another client, checksum progress and buttons, the inspector,
// the node panel, and the token. Each test saves a screenshot under test-results/.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RpcClient } from '../../src/cli/rpcClient.ts';
import { type NodeProcess, killAllNodes, spawnNode } from '../integration/processNode.ts';
import { browserAvailable, browserRequired, launchBrowser, openPage, screenshot } from './browser.ts';

const wait = { timeout: 20_000 };
const run = browserAvailable || browserRequired ? describe : describe.skip;

run('dashboard in Chromium', () => {
  let dataDir: string;
  let node: NodeProcess;
  let client: RpcClient;
  let browser: Browser;
  let httpUrl: string;
  let pageErrors: string[] = [];
  const pages: Page[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'lvnode-dashboard-'));
    node = await spawnNode({ dataDir, diskSize: '1G', logLevel: 'warn' });
    httpUrl = node.url.replace(/^ws:/, 'http:');
    client = await node.connect();
    browser = await launchBrowser();
    // A chain: base (written) -> snap -> clone, and a thick snapshot large enough to watch.
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: 64, thin_provision: true });
    await client.call('node_lvol_write', { name: 'lvs0/base', offset: 0, data: Buffer.alloc(4096, 0x5a).toString('base64') });
    await client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/base', snapshot_name: 'snap' });
    await client.call('bdev_lvol_clone', { snapshot_name: 'lvs0/snap', clone_name: 'clone' });
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'big', size_in_mib: 64, thin_provision: false });
    await client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/big', snapshot_name: 'bigsnap' });
    // 16 clusters of 4 MiB at 8 MiB/s: about 8 s per walk, long enough to watch and stop.
    await client.call('node_set_background_options', { checksum_rate_mib_per_sec: 8 });
  });

  afterEach(async () => {
    for (const page of pages.splice(0)) await page.close();
    expect(pageErrors).toEqual([]);
    pageErrors = [];
  });

  afterAll(async () => {
    await browser?.close();
    await killAllNodes();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  /** Opens the page as the link the node printed does: with its token, which the page keeps. */
  async function open(path = '/'): Promise<Page> {
    const page = await openPage(browser, `${httpUrl}?token=${encodeURIComponent(node.token!)}${path.replace(/^\//, '')}`, pageErrors);
    pages.push(page);
    return page;
  }

  const row = (page: Page, alias: string) => page.locator(`tr[data-alias="${alias}"]`);

  async function checksumState(name: string): Promise<string> {
    return (await client.call<{ state: string }>('bdev_lvol_get_checksum_status', { name })).state;
  }

  it('draws the tree: bdev, lvstore, and the snapshot chain with sizes and alias text', async () => {
    const page = await open();
    await expect.poll(() => row(page, 'lvs0/clone').count(), wait).toBe(1);
    const snap = row(page, 'lvs0/snap');
    await expect.poll(() => snap.textContent()).toContain('lvs0/snap');
    expect(await snap.textContent()).toContain('snapshot · thin · read-only');
    expect(await row(page, 'lvs0/bigsnap').textContent()).toContain('64.0 MiB');
    expect(await row(page, 'lvs0/bigsnap').textContent()).toContain('snapshot · thick · read-only');
    // Clones are drawn under their snapshot: the rows follow the chain, depth first.
    const order = await page.locator('tr[data-alias]').evaluateAll((rows) => rows.map((element) => element.getAttribute('data-alias')));
    expect(order.indexOf('lvs0/snap')).toBeLessThan(order.indexOf('lvs0/base'));
    expect(order.indexOf('lvs0/snap')).toBeLessThan(order.indexOf('lvs0/clone'));
    expect(await page.locator('.bdev h2').first().textContent()).toContain('disk0');
    expect(await page.locator('.lvstore h3').first().textContent()).toContain('lvs0');
    await screenshot(page, 'tree');
  });

  it('follows creates, renames and deletes made by another client, without a reload', async () => {
    const page = await open();
    await expect.poll(() => row(page, 'lvs0/clone').count(), wait).toBe(1);
    const reloads: string[] = [];
    page.on('framenavigated', (frame) => reloads.push(frame.url()));
    await client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'temp', size_in_mib: 8, thin_provision: true });
    await expect.poll(() => row(page, 'lvs0/temp').count(), wait).toBe(1);
    expect(await row(page, 'lvs0/temp').locator('td').nth(1).textContent()).toMatch(/^0 \/ 2/);
    // A write allocates a cluster: the count follows (allocation notices are coalesced per second).
    await client.call('node_lvol_write', { name: 'lvs0/temp', offset: 0, data: Buffer.alloc(4096, 1).toString('base64') });
    await expect.poll(() => row(page, 'lvs0/temp').locator('td').nth(1).textContent(), wait).toMatch(/^1 \/ 2/);
    await client.call('bdev_lvol_rename', { old_name: 'lvs0/temp', new_name: 'renamed' });
    await expect.poll(() => row(page, 'lvs0/renamed').count(), wait).toBe(1);
    expect(await row(page, 'lvs0/temp').count()).toBe(0);
    await screenshot(page, 'live-created');
    await client.call('bdev_lvol_delete', { name: 'lvs0/renamed' });
    await expect.poll(() => row(page, 'lvs0/renamed').count(), wait).toBe(0);
    expect(reloads).toEqual([]);
    await screenshot(page, 'live-deleted');
  });

  it('shows a running checksum advancing; Stop leaves it aborted, Resume continues it', async () => {
    const page = await open();
    const big = row(page, 'lvs0/bigsnap');
    await expect.poll(() => big.count(), wait).toBe(1);
    await big.getByRole('button', { name: 'Start checksum' }).click();
    const bar = big.getByRole('progressbar');
    await expect.poll(() => bar.count(), wait).toBe(1);
    expect(await bar.getAttribute('max')).toBe('16');
    await expect.poll(async () => Number(await bar.getAttribute('value')), wait).toBeGreaterThan(0);
    const first = Number(await bar.getAttribute('value'));
    await expect.poll(async () => Number(await bar.getAttribute('value')), wait).toBeGreaterThan(first);
    const figures = await big.locator('.figures').textContent();
    expect(figures).toMatch(/%/);
    expect(figures).toMatch(/\/s/);
    expect(figures).toMatch(/ETA/);
    await screenshot(page, 'checksum-progress');

    await big.getByRole('button', { name: 'Stop' }).click();
    await expect.poll(() => checksumState('lvs0/bigsnap'), wait).toBe('aborted');
    await expect.poll(() => big.locator('.state').textContent(), wait).toBe('aborted');
    // Both answers show: the stop's own (true), and the registration's (interrupted, by stop).
    await expect.poll(() => big.locator('.result').textContent(), wait).toContain('Stop: true');
    expect(await big.textContent()).toContain('resumable');
    await screenshot(page, 'checksum-stopped');

    await big.getByRole('button', { name: 'Resume' }).click();
    await expect.poll(() => checksumState('lvs0/bigsnap'), wait).toMatch(/queued|computing/);
    await client.call('bdev_lvol_stop_snapshot_checksum', { name: 'lvs0/bigsnap' });
    await expect.poll(() => big.locator('.state').textContent(), wait).toBe('aborted');
  });

  it('shows the stored checksum in full, hex and decimal, when done', async () => {
    await client.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/snap' });
    const { checksum } = await client.call<{ checksum: bigint | number }>('bdev_lvol_get_snapshot_checksum', { name: 'lvs0/snap' });
    const exact = BigInt(checksum);
    const page = await open();
    const snap = row(page, 'lvs0/snap');
    await expect.poll(() => snap.locator('.value').count(), wait).toBe(1);
    const text = await snap.locator('.value').textContent();
    expect(text).toContain(`0x${exact.toString(16).padStart(16, '0')}`);
    expect(text).toContain(exact.toString(10));
    await screenshot(page, 'checksum-done');
  });

  it('inspector: draws the lvol machine, lights computing during a walk, logs checksum.stop with the snapshot after it', async () => {
    const { uuid } = (await client.call<Array<{ uuid: string }>>('bdev_get_bdevs', { name: 'lvs0/bigsnap' }))[0]!;
    const page = await open(`/#inspect/${uuid}`);
    const computing = page.locator('g[data-state-id="lvol.checksum.computing"]');
    await expect.poll(() => computing.count(), wait).toBe(1);
    // Every state of both parallel regions is drawn, from the served definition.
    for (const id of ['lvol.checksum.idle', 'lvol.checksum.queued', 'lvol.checksum.stopping', 'lvol.checksum.aborted', 'lvol.checksum.done', 'lvol.io.reading']) {
      expect(await page.locator(`g[data-state-id="${id}"]`).count()).toBe(1);
    }
    expect(await computing.getAttribute('data-active')).toBe('false');
    const registration = client.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/bigsnap' }).catch((error: Error) => error);
    await expect.poll(() => computing.getAttribute('data-active'), wait).toBe('true');
    expect(await page.getByTestId('state-value').textContent()).toContain('checksum.computing');
    await screenshot(page, 'inspector-computing');
    await client.call('bdev_lvol_stop_snapshot_checksum', { name: 'lvs0/bigsnap' });
    await registration;
    await expect.poll(() => page.locator('g[data-state-id="lvol.checksum.aborted"]').getAttribute('data-active'), wait).toBe('true');
    const stopRow = page.locator('table.log tbody tr', { has: page.locator('td.event-type', { hasText: /^checksum\.stop$/ }) });
    await expect.poll(() => stopRow.count(), wait).toBeGreaterThan(0);
    // Filtering keeps only that event type.
    await page.getByLabel('Filter by event type').fill('checksum.stop');
    await expect.poll(() => page.locator('table.log tbody tr').count(), wait).toBe(await stopRow.count());
    await stopRow.first().click();
    const snapshot = await page.getByTestId('snapshot-json').textContent();
    expect(snapshot).toContain('"checksum": "stopping"');
    expect(await page.getByTestId('dropped').textContent()).toMatch(/dropped by the node: \d+/);
    await screenshot(page, 'inspector-stopped');
  });

  it('inspector: follows a preemption by a priority operation (lvol.preempt in the log, the walk re-queued)', async () => {
    const { uuid } = (await client.call<Array<{ uuid: string }>>('bdev_get_bdevs', { name: 'lvs0/bigsnap' }))[0]!;
    const page = await open(`/#inspect/${uuid}`);
    const computing = page.locator('g[data-state-id="lvol.checksum.computing"]');
    await expect.poll(() => computing.count(), wait).toBe(1);
    const notes: Array<{ type: string; uuid?: string; reason?: string }> = [];
    const removeListener = client.on('notify', (params) => notes.push(params as (typeof notes)[number]));
    await client.call('notify_subscribe', { types: ['checksum_preempted'] });
    const registration = client.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/bigsnap' }).catch((error: Error) => error);
    await expect.poll(() => computing.getAttribute('data-active'), wait).toBe('true');
    // bdev_lvol_clone is a priority operation on the snapshot: it preempts the walk instead of failing busy.
    await client.call('bdev_lvol_clone', { snapshot_name: 'lvs0/bigsnap', clone_name: 'preempter' });
    const preemptRow = page.locator('table.log tbody tr', { has: page.locator('td.event-type', { hasText: /^lvol\.preempt$/ }) });
    await expect.poll(() => preemptRow.count(), wait).toBeGreaterThan(0);
    await expect.poll(() => notes.some((note) => note.type === 'checksum_preempted' && note.uuid === uuid), wait).toBe(true);
    // The walk goes on by itself after the clone: computing lights up again.
    await expect.poll(() => checksumState('lvs0/bigsnap'), wait).toMatch(/queued|computing|done/);
    await preemptRow.first().click();
    expect(await page.getByTestId('snapshot-json').textContent()).toContain('"checksum": "stopping"');
    await screenshot(page, 'inspector-preempted');
    await client.call('bdev_lvol_stop_snapshot_checksum', { name: 'lvs0/bigsnap' }).catch(() => undefined);
    await registration;
    removeListener();
    await client.call('notify_unsubscribe');
    await client.call('bdev_lvol_delete', { name: 'lvs0/preempter' });
  });

  it('inspector: pausing the log holds the rows shown while events keep coming', async () => {
    const page = await open('/#inspect');
    await page.getByRole('button', { name: /lvs0\/bigsnap/ }).click();
    await expect.poll(() => page.locator('g[data-state-id="lvol.checksum.computing"]').count(), wait).toBe(1);
    await page.getByRole('button', { name: 'Pause log' }).click();
    const shownBefore = await page.locator('table.log tbody tr').count();
    const registration = client.call('bdev_lvol_register_snapshot_checksum', { name: 'lvs0/bigsnap', resume: true }).catch((error: Error) => error);
    await expect.poll(() => page.getByTestId('log-counts').textContent(), wait).toMatch(/paused, [1-9]\d* new/);
    expect(await page.locator('table.log tbody tr').count()).toBe(shownBefore);
    await page.getByRole('button', { name: 'Resume log' }).click();
    await expect.poll(() => page.locator('table.log tbody tr').count(), wait).toBeGreaterThan(shownBefore);
    await client.call('bdev_lvol_stop_snapshot_checksum', { name: 'lvs0/bigsnap' });
    await registration;
    await screenshot(page, 'inspector-paused');
  });

  it('node panel: requests per method, event-loop delay, checksum rate and connections, refreshed', async () => {
    const page = await open('/#node');
    const methods = page.getByRole('table', { name: 'requests per method' });
    await expect.poll(() => methods.locator('tr', { hasText: 'node_get_stats' }).count(), wait).toBe(1);
    expect(await page.locator('.card', { hasText: 'event-loop delay p99' }).textContent()).toMatch(/\d+\.\d{3} ms/);
    expect(await page.locator('.card', { hasText: 'connections' }).textContent()).toMatch(/connections\s*\d+/);
    // The verify policy is off by default, and says how to turn it on.
    expect(await page.locator('.card', { hasText: 'verify policy' }).textContent()).toContain('node_set_verify_policy turns it on');
    // A sparkline appears once a second sample gives a rate.
    await expect.poll(() => page.locator('svg.spark').count(), wait).toBeGreaterThan(0);
    const calls = Number(await methods.locator('tr', { hasText: 'node_get_stats' }).locator('td').nth(1).textContent());
    await expect.poll(async () => Number(await methods.locator('tr', { hasText: 'node_get_stats' }).locator('td').nth(1).textContent()), wait).toBeGreaterThan(calls);
    // The scheduler's options can be read and set from the panel; a bad value shows the node's error.
    const form = page.getByRole('form', { name: 'background options' });
    await expect.poll(() => page.getByLabel('Checksum rate cap in MiB/s').inputValue(), wait).toBe('8');
    await page.getByLabel('Concurrent checksums').fill('0');
    await form.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(() => form.getByRole('alert').textContent(), wait).toContain('Invalid params');
    expect((await client.call<{ max_concurrent_checksums: number }>('node_get_background_options')).max_concurrent_checksums).toBe(2);
    await page.getByLabel('Concurrent checksums').fill('3');
    await form.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(() => form.getByRole('status').textContent(), wait).toContain('saved');
    expect((await client.call<{ max_concurrent_checksums: number }>('node_get_background_options')).max_concurrent_checksums).toBe(3);
    await screenshot(page, 'node');
  });

  it('asks for the token, and reads nothing, when opened without the link the node printed', async () => {
    // Goal (issue 20): a node started with the defaults wants its own token from the page too.
    const page = await openPage(browser, httpUrl, pageErrors);
    pages.push(page);
    await expect.poll(() => page.getByLabel('Token').count(), wait).toBe(1);
    expect(await page.locator('tr[data-alias]').count()).toBe(0);
    await page.getByLabel('Token').fill(node.token!);
    await page.getByRole('button', { name: 'Connect' }).click();
    await expect.poll(() => row(page, 'lvs0/snap').count(), wait).toBe(1);
  });

  it('stays usable with 1,000 lvols', async () => {
    const names = Array.from({ length: 1000 }, (_, index) => `many${String(index).padStart(4, '0')}`);
    for (let start = 0; start < names.length; start += 50) {
      await Promise.all(names.slice(start, start + 50).map((name) => client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: name, size_in_mib: 4, thin_provision: true })));
    }
    const page = await open();
    await expect.poll(() => page.locator('tr[data-alias]').count(), wait).toBe(1005);
    await page.getByLabel('Filter lvols').fill('many0999');
    await expect.poll(() => page.locator('tr[data-alias]').count(), wait).toBe(1);
    await page.getByLabel('Filter lvols').fill('');
    await client.call('bdev_lvol_delete', { name: 'lvs0/many0500' });
    await expect.poll(() => row(page, 'lvs0/many0500').count(), wait).toBe(0);
    await screenshot(page, 'thousand');
  });
});

run('dashboard with --token', () => {
  let dataDir: string;
  let browser: Browser;
  let httpUrl: string;
  const token = 'browser-test-secret';

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'lvnode-dashboard-token-'));
    const node = await spawnNode({ dataDir, diskSize: '256M', logLevel: 'warn', extraArgs: ['--token', token] });
    httpUrl = node.url.replace(/^ws:/, 'http:');
    browser = await launchBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await killAllNodes();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('without the token the page reads nothing; a wrong one is refused; the right one (typed or ?token=) connects', async () => {
    const errors: string[] = [];
    const page = await openPage(browser, httpUrl, errors);
    await expect.poll(() => page.getByLabel('Token').count(), wait).toBe(1);
    expect(await page.locator('tr[data-alias]').count()).toBe(0);
    // The page's own origin cannot open the WebSocket without the token either.
    const bare = await page.evaluate(
      (host) =>
        new Promise<string>((resolve) => {
          const socket = new WebSocket(`ws://${host}/`);
          socket.onopen = () => resolve('open');
          socket.onerror = () => resolve('refused');
        }),
      new URL(httpUrl).host,
    );
    expect(bare).toBe('refused');
    await screenshot(page, 'token-asked');
    await page.getByLabel('Token').fill('wrong');
    await page.getByRole('button', { name: 'Connect' }).click();
    await expect.poll(() => page.getByRole('alert').textContent(), wait).toContain('refused');
    await page.getByLabel('Token').fill(token);
    await page.getByRole('button', { name: 'Connect' }).click();
    await expect.poll(() => page.locator('.lvstore h3').count(), wait).toBe(1);
    await screenshot(page, 'token-accepted');
    await page.close();

    const linked = await openPage(browser, `${httpUrl}?token=${token}`, errors);
    await expect.poll(() => linked.locator('.lvstore h3').count(), wait).toBe(1);
    // The token is taken out of the address bar once read.
    expect(linked.url()).not.toContain(token);
    await linked.close();
    expect(errors).toEqual([]);
  });
});
