// A real headless Chromium (Debian's, driven by playwright-core) for the dashboard tests.
//
// Skipped when /usr/bin/chromium is missing, unless LVNODE_REQUIRE_BROWSER=1 (CI installs it and
// sets that, so a missing browser fails rather than skips there).
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type Browser, type Page, chromium } from 'playwright-core';

export const chromiumPath = process.env.LVNODE_CHROMIUM ?? '/usr/bin/chromium';
export const browserAvailable = existsSync(chromiumPath);
export const browserRequired = process.env.LVNODE_REQUIRE_BROWSER === '1';

if (browserRequired && !browserAvailable) {
  throw new Error(`LVNODE_REQUIRE_BROWSER=1 but ${chromiumPath} does not exist (apt-get install -y chromium)`);
}

export const screenshotDir = fileURLToPath(new URL('../../test-results/', import.meta.url));

export async function launchBrowser(): Promise<Browser> {
  await mkdir(screenshotDir, { recursive: true });
  return chromium.launch({
    executablePath: chromiumPath,
    // The machine has no internet: without these Chromium keeps trying to reach Google's hosts.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
}

/** A page that fails the test on any uncaught page error. */
export async function openPage(browser: Browser, url: string, errors: string[]): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(url);
  return page;
}

export async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: `${screenshotDir}dashboard-${name}.png`, fullPage: true });
}
