// Base bdevs before they join the node: checking names and files, opening a file as a device,
// and the bdev list in SPDK's config form (save_config, and what serve.ts keeps across restarts).
// baseBdevLifecycle.ts registers what these return; the node examines it for an lvstore.
import { stat } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import type { BlockDevice } from '../device/blockDevice.ts';
import { FileDevice } from '../device/fileDevice.ts';
import { FileLockedError } from '../device/fileLock.ts';
import { QueuedDevice } from '../device/queuedDevice.ts';
import { fail } from '../errors.ts';
import { validateName } from '../store/lvstore.ts';
import type { BaseBdev, Registry } from './registry.ts';

/** One base-bdev creation call, in SPDK config form (what save_config lists and --config replays). */
export interface BdevConfigEntry {
  method: 'bdev_aio_create' | 'bdev_malloc_create';
  params: Record<string, unknown>;
}

/** SPDK's save_config shape, bdev subsystem only. */
export interface SpdkConfig {
  subsystems: Array<{ subsystem: 'bdev'; config: BdevConfigEntry[] }>;
}

/**
 * The base bdevs as SPDK config calls, in creation order (devices attached by an embedder are not
 * saved). `change` gives the list as it will be once a bdev is added or removed: what is saved
 * before the node changes (a change whose list cannot be saved is not made).
 */
export function bdevConfig(registry: Registry, change: { adding?: BaseBdev; removing?: string } = {}): SpdkConfig {
  const bdevs = [...registry.bdevs.values()].filter((bdev) => bdev.name !== change.removing);
  if (change.adding) bdevs.push(change.adding);
  const config = bdevs.filter((bdev) => !bdev.external).map((bdev): BdevConfigEntry =>
    bdev.kind === 'aio'
      ? {
          method: 'bdev_aio_create',
          params: { name: bdev.name, filename: bdev.filename, block_size: bdev.device.blockSizeBytes, readonly: bdev.readOnly, uuid: bdev.uuid },
        }
      : {
          method: 'bdev_malloc_create',
          params: { name: bdev.name, num_blocks: bdev.device.sizeBytes / bdev.device.blockSizeBytes, block_size: bdev.device.blockSizeBytes, uuid: bdev.uuid },
        },
  );
  return { subsystems: [{ subsystem: 'bdev', config }] };
}

/**
 * One base-bdev list change at a time: each saves the list it computes and then applies it, so
 * two concurrent creates cannot each save a list without the other's bdev.
 */
export class BdevListChanges {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(change: () => Promise<T>): Promise<T> {
    const result = this.tail.then(change);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export function assertBdevNameFree(registry: Registry, name: string): void {
  validateName('bdev', name);
  if (registry.bdevNameTaken(name)) fail('EEXIST', `bdev ${name} already exists`);
}

/**
 * One file, one bdev: two handles writing one lvstore would corrupt it. Files are compared by
 * device and inode, so a hard link or a symlink to an attached file is the same file.
 */
function assertFileFree(registry: Registry, filename: string, fileId?: string): void {
  for (const other of registry.bdevs.values()) {
    const same = other.filename === filename || (fileId !== undefined && other.device.fileId === fileId);
    if (same) fail('EEXIST', `${filename} is already attached as bdev ${other.name} (${other.filename})`);
  }
}

/**
 * Opens the file of a new aio bdev (locked: SPEC §9) behind the foreground-first I/O queue, after
 * checking the name and that no bdev holds the same file; checked again once open, as another
 * request may have taken either meanwhile. The filename comes back absolute, so a saved config
 * means the same file whatever directory the node starts in.
 */
export async function openAioDevice(
  registry: Registry,
  request: { name: string; filename: string; blockSize: number; readOnly: boolean },
): Promise<{ device: BlockDevice; filename: string }> {
  assertBdevNameFree(registry, request.name);
  const filename = resolvePath(request.filename);
  let identity: string;
  try {
    const info = await stat(filename, { bigint: true });
    identity = `${info.dev}:${info.ino}`;
  } catch {
    fail('ENOENT', `file ${filename} does not exist`);
  }
  // Before opening: a second open of an attached file would already collide with our own lock.
  assertFileFree(registry, filename, identity);
  let device: BlockDevice;
  try {
    device = new QueuedDevice(await FileDevice.open(filename, request.blockSize, { readOnly: request.readOnly }));
  } catch (error) {
    // Another node holds the file (SPEC §9): say who.
    if (error instanceof FileLockedError) fail('EBUSY', `${error.message}; a file is served by one node at a time`);
    fail('EINVAL', `cannot open ${filename}: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (device.sizeBytes < request.blockSize) {
    await device.close();
    fail('EINVAL', `${filename} is smaller than one ${request.blockSize}-byte block`);
  }
  try {
    assertBdevNameFree(registry, request.name);
    assertFileFree(registry, filename, device.fileId);
  } catch (error) {
    await device.close();
    throw error;
  }
  return { device, filename };
}
