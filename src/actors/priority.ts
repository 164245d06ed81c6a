// The priority router: an operation that conflicts with checksums validates, preempts, works, re-queues.
//
// SPEC §6.5 and §6.6. An operation holds the lvols it touches (so no registration slips in),
// runs every check it can make without touching them, and only then preempts the walks running
// on them, waiting at most one cluster step each. After its work, walks it preempted whose
// snapshot is still there and still valid are re-queued to resume by themselves; their register
// callers already got "Interrupted system call" naming the operation.
import { loopYielder } from '../store/format.ts';
import { KeyedMutex } from './keyedMutex.ts';
import type { LvolActor } from './lvolActor.ts';

export interface PriorityOperation<T> {
  /** The RPC name, as the preempted register callers see it ("preempted by bdev_lvol_delete"). */
  readonly operation: string;
  /** The lvol ids the operation touches; computed again once their locks are held. */
  readonly touched: () => string[];
  /** Throws what the operation would refuse, before anything is preempted. */
  readonly validate?: () => void;
  readonly work: () => Promise<T>;
  /** Re-queue preempted walks afterwards (false for shutdown and lvstore unload). */
  readonly requeue?: boolean;
  /**
   * Touches a whole lvstore or the node (delete, unload, shutdown): it takes the whole lock, and
   * its lvols are computed once that is held, rather than locked one by one.
   */
  readonly whole?: boolean;
}

export class PriorityRouter {
  /** Held by priority operations and by registrations while they start. */
  readonly locks = new KeyedMutex();

  constructor(private readonly actorOf: (lvolId: string) => LvolActor | undefined) {}

  async run<T>(op: PriorityOperation<T>): Promise<T> {
    if (op.whole) return this.locks.runWhole(() => this.locked(op, op.touched()));
    for (;;) {
      const ids = op.touched();
      const outcome = await this.locks.run(ids, async () => {
        if (!sameMembers(ids, op.touched())) return { retry: true as const };
        return { retry: false as const, value: await this.locked(op, ids) };
      });
      if (!outcome.retry) return outcome.value;
    }
  }

  /** With the lvols `ids` held: validate, preempt their walks, work, re-queue. */
  private async locked<T>(op: PriorityOperation<T>, ids: readonly string[]): Promise<T> {
    op.validate?.();
    const preempted: LvolActor[] = [];
    // In slices: an lvstore's delete preempts 100,000 lvols, nearly all of them idle.
    const pause = loopYielder(2);
    for (let index = 0; index < ids.length; index++) {
      const actor = this.actorOf(ids[index]!);
      if (actor && (await actor.preempt(op.operation))) preempted.push(actor);
      if (index % 64 === 63) await pause();
    }
    const requeue = op.requeue ?? true;
    if (requeue) for (const actor of preempted) actor.expectResume();
    try {
      return await op.work();
    } finally {
      // Deleted lvols are gone from the registry; invalidated walks are no longer aborted.
      if (requeue) for (const actor of preempted) if (this.actorOf(actor.lvolId) === actor) actor.resumeInBackground();
    }
  }
}

/** Linear: shutdown touches every lvol of the node (100,000 of them is ordinary). */
function sameMembers(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const members = new Set(b);
  return a.every((item) => members.has(item));
}
