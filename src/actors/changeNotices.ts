// Turns durable metadata commits into the node's change notifications (SPEC §8), so a viewer can
// follow renames, resizes, re-parenting and allocation without polling.
//
// Creates and deletes are announced where actors come and go (node.ts); checksum changes by the
// checksum service. Cluster allocation happens on the write path, up to thousands of times a
// second: it is coalesced to one `lvol_changed {change: 'clusters'}` per lvol per interval.
import type { MetadataChange } from '../store/metadata.ts';

export type ChangeNotice =
  | { type: 'lvstore_changed'; uuid: string; change: string }
  | { type: 'lvol_changed'; uuid: string; lvstore: string; change: string };

export const clusterNoticeIntervalMs = 1000;

export class ChangeNotices {
  private readonly clustersChanged = new Map<string, string>(); // lvol id -> lvstore id
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly emit: (notice: ChangeNotice) => void) {}

  /** What one durable commit of lvstore `lvstoreId` means to subscribers. */
  committed(lvstoreId: string, changes: readonly MetadataChange[]): void {
    for (const change of changes) {
      const notice = noticeOf(lvstoreId, change);
      if (notice === 'clusters') this.noteClusters(lvstoreId, (change as { id: string }).id);
      else if (notice) this.emit(notice);
    }
  }

  /** Drops pending allocation notices (the node is closing). */
  dispose(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.clustersChanged.clear();
  }

  private noteClusters(lvstoreId: string, lvolId: string): void {
    this.clustersChanged.set(lvolId, lvstoreId);
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const changed = [...this.clustersChanged];
      this.clustersChanged.clear();
      for (const [uuid, lvstore] of changed) this.emit({ type: 'lvol_changed', uuid, lvstore, change: 'clusters' });
    }, clusterNoticeIntervalMs);
    this.timer.unref();
  }
}

function noticeOf(lvstoreId: string, change: MetadataChange): ChangeNotice | 'clusters' | undefined {
  const lvol = (uuid: string): ChangeNotice => ({ type: 'lvol_changed', uuid, lvstore: lvstoreId, change: change.type });
  switch (change.type) {
    case 'lvstore.rename':
    case 'lvstore.grow':
      return { type: 'lvstore_changed', uuid: lvstoreId, change: change.type };
    case 'lvol.rename':
    case 'lvol.resize':
    case 'lvol.set_read_only':
    case 'lvol.set_xattr':
    case 'lvol.set_parent':
      return lvol(change.id);
    case 'lvol.snapshot':
      // The origin now reads through the new snapshot: its parent changed.
      return lvol(change.id);
    case 'lvol.merge':
      // The snapshot's only clone takes its place in the chain.
      return lvol(change.cloneId);
    case 'cluster.allocate':
    case 'cluster.release':
      return 'clusters';
    default:
      // lvol.create / lvol.delete are announced with the actors; checksum.* by the checksum service.
      return undefined;
  }
}
