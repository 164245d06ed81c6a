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
//   where SPDK would hot-remove under a client), unless opened `removable`: the holder lets go
//   when the bdev is deleted (a copy to it is stopped first), as SPDK consumers do on hot-remove.
// - An exclusive_write claim is refused while anyone has the bdev open (EBUSY naming them): an
//   lvstore written under an export's client would corrupt both.
import { fail } from '../errors.ts';

export type ClaimType = 'exclusive_write' | 'read_many_write_none';

export interface BdevHold {
  readonly type: ClaimType | 'open';
  /** Lets go when the bdev is deleted, so it does not block deletion (see the file's opening). */
  readonly removable: boolean;
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
  claim(type: ClaimType, holder: string, options: { removable?: boolean } = {}): BdevHold {
    for (const hold of this.holds) {
      if (hold.type === 'open') continue;
      if (type === 'exclusive_write' || hold.type === 'exclusive_write') {
        fail('EPERM', `bdev ${this.name()} is already claimed by ${hold.holder}`);
      }
    }
    if (type === 'exclusive_write') {
      const opens = [...this.holds].filter((hold) => hold.type === 'open');
      if (opens.length > 0) fail('EBUSY', `bdev ${this.name()} is in use by ${opens.map((hold) => hold.holder).join(', ')}; it cannot get an only writer`);
    }
    return this.add(type, holder, options.removable ?? false);
  }

  /** Opens it for a consumer; never refused here (the consumer's writes check `assertWritable`). */
  open(holder: string, options: { removable?: boolean } = {}): BdevHold {
    return this.add('open', holder, options.removable ?? false);
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

  /**
   * Throws EBUSY naming every holder that blocks deletion: all but the removable ones and
   * `except` (the lvstore on a base bdev, unloaded by the delete, as SPDK hot-removes it).
   */
  assertDeletable(displayName: string = this.name(), except?: BdevHold): void {
    const blocking = [...this.holds].filter((hold) => !hold.removable && hold !== except);
    if (blocking.length === 0) return;
    const holders = blocking.map((hold) => hold.holder).join(', ');
    fail('EBUSY', `bdev ${displayName} is in use by ${holders}; release it first`);
  }

  list(): ReadonlyArray<{ type: BdevHold['type']; holder: string }> {
    return [...this.holds].map(({ type, holder }) => ({ type, holder }));
  }

  get size(): number {
    return this.holds.size;
  }

  private add(type: BdevHold['type'], holder: string, removable: boolean): BdevHold {
    const holds = this.holds;
    const hold: BdevHold = {
      type,
      removable,
      holder,
      release: () => void holds.delete(hold),
    };
    holds.add(hold);
    return hold;
  }
}
