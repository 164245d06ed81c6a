// The one claim mechanism of every bdev (SPDK's bdev claims, lib/bdev/bdev.c): who holds a bdev
// and how, so "may X write it", "may it be claimed" and "may it be deleted" have one answer.
//
// - `exclusive_write`: the holder is the bdev's only writer (an lvstore on its base bdev, or on
//   an lvol for a nested lvstore). Others may still open it to read.
// - `read_many_write_none`: nobody writes while any such claim is held (an external snapshot
//   under esnap clones, the source of a copy).
// - opens (`open`): a consumer that reads, and writes unless the bdev is read-only or claimed for
//   write by someone else (an NBD export, an NVMe-oF namespace, a copy destination). Opens do not
//   exclude each other, as SPDK descriptors do not; they do block deletion (lvnode answers EBUSY
//   where SPDK would hot-remove under a client).
import { fail } from '../errors.ts';

export type ClaimType = 'exclusive_write' | 'read_many_write_none';

export interface BdevHold {
  readonly type: ClaimType | 'open';
  /** Who holds it, as a person reads it: `lvstore lvs0 (uuid)`, `NBD export vol1`. */
  readonly holder: string;
  /** Lets go; a second call does nothing. */
  release(): void;
}

export class BdevClaims {
  private readonly holds = new Set<BdevHold>();

  /** `name` is called when an error must name the bdev (an lvol may be renamed while held). */
  constructor(private readonly name: () => string) {}

  /**
   * Takes a claim, or throws EPERM naming the holder in the way (SPDK answers -1 "Operation not
   * permitted" for a claim on a claimed bdev).
   */
  claim(type: ClaimType, holder: string): BdevHold {
    for (const hold of this.holds) {
      if (hold.type === 'open') continue;
      if (type === 'exclusive_write' || hold.type === 'exclusive_write') {
        fail('EPERM', `bdev ${this.name()} is already claimed by ${hold.holder}`);
      }
    }
    return this.add(type, holder);
  }

  /** Opens it for a consumer; never refused here (the consumer checks `writer()` before writing). */
  open(holder: string): BdevHold {
    return this.add('open', holder);
  }

  /** The holder that is the bdev's only writer, if any. */
  writer(): string | undefined {
    for (const hold of this.holds) if (hold.type === 'exclusive_write') return hold.holder;
    return undefined;
  }

  /** The holder that forbids every write, if any (a `read_many_write_none` claim). */
  frozenBy(): string | undefined {
    for (const hold of this.holds) if (hold.type === 'read_many_write_none') return hold.holder;
    return undefined;
  }

  /** Throws EPERM unless `holder` (or anyone, when no writer is set) may write. */
  assertWritable(holder?: string): void {
    const writer = this.writer();
    if (writer !== undefined && writer !== holder) fail('EPERM', `bdev ${this.name()} is claimed by ${writer}; it is its only writer`);
    const frozen = this.frozenBy();
    if (frozen !== undefined) fail('EPERM', `bdev ${this.name()} is held read-only by ${frozen}`);
  }

  /** Throws EBUSY naming every holder: a held bdev is not deleted under them. */
  assertDeletable(displayName: string = this.name()): void {
    if (this.holds.size === 0) return;
    const holders = [...this.holds].map((hold) => hold.holder).join(', ');
    fail('EBUSY', `bdev ${displayName} is in use by ${holders}`);
  }

  list(): ReadonlyArray<{ type: BdevHold['type']; holder: string }> {
    return [...this.holds].map(({ type, holder }) => ({ type, holder }));
  }

  get size(): number {
    return this.holds.size;
  }

  private add(type: BdevHold['type'], holder: string): BdevHold {
    const holds = this.holds;
    const hold: BdevHold = {
      type,
      holder,
      release: () => void holds.delete(hold),
    };
    holds.add(hold);
    return hold;
  }
}
