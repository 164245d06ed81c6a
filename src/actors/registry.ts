// Names to objects: base bdevs by name, lvstores by UUID or name, lvols by UUID or `lvs/lvol` alias,
// and every one of them as a `Bdev` through one lookup (`findBdev`), as SPDK's spdk_bdev_get_by_name.
import type { Bdev } from '../bdev/bdev.ts';
import type { BaseBdev } from '../bdev/baseBdev.ts';
import type { BdevHold } from '../bdev/bdevClaims.ts';
import { BdevIoStates, systemBdevIoClock } from '../bdev/bdevIo.ts';
import { type LvolBdev, LvolBdevs } from '../bdev/lvolBdev.ts';
import { fail } from '../errors.ts';
import { loopYielder } from '../store/format.ts';
import type { Lvstore } from '../store/lvstore.ts';
import type { LvolRecord } from '../store/metadata.ts';
import type { LvolActor } from './lvolActor.ts';

export type { BaseBdev };
export type { BaseBdevKind } from '../bdev/baseBdev.ts';

export interface LvstoreEntry {
  readonly store: Lvstore;
  readonly bdevName: string;
  /** The lvstore's exclusive_write claim on the bdev it lives on; released when it leaves the node. */
  readonly claim: BdevHold;
  readonly actors: Map<string, LvolActor>;
}

export interface ResolvedLvol {
  readonly entry: LvstoreEntry;
  readonly lvol: LvolRecord;
  readonly actor: LvolActor;
}

export class Registry {
  readonly bdevs = new Map<string, BaseBdev>();
  /**
   * Bdevs of kinds that a module adds and removes itself (an NVMe initiator's namespaces), by
   * name: `findBdev` finds them, and their names are taken as base bdev names are.
   */
  readonly moduleBdevs = new Map<string, Bdev>();
  readonly lvstores = new Map<string, LvstoreEntry>();
  /** Lvols as bdevs, and their claims, kept between lookups of the (short-lived) bdev objects. */
  readonly lvolBdevs = new LvolBdevs((lvolId) => {
    const { entry, lvol } = this.lvol(lvolId);
    return { store: entry.store, lvol };
  });

  /** Rate limits and I/O statistics per bdev name (bdev_set_qos_limit, bdev_get_iostat); the node sets its clock. */
  readonly io = new BdevIoStates(systemBdevIoClock);

  /**
   * `findBdev` for a consumer that does I/O on the bdev (NBD, NVMe-oF, copy destinations, RPC
   * I/O): every request of the answer passes the bdev's limits and is counted. The lvstore on a
   * bdev reads and writes below it, through `claimedDevice`, as SPDK's blobstore does below QoS.
   */
  openBdev(name: string): Bdev {
    return this.io.meter(this.findBdev(name));
  }

  /** Whether `name` still finds the very bdev `uuid` names: for dropping the io state of gone bdevs. */
  bdevExists(name: string, uuid: string): boolean {
    return this.lookupBdev(name)?.uuid === uuid;
  }

  /**
   * The one lookup of a bdev: a base or module bdev by name, an lvol by UUID or `lvs/lvol`, any
   * of them by UUID. O(1) in the number of lvols (a pass over the few lvstores and base bdevs).
   */
  findBdev(name: string): Bdev {
    return this.lookupBdev(name) ?? fail('ENODEV', `bdev ${name} does not exist`);
  }

  /** `findBdev`, answering undefined where it throws (an esnap clone's reads ask on every miss). */
  lookupBdev(name: string): Bdev | undefined {
    const named = this.bdevs.get(name) ?? this.moduleBdevs.get(name);
    if (named) return named;
    const resolved = this.findLvol(name);
    if (resolved) return this.lvolBdev(resolved.lvol.id);
    for (const bdev of this.bdevs.values()) if (bdev.uuid === name) return bdev;
    for (const bdev of this.moduleBdevs.values()) if (bdev.uuid === name) return bdev;
    return undefined;
  }

  /** The bdev of an lvol (by UUID): cheap, made per call, its claims kept in `lvolBdevs`. */
  lvolBdev(lvolId: string): LvolBdev {
    return this.lvolBdevs.bdev(lvolId);
  }

  /** Every bdev: base, module, then every lvol with an actor (an object each: for small nodes and tests). */
  bdevList(): Bdev[] {
    const out: Bdev[] = [...this.bdevs.values(), ...this.moduleBdevs.values()];
    for (const { lvol } of this.allLvols()) out.push(this.lvolBdev(lvol.id));
    return out;
  }

  /** A base bdev by name or UUID, for what only base bdevs have (their device, their lifecycle); consumers use `findBdev`. */
  baseBdev(name: string): BaseBdev {
    return this.bdevs.get(name) ?? [...this.bdevs.values()].find((bdev) => bdev.uuid === name) ?? fail('ENODEV', `bdev ${name} does not exist`);
  }

  /** Exactly one of uuid / name selects an lvstore (SPDK: both or neither is EINVAL). */
  lvstore(selector: { uuid?: string | undefined; lvs_name?: string | undefined }): LvstoreEntry {
    if ((selector.uuid === undefined) === (selector.lvs_name === undefined)) {
      fail('EINVAL', 'give exactly one of uuid and lvs_name');
    }
    if (selector.uuid !== undefined) {
      return this.lvstores.get(selector.uuid) ?? fail('ENODEV', `lvstore ${selector.uuid} does not exist`);
    }
    return this.lvstoreByName(selector.lvs_name!) ?? fail('ENODEV', `lvstore ${selector.lvs_name} does not exist`);
  }

  lvstoreByName(name: string): LvstoreEntry | undefined {
    for (const entry of this.lvstores.values()) if (entry.store.name === name) return entry;
    return undefined;
  }

  /** Finds an lvol by UUID (its bdev name) or by its `lvs/lvol` alias. */
  lvol(name: string): ResolvedLvol {
    return this.findLvol(name) ?? fail('ENODEV', `lvol ${name} does not exist`);
  }

  /** `lvol`, answering undefined where `lvol` throws. */
  findLvol(name: string): ResolvedLvol | undefined {
    const slash = name.indexOf('/');
    if (slash >= 0) {
      const entry = this.lvstoreByName(name.slice(0, slash));
      const lvol = entry?.store.findLvolByName(name.slice(slash + 1));
      // An lvol whose creation is not yet durable has no actor yet: it does not exist for callers.
      const actor = lvol ? entry?.actors.get(lvol.id) : undefined;
      if (entry && lvol && actor) return { entry, lvol, actor };
    } else {
      for (const entry of this.lvstores.values()) {
        const actor = entry.actors.get(name);
        if (actor) return { entry, lvol: entry.store.lvol(name), actor };
      }
    }
    return undefined;
  }

  /**
   * `lvol` for readers: the alias is matched against durable names (a rename in flight is not
   * seen, and one that fails never was), and the record returned is the durable one.
   */
  durableLvol(name: string): ResolvedLvol {
    const slash = name.indexOf('/');
    if (slash >= 0) {
      const lvsName = name.slice(0, slash);
      for (const entry of this.lvstores.values()) {
        if (entry.store.durableName !== lvsName) continue;
        const lvol = entry.store.durableLvolByName(name.slice(slash + 1));
        const actor = lvol ? entry.actors.get(lvol.id) : undefined;
        if (lvol && actor) return { entry, lvol, actor };
      }
    } else {
      for (const entry of this.lvstores.values()) {
        const actor = entry.actors.get(name);
        const lvol = actor ? entry.store.durableLvol(name) : undefined;
        if (actor && lvol) return { entry, lvol, actor };
      }
    }
    return fail('ENODEV', `lvol ${name} does not exist`);
  }

  /** True when `name` is taken by any bdev: base bdevs and lvol UUIDs share one namespace. */
  bdevNameTaken(name: string): boolean {
    if (this.bdevs.has(name) || this.moduleBdevs.has(name)) return true;
    for (const entry of this.lvstores.values()) if (entry.actors.has(name)) return true;
    return false;
  }

  /** How many lvols have an actor: what allLvols yields, counted without visiting them. */
  get lvolCount(): number {
    let count = 0;
    for (const entry of this.lvstores.values()) count += entry.actors.size;
    return count;
  }

  /**
   * Visits every lvol as allLvols does, with a turn of the event loop whenever `sliceMs` have
   * passed: one pass over 100,000 lvols is ~100 ms, longer than a request may hold the loop
   * (SPEC §10). An lvol deleted before its turn is not visited. `visit` returns false to stop.
   */
  async forEachLvolInSlices(visit: (resolved: ResolvedLvol) => boolean | void, sliceMs = 2): Promise<void> {
    const pause = loopYielder(sliceMs);
    let visited = 0;
    for (const entry of [...this.lvstores.values()]) {
      const lvols = entry.store.record.lvols;
      // Map iteration is live: lvols created meanwhile are visited, deleted ones skipped.
      for (const [id, actor] of entry.actors) {
        const lvol = lvols.get(id);
        if (lvol && visit({ entry, lvol, actor }) === false) return;
        // The clock is read every 64 lvols: reading it per lvol was a quarter of a pass.
        if (++visited % 64 === 0) {
          const turn = pause();
          if (turn) {
            await turn;
            if (this.lvstores.get(entry.store.id) !== entry) break; // the lvstore went away meanwhile
          }
        }
      }
    }
  }

  *allLvols(): Generator<ResolvedLvol> {
    for (const entry of this.lvstores.values()) {
      for (const lvol of entry.store.record.lvols.values()) {
        const actor = entry.actors.get(lvol.id);
        if (actor) yield { entry, lvol, actor };
      }
    }
  }
}
