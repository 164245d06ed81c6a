// lvnode's native addon (native/, built at install into build/Release/): loaded once, here, for
// every layer that uses it (the CRC in src/checksum; file locks, durable writes and zeroing in
// src/device).
import { createRequire } from 'node:module';

const addonFile = 'build/Release/lvnode_crc64.node';
// This file runs from src/ (tsx) or from the install-time bundle in build/js/: the package root
// is one or two levels up.
const candidates = [`../${addonFile}`, `../../${addonFile}`];

function load(): { addon: Record<string, unknown> | null; error: NodeJS.ErrnoException | null } {
  const require = createRequire(import.meta.url);
  let lastError: NodeJS.ErrnoException | null = null;
  for (const candidate of candidates) {
    try {
      return { addon: require(candidate) as Record<string, unknown>, error: null };
    } catch (error) {
      lastError = error as NodeJS.ErrnoException;
      if (lastError.code !== 'MODULE_NOT_FOUND') break; // found but broken: say why
    }
  }
  return { addon: null, error: lastError };
}

const loaded = load();

/** The addon's exports, or null when it is not built or does not load (see `addonError`). */
export const addon: Record<string, unknown> | null = loaded.addon;
/** Why `addon` is null: MODULE_NOT_FOUND when it was never built. */
export const addonError: NodeJS.ErrnoException | null = loaded.error;
