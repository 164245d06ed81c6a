// The torture test's oracle: a plain byte array per volume and snapshot, changed by the test only.
//
// Each volume holds what a read must return now (`bytes`). Where more than one content is
// allowed, per 512-byte block, it also holds candidates:
// - `uncertain`: other contents a read may return right now (after a TRIM, or where a request was
//   cut by a crash). The next check sees what the node returns, and the model takes it.
// - `volatile`: other contents a power loss may leave (written since the last FLUSH that covers
//   the block). A FLUSH or a FUA write removes them; a power loss collapses them to what is read.
// `mustOwn` and `mayOwn` bound the clusters the volume owns (bdev_lvol_get_fragmap): at least
// those it wrote since it last got a new parent or was snapshotted (set_parent and the checksum
// rely on them); at most those it wrote, was given by a thick create, grow, inflate or decouple,
// or inherited in a merge.

export const blockBytes = 512;
const zeroBlock = Buffer.alloc(blockBytes);

export interface VolumeModel {
  readonly name: string;
  readonly snapshot: boolean;
  parent: string | null;
  bytes: Buffer;
  volatile: Map<number, Buffer[]>;
  uncertain: Map<number, Buffer[]>;
  mustOwn: Set<number>;
  mayOwn: Set<number>;
}

export type CheckKind = 'step' | 'processCrash' | 'powerLoss';

/** A block that read as none of its allowed contents. */
export interface Violation {
  volume: string;
  block: number;
  actual: Buffer;
  allowed: Buffer[];
}

function addCandidate(map: Map<number, Buffer[]>, block: number, content: Buffer, current?: Buffer): void {
  if (current?.equals(content)) return;
  const list = map.get(block);
  if (!list) map.set(block, [content]);
  else if (!list.some((candidate) => candidate.equals(content))) list.push(content);
}

function copyCandidates(map: Map<number, Buffer[]>, fromBlock = 0, toBlock = Number.POSITIVE_INFINITY): Map<number, Buffer[]> {
  const out = new Map<number, Buffer[]>();
  for (const [block, list] of map) if (block >= fromBlock && block < toBlock) out.set(block, [...list]);
  return out;
}

/** How many gone contents (deleted volumes, refused writes) are kept to name a stray block's origin. */
const rememberedMax = 8;

export class Model {
  readonly volumes = new Map<string, VolumeModel>();
  /** Contents no volume should show any more, newest last: only to explain a failure. */
  private readonly remembered: Array<{ label: string; bytes: Buffer }> = [];

  constructor(readonly clusterBytes: number) {}

  volume(name: string): VolumeModel {
    const found = this.volumes.get(name);
    if (!found) throw new Error(`model has no volume ${name}`);
    return found;
  }

  children(name: string): VolumeModel[] {
    return [...this.volumes.values()].filter((volume) => volume.parent === name);
  }

  /** The volume and every ancestor, nearest first. */
  chain(name: string): VolumeModel[] {
    const out: VolumeModel[] = [];
    for (let at: VolumeModel | undefined = this.volume(name); at; at = at.parent ? this.volumes.get(at.parent) : undefined) out.push(at);
    return out;
  }

  clusterCount(volume: VolumeModel): number {
    return volume.bytes.length / this.clusterBytes;
  }

  /** A new lvol: zeros (thin or thick, crash or not: never another volume's old bytes). */
  create(name: string, sizeBytes: number, thick: boolean): void {
    const volume: VolumeModel = {
      name,
      snapshot: false,
      parent: null,
      bytes: Buffer.alloc(sizeBytes),
      volatile: new Map(),
      uncertain: new Map(),
      mustOwn: new Set(),
      mayOwn: new Set(),
    };
    if (thick) this.ownAll(volume, 0, sizeBytes / this.clusterBytes, true);
    this.volumes.set(name, volume);
  }

  /** Bytes set (or zeroed). Durable now with FUA; otherwise a power loss may leave the old content. */
  write(name: string, offsetBytes: number, data: Buffer, options: { fua: boolean; allocates: boolean }): void {
    const volume = this.volume(name);
    for (let position = 0; position < data.length; position += blockBytes) {
      const block = (offsetBytes + position) / blockBytes;
      const old = volume.bytes.subarray(offsetBytes + position, offsetBytes + position + blockBytes);
      if (options.fua) volume.volatile.delete(block);
      else addCandidate(volume.volatile, block, Buffer.from(old), data.subarray(position, position + blockBytes));
    }
    data.copy(volume.bytes, offsetBytes);
    this.forClusters(offsetBytes, data.length, (cluster) => {
      volume.mayOwn.add(cluster);
      if (options.allocates) volume.mustOwn.add(cluster);
    });
  }

  /** A write cut by a crash: each block holds its old content or the new one. */
  interruptedWrite(name: string, offsetBytes: number, data: Buffer): void {
    const volume = this.volume(name);
    this.remember(`the write to ${name} @${offsetBytes} a crash cut`, data);
    for (let position = 0; position < data.length; position += blockBytes) {
      const block = (offsetBytes + position) / blockBytes;
      addCandidate(volume.uncertain, block, Buffer.from(data.subarray(position, position + blockBytes)), this.blockOf(volume, block));
    }
    this.forClusters(offsetBytes, data.length, (cluster) => volume.mayOwn.add(cluster));
  }

  /** TRIM: unspecified until written again, but only the old content, the parent chain's, or zeros. */
  trim(name: string, offsetBytes: number, lengthBytes: number): void {
    const volume = this.volume(name);
    const parent = volume.parent ? this.volume(volume.parent) : undefined;
    for (let position = 0; position < lengthBytes; position += blockBytes) {
      const block = (offsetBytes + position) / blockBytes;
      const current = this.blockOf(volume, block);
      addCandidate(volume.uncertain, block, zeroBlock, current);
      if (parent && (block + 1) * blockBytes <= parent.bytes.length) addCandidate(volume.uncertain, block, Buffer.from(this.blockOf(parent, block)), current);
    }
    // A whole cluster may be given back.
    this.forClusters(offsetBytes, lengthBytes, (cluster) => volume.mustOwn.delete(cluster));
  }

  /** FLUSH on a volume: everything it reads is durable, its own blocks and its ancestors'. */
  flush(name: string): void {
    for (const volume of this.chain(name)) volume.volatile.clear();
  }

  snapshot(name: string, snapshotName: string): void {
    const volume = this.volume(name);
    this.volumes.set(snapshotName, {
      name: snapshotName,
      snapshot: true,
      parent: volume.parent,
      bytes: Buffer.from(volume.bytes),
      volatile: copyCandidates(volume.volatile),
      uncertain: new Map(),
      mustOwn: volume.mustOwn,
      mayOwn: volume.mayOwn,
    });
    volume.parent = snapshotName;
    volume.mustOwn = new Set();
    volume.mayOwn = new Set();
  }

  clone(snapshotName: string, cloneName: string): void {
    const snapshot = this.volume(snapshotName);
    this.volumes.set(cloneName, {
      name: cloneName,
      snapshot: false,
      parent: snapshotName,
      bytes: Buffer.from(snapshot.bytes),
      volatile: copyCandidates(snapshot.volatile),
      uncertain: new Map(),
      mustOwn: new Set(),
      mayOwn: new Set(),
    });
  }

  /** Delete; with one clone it merges into it. Either way every remaining volume reads as before. */
  delete(name: string): void {
    const volume = this.volume(name);
    this.remember(`deleted ${name}`, volume.bytes);
    for (const child of this.children(name)) {
      child.parent = volume.parent;
      for (const cluster of volume.mayOwn) if (cluster < this.clusterCount(child)) child.mayOwn.add(cluster);
    }
    this.volumes.delete(name);
  }

  /** Bytes below min(old, new) stay; bytes above the old size read zeros. A thick volume owns what it grew. */
  resize(name: string, sizeBytes: number, thick: boolean): void {
    const volume = this.volume(name);
    if (thick && sizeBytes > volume.bytes.length) this.ownAll(volume, volume.bytes.length / this.clusterBytes, sizeBytes / this.clusterBytes, false);
    const bytes = Buffer.alloc(sizeBytes);
    volume.bytes.copy(bytes, 0, 0, Math.min(sizeBytes, volume.bytes.length));
    const keptBlocks = Math.min(sizeBytes, volume.bytes.length) / blockBytes;
    volume.bytes = bytes;
    volume.volatile = copyCandidates(volume.volatile, 0, keptBlocks);
    volume.uncertain = copyCandidates(volume.uncertain, 0, keptBlocks);
    for (const owned of [volume.mustOwn, volume.mayOwn]) for (const cluster of owned) if (cluster >= sizeBytes / this.clusterBytes) owned.delete(cluster);
  }

  /**
   * Inflate and decouple: the bytes stay; the parent goes. Inflate owns every cluster, decouple
   * what its ancestors may own. `known: false` when a crash leaves open whether it happened.
   */
  detachParent(name: string, mode: 'inflate' | 'decouple', known = true): void {
    const volume = this.volume(name);
    if (mode === 'inflate') {
      this.ownAll(volume, 0, this.clusterCount(volume), known);
    } else {
      for (const ancestor of this.chain(name).slice(1)) for (const cluster of ancestor.mayOwn) if (cluster < this.clusterCount(volume)) volume.mayOwn.add(cluster);
    }
    if (known) volume.parent = null;
  }

  private ownAll(volume: VolumeModel, fromCluster: number, toCluster: number, surely: boolean): void {
    for (let cluster = fromCluster; cluster < toCluster; cluster++) {
      volume.mayOwn.add(cluster);
      if (surely) volume.mustOwn.add(cluster);
    }
  }

  /** set_parent: the clusters the volume owns keep their bytes; the rest read the new parent's. */
  setParent(name: string, parentName: string, owned: ReadonlySet<number>): void {
    const volume = this.volume(name);
    const parent = this.volume(parentName);
    const blocksPerCluster = this.clusterBytes / blockBytes;
    for (let cluster = 0; cluster < this.clusterCount(volume); cluster++) {
      if (owned.has(cluster)) continue;
      const start = cluster * this.clusterBytes;
      parent.bytes.copy(volume.bytes, start, start, start + this.clusterBytes);
      for (let block = cluster * blocksPerCluster; block < (cluster + 1) * blocksPerCluster; block++) {
        volume.volatile.delete(block);
        const inherited = parent.volatile.get(block);
        if (inherited) volume.volatile.set(block, [...inherited]);
      }
    }
    volume.parent = parentName;
  }

  /**
   * Checks what a volume reads against the model and takes what it read where more than one
   * content was allowed. After a power loss the volatile candidates are allowed too, and then
   * dropped: everything on the restarted device is durable.
   */
  check(name: string, actual: Buffer, kind: CheckKind): Violation[] {
    const volume = this.volume(name);
    if (actual.length !== volume.bytes.length) throw new Error(`${name}: read ${actual.length} bytes, the model has ${volume.bytes.length}`);
    const violations: Violation[] = [];
    const loose = volume.uncertain.size > 0 || (kind === 'powerLoss' && volume.volatile.size > 0);
    const same = actual.equals(volume.bytes);
    if (!same) {
      if (!loose) return this.strictViolations(volume, actual);
      for (let block = 0; block < actual.length / blockBytes; block++) {
        const content = actual.subarray(block * blockBytes, (block + 1) * blockBytes);
        const current = this.blockOf(volume, block);
        if (content.equals(current)) continue;
        const allowed = [...(volume.uncertain.get(block) ?? []), ...(kind === 'powerLoss' ? (volume.volatile.get(block) ?? []) : [])];
        if (!allowed.some((candidate) => candidate.equals(content))) {
          violations.push({ volume: name, block, actual: Buffer.from(content), allowed: [Buffer.from(current), ...allowed] });
        }
      }
      if (violations.length > 0) return violations;
    }
    this.settle(volume, actual, kind, same);
    return [];
  }

  private strictViolations(volume: VolumeModel, actual: Buffer): Violation[] {
    const violations: Violation[] = [];
    for (let block = 0; block < actual.length / blockBytes; block++) {
      const content = actual.subarray(block * blockBytes, (block + 1) * blockBytes);
      const current = this.blockOf(volume, block);
      if (!content.equals(current)) violations.push({ volume: volume.name, block, actual: Buffer.from(content), allowed: [Buffer.from(current)] });
    }
    return violations;
  }

  /** The model takes what was read; contents that were possible stay possible after a power loss. */
  private settle(volume: VolumeModel, actual: Buffer, kind: CheckKind, same: boolean): void {
    if (kind === 'powerLoss') {
      volume.volatile.clear();
    } else if (!same) {
      for (const [block, candidates] of volume.uncertain) {
        const content = actual.subarray(block * blockBytes, (block + 1) * blockBytes);
        for (const candidate of [this.blockOf(volume, block), ...candidates]) addCandidate(volume.volatile, block, Buffer.from(candidate), content);
      }
    }
    volume.uncertain.clear();
    if (!same) actual.copy(volume.bytes);
  }

  /** Keeps bytes that must never be read again (a refused write's, a deleted volume's) to name them in a failure. */
  remember(label: string, bytes: Buffer): void {
    this.remembered.push({ label, bytes });
    if (this.remembered.length > rememberedMax) this.remembered.shift();
  }

  /** Where a block's content appears in the model (to say whose bytes a wrong block holds). */
  whereIs(content: Buffer): string[] {
    const out: string[] = [];
    if (content.equals(zeroBlock)) return ['zeros'];
    const sources = [...[...this.volumes.values()].map((volume) => ({ label: volume.name, bytes: volume.bytes })), ...this.remembered];
    for (const { label, bytes } of sources) {
      for (let block = 0; block < bytes.length / blockBytes && out.length < 4; block++) {
        if (bytes.subarray(block * blockBytes, (block + 1) * blockBytes).equals(content)) out.push(`${label} block ${block}`);
      }
    }
    return out;
  }

  blockOf(volume: VolumeModel, block: number): Buffer {
    return volume.bytes.subarray(block * blockBytes, (block + 1) * blockBytes);
  }

  private forClusters(offsetBytes: number, lengthBytes: number, visit: (cluster: number) => void): void {
    if (lengthBytes <= 0) return;
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.clusterBytes);
    for (let cluster = Math.floor(offsetBytes / this.clusterBytes); cluster <= last; cluster++) visit(cluster);
  }
}
