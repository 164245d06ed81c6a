// Whether this machine lets the tests mount small file systems (a full disk is a real full tmpfs,
// a failing flush is ext4 on a loop device over one). Root is needed, and a sandbox may refuse
// even root: such tests then skip and say why instead of failing on the machine, not the code.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function probeMount(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  const dir = mkdtempSync(join(tmpdir(), 'lvnode-mount-probe-'));
  try {
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { encoding: 'utf8' });
    if (mounted.status !== 0) return `mount refused: ${(mounted.stderr || mounted.error?.message || '').trim()}`;
    spawnSync('umount', [dir]);
    return null;
  } finally {
    rmdirSync(dir);
  }
}

function probeLoop(): string | null {
  const found = spawnSync('losetup', ['-f'], { encoding: 'utf8' });
  return found.status === 0 ? null : `no free loop device: ${(found.stderr || found.error?.message || '').trim()}`;
}

/** Why tests cannot mount here, or null when they can. */
export const mountUnavailable: string | null = probeMount();
/** Why tests cannot use a loop device here (mounting included), or null when they can. */
export const loopUnavailable: string | null = mountUnavailable ?? probeLoop();
