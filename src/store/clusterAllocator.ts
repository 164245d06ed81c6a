// Tracks which physical data clusters of an lvstore are in use; hands out the lowest free one first.
import { StorageError } from '../errors.ts';

export class ClusterAllocator {
  private used: Uint8Array;
  private freeCount: number;
  // Lowest index that might be free: allocation scans from here, so a fresh store fills in order.
  private searchFrom: number;

  constructor(
    readonly firstDataCluster: number,
    private total: number,
  ) {
    const clusterTotal = total;
    this.used = new Uint8Array(clusterTotal);
    this.used.fill(1, 0, firstDataCluster);
    this.freeCount = clusterTotal - firstDataCluster;
    this.searchFrom = firstDataCluster;
  }

  get free(): number {
    return this.freeCount;
  }

  get clusterTotal(): number {
    return this.total;
  }

  get dataClusterTotal(): number {
    return this.total - this.firstDataCluster;
  }

  /** The device grew (bdev_lvol_grow_lvstore): clusters up to `clusterTotal` are free now. */
  grow(clusterTotal: number): void {
    if (clusterTotal <= this.total) return;
    const used = new Uint8Array(clusterTotal);
    used.set(this.used);
    this.freeCount += clusterTotal - this.total;
    this.used = used;
    this.total = clusterTotal;
  }

  /** Marks a cluster in use while loading existing metadata. */
  markUsed(physicalCluster: number): void {
    if (physicalCluster < this.firstDataCluster || physicalCluster >= this.clusterTotal) {
      throw new Error(`physical cluster ${physicalCluster} is outside the data area`);
    }
    if (this.used[physicalCluster]) throw new Error(`physical cluster ${physicalCluster} is owned twice`);
    this.used[physicalCluster] = 1;
    this.freeCount--;
  }

  /** Takes `count` clusters at once, or none: ENOSPC when there are not enough. */
  allocate(count: number): number[] {
    if (count > this.freeCount) {
      throw new StorageError('ENOSPC', { wire: 'internal', detail: `need ${count} clusters, ${this.freeCount} free` });
    }
    const taken: number[] = [];
    for (let index = this.searchFrom; taken.length < count && index < this.clusterTotal; index++) {
      if (!this.used[index]) {
        this.used[index] = 1;
        taken.push(index);
      }
    }
    this.freeCount -= taken.length;
    this.searchFrom = (taken.at(-1) ?? this.searchFrom - 1) + 1;
    return taken;
  }

  release(physicalClusters: Iterable<number>): void {
    for (const physicalCluster of physicalClusters) {
      if (physicalCluster === 0) continue;
      if (!this.used[physicalCluster]) throw new Error(`physical cluster ${physicalCluster} released twice`);
      this.used[physicalCluster] = 0;
      this.freeCount++;
      if (physicalCluster < this.searchFrom) this.searchFrom = physicalCluster;
    }
  }
}
