// Base bdevs joining and leaving the node (malloc, aio, and devices an embedder attaches), with
// the saved bdev list kept in step: a bdev is registered only once the saved list names it, and
// deleted only once a list without it is saved, one list change at a time (a full disk never
// costs a volume: issue 19). node.ts delegates to this; lvstores.ts examines what it adds.
import { BaseBdev } from '../bdev/baseBdev.ts';
import type { BlockDevice } from '../device/blockDevice.ts';
import { MemoryDevice } from '../device/memoryDevice.ts';
import { QueuedDevice } from '../device/queuedDevice.ts';
import { fail, fromDeviceError } from '../errors.ts';
import { log } from '../log.ts';
import type { Runtime } from '../runtime.ts';
import { BdevListChanges, type SpdkConfig, assertBdevNameFree, bdevConfig, openAioDevice } from './baseBdevs.ts';
import type { CopyService } from './copies.ts';
import type { LvstoreLifecycle } from './lvstores.ts';
import type { NodeEvent } from './nodeEvents.ts';
import type { Registry } from './registry.ts';

export interface BaseBdevHost {
  readonly registry: Registry;
  readonly runtime: Runtime;
  readonly copies: CopyService;
  readonly lvstores: LvstoreLifecycle;
  /** Saves the bdev list (serve.ts: lvnode-config.json); rejects when it cannot. */
  readonly onBaseBdevsChanged: (config: SpdkConfig) => Promise<void>;
  emit(event: NodeEvent): void;
}

export class BaseBdevLifecycle {
  /** Base-bdev creations and deletions, one at a time: each saves the list, then applies it. */
  private readonly listChanges = new BdevListChanges();
  private mallocCount = 0;

  constructor(private readonly host: BaseBdevHost) {}

  /**
   * Saves the bdev list (SPDK config form). A list that cannot be saved fails the change before
   * it is made: -28 when the file system is full.
   */
  private async saveList(config: SpdkConfig, what: string): Promise<void> {
    try {
      await this.host.onBaseBdevsChanged(config);
    } catch (error) {
      throw fromDeviceError(error, `${what}: the bdev list could not be saved, so nothing changed`);
    }
  }

  private async add(bdev: BaseBdev): Promise<string> {
    const { registry } = this.host;
    try {
      await this.listChanges.run(async () => {
        assertBdevNameFree(registry, bdev.name);
        // Saved first, registered after: a bdev the saved list does not name would be gone after
        // a restart, and its lvstore with it; a failed save leaves the node as it was.
        if (!bdev.external) await this.saveList(bdevConfig(registry, { adding: bdev }), `bdev ${bdev.name} not created`);
        registry.bdevs.set(bdev.name, bdev);
      });
    } catch (error) {
      // Not ours to close when the embedder attached it; a file we opened is released (its lock too).
      if (!bdev.external) await bdev.device.close().catch(() => undefined);
      throw error;
    }
    this.host.emit({ type: 'bdev_created', name: bdev.name, kind: bdev.kind });
    log('info', 'bdev created', { bdev: bdev.name, kind: bdev.kind, sizeBytes: bdev.device.sizeBytes });
    await this.host.lvstores.examine(bdev);
    return bdev.name;
  }

  createMalloc(options: { name?: string; numBlocks: number; blockSize: number; uuid?: string }): Promise<string> {
    const { registry, runtime } = this.host;
    // SPDK's default names: Malloc0, Malloc1, … counting every malloc bdev made, skipping taken names.
    let name = options.name;
    while (name === undefined || (options.name === undefined && registry.bdevNameTaken(name))) name = `Malloc${this.mallocCount++}`;
    assertBdevNameFree(registry, name);
    if (options.numBlocks < 1) fail('EINVAL', 'num_blocks must be at least 1');
    const device = new QueuedDevice(new MemoryDevice(options.numBlocks * options.blockSize, options.blockSize));
    return this.add(new BaseBdev({ name, uuid: options.uuid ?? runtime.uuid(), kind: 'malloc', device, readOnlyDevice: false }));
  }

  /**
   * Attaches a block device the caller opened as a base bdev (kind malloc in listings): for
   * embedding lvnode, and for tests that put a simulated, fault-injecting device under a node.
   */
  attachDevice(name: string, device: BlockDevice): Promise<string> {
    assertBdevNameFree(this.host.registry, name);
    return this.add(new BaseBdev({ name, uuid: this.host.runtime.uuid(), kind: 'malloc', device: new QueuedDevice(device), readOnlyDevice: false, external: true }));
  }

  async createAio(request: { name: string; filename: string; blockSize: number; readOnly: boolean; uuid?: string }): Promise<string> {
    const { device, filename } = await openAioDevice(this.host.registry, request);
    return this.add(
      new BaseBdev({
        name: request.name,
        uuid: request.uuid ?? this.host.runtime.uuid(),
        kind: 'aio',
        device,
        filename,
        readOnlyDevice: request.readOnly,
      }),
    );
  }

  /**
   * Deletes a base bdev. The new list is saved first: a delete that cannot be recorded is refused
   * (-28 on a full file system) with the bdev, its lvstore and the saved list as they were, so the
   * node and a restart never disagree about it. Should the lvstore then fail to unload, the bdev
   * stays and goes back into the saved list.
   */
  async delete(nameOrUuid: string, kind: BaseBdev['kind']): Promise<void> {
    const { registry, lvstores } = this.host;
    const bdev = registry.baseBdev(nameOrUuid);
    const name = bdev.name;
    if (bdev.kind !== kind) fail('ENODEV', `bdev ${name} is not a ${kind} bdev`);
    const operation = `bdev_${kind}_delete`;
    await this.listChanges.run(async () => {
      if (registry.bdevs.get(name) !== bdev) fail('ENODEV', `bdev ${name} does not exist`);
      const claimer = lvstores.lvstoreOn(name);
      if (!claimer && bdev.claims.writer() !== undefined) fail('EBUSY', `bdev ${name} is getting an lvstore`);
      // Its lvstore does not keep it (it is unloaded with it), nor do copies to it (stopped first).
      bdev.claims.assertDeletable(name, claimer?.claim);
      if (claimer) lvstores.assertUnloadable(claimer);
      if (!bdev.external) await this.saveList(bdevConfig(registry, { removing: name }), `bdev ${name} not deleted`);
      // As SPDK: deleting the base bdev of an lvstore hot-removes it — the lvstore and its lvols
      // are unloaded (closed, not erased: a file bdev attached again brings them back).
      try {
        if (claimer) await lvstores.unload(claimer, operation);
      } catch (error) {
        if (!bdev.external) {
          await this.host.onBaseBdevsChanged(bdevConfig(registry)).catch((saveError: unknown) =>
            log('error', 'bdev kept (its lvstore did not unload) but the bdev list could not be saved again: it lacks this bdev until the next save', {
              bdev: name,
              error: String(saveError),
            }),
          );
        }
        throw error;
      }
      await this.host.copies.stopInvolving({ baseBdev: name }, operation);
      registry.bdevs.delete(name);
      lvstores.damaged.delete(name);
      lvstores.conflicting.delete(name);
    });
    await bdev.device.close();
    this.host.emit({ type: 'bdev_deleted', name });
    log('info', 'bdev deleted', { bdev: name });
  }
}
