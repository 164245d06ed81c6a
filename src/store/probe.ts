// Does a device hold an lvstore? A read-only look at its first blocks, for bdev_lvol_create_lvstore
// to refuse overwriting one: lvnode's own super block (docs/format.md), damaged or not, and SPDK's
// blobstore super block (an lvstore made by SPDK or Longhorn on a device attached here).
import type { BlockDevice } from '../device/blockDevice.ts';
import { type SuperBlock, checkpointHeaderBytes, checkpointMagic, decodePayload, decodeSuperBlock, metadataLayout } from './format.ts';

/** What the first blocks of a device say about an lvstore on it. */
export type LvstoreProbe =
  | { kind: 'none' }
  /** A valid lvnode super block; `name` as of its last checkpoint, when that is readable. */
  | { kind: 'lvnode'; uuid: string; name: string | undefined }
  /** lvnode's magic, but no slot decodes (CRC, version): an lvstore all the same. */
  | { kind: 'lvnode-damaged'; reason: string }
  /** SPDK's blobstore signature; `name` and `uuid` from its super blob's xattrs, when readable. */
  | { kind: 'spdk'; bstype: string; uuid: string | undefined; name: string | undefined };

/** SPDK's blobstore pages are 4 KiB (SPDK_BS_PAGE_SIZE), its super block the first one. */
const spdkPageBytes = 4096;
const spdkSignature = 'SPDKBLOB';
/** Offsets in SPDK's packed `struct spdk_bs_super_block` (checked against a store spdk_tgt made). */
const spdkSuperBlobIdOffset = 20;
const spdkMdStartOffset = 48;
const spdkBstypeOffset = 56;
const spdkBstypeBytes = 16;
/** In `struct spdk_blob_md_page`: descriptors from byte 16 up to the `next` field at 4088. */
const spdkDescriptorsStart = 16;
const spdkDescriptorsEnd = 4088;
const spdkDescriptorXattr = 2;
/** The checkpoint bytes read for the lvstore's name: its first line (the head) sits at the front. */
const checkpointNameReadBytesMax = 1024 * 1024;

async function readAt(device: BlockDevice, offsetBytes: number, lengthBytes: number): Promise<Buffer | undefined> {
  const blockBytes = device.blockSizeBytes;
  const start = Math.floor(offsetBytes / blockBytes) * blockBytes;
  const end = Math.min(device.sizeBytes, Math.ceil((offsetBytes + lengthBytes) / blockBytes) * blockBytes);
  if (end - start < lengthBytes || start < 0) return undefined;
  const buffer = Buffer.alloc(end - start);
  await device.readInto(buffer, start);
  return buffer.subarray(offsetBytes - start, offsetBytes - start + lengthBytes);
}

/** Reads the device's first blocks; never writes. I/O errors propagate to the caller. */
export async function probeLvstore(device: BlockDevice): Promise<LvstoreProbe> {
  const first = await readAt(device, 0, spdkPageBytes);
  if (!first) return { kind: 'none' };
  if (first.toString('ascii', 0, spdkSignature.length) === spdkSignature) return probeSpdk(device, first);
  return probeLvnode(device, first);
}

async function probeLvnode(device: BlockDevice, first: Buffer): Promise<LvstoreProbe> {
  // Slot 1 sits at max(4096, block size) of the device that wrote it; 4096 covers 512- and
  // 4096-byte blocks, the device's own size covers larger ones.
  const slotOffsets = [...new Set([0, spdkPageBytes, Math.max(spdkPageBytes, device.blockSizeBytes)])];
  const reasons: string[] = [];
  let newest: SuperBlock | undefined;
  for (const offset of slotOffsets) {
    const slot = offset === 0 ? first : await readAt(device, offset, spdkPageBytes);
    if (!slot) continue;
    const decoded = decodeSuperBlock(slot);
    if (decoded.kind === 'damaged') reasons.push(`super block at byte ${offset}: ${decoded.reason}`);
    if (decoded.kind !== 'ok') continue;
    if (!newest || decoded.value.generation > newest.generation) newest = decoded.value;
  }
  if (newest) return { kind: 'lvnode', uuid: newest.lvstoreId, name: await nameFromCheckpoint(device, newest) };
  return reasons.length > 0 ? { kind: 'lvnode-damaged', reason: reasons.join('; ') } : { kind: 'none' };
}

/** The lvstore's name from the head line of its checkpoint, or undefined when it does not read. */
async function nameFromCheckpoint(device: BlockDevice, superBlock: SuperBlock): Promise<string | undefined> {
  try {
    const layout = metadataLayout(superBlock.firstDataCluster * superBlock.clusterBytes, superBlock.blockBytes);
    const length = Math.min(superBlock.checkpointLength, checkpointNameReadBytesMax);
    const image = await readAt(device, layout.checkpointOffsets[superBlock.checkpointSlot], length);
    if (!image || image.toString('ascii', 0, checkpointMagic.length) !== checkpointMagic) return undefined;
    const payloadBytes = image.readUInt32LE(12);
    const payload = image.subarray(checkpointHeaderBytes, Math.min(image.length, checkpointHeaderBytes + payloadBytes));
    const lineEnd = payload.indexOf(0x0a);
    const head = decodePayload(lineEnd === -1 ? payload : payload.subarray(0, lineEnd)) as { name?: unknown };
    return typeof head.name === 'string' ? head.name : undefined;
  } catch {
    return undefined; // a name is a courtesy: the refusal stands on the super block alone
  }
}

async function probeSpdk(device: BlockDevice, superBlock: Buffer): Promise<LvstoreProbe> {
  const bstype = superBlock.toString('ascii', spdkBstypeOffset, spdkBstypeOffset + spdkBstypeBytes).replace(/\0.*$/s, '');
  const xattrs = await spdkSuperBlobXattrs(device, superBlock).catch(() => new Map<string, string>());
  return { kind: 'spdk', bstype, uuid: xattrs.get('uuid'), name: xattrs.get('name') };
}

/** The xattrs of the super blob's first metadata page: SPDK's lvol layer keeps `name` and `uuid` there. */
async function spdkSuperBlobXattrs(device: BlockDevice, superBlock: Buffer): Promise<Map<string, string>> {
  const xattrs = new Map<string, string>();
  const pageIndex = superBlock.readUInt32LE(spdkSuperBlobIdOffset); // a blob id's low half is its page
  const mdStartPage = superBlock.readUInt32LE(spdkMdStartOffset);
  const page = await readAt(device, (mdStartPage + pageIndex) * spdkPageBytes, spdkPageBytes);
  if (!page) return xattrs;
  let at = spdkDescriptorsStart;
  while (at + 5 <= spdkDescriptorsEnd) {
    const type = page[at]!;
    const length = page.readUInt32LE(at + 1);
    if (type === 0 || at + 5 + length > spdkDescriptorsEnd) break; // padding ends the list
    if (type === spdkDescriptorXattr && length >= 4) {
      const nameBytes = page.readUInt16LE(at + 5);
      const valueBytes = page.readUInt16LE(at + 7);
      if (4 + nameBytes + valueBytes <= length) {
        const name = page.toString('utf8', at + 9, at + 9 + nameBytes);
        const value = page.toString('utf8', at + 9 + nameBytes, at + 9 + nameBytes + valueBytes).replace(/\0+$/, '');
        xattrs.set(name, value);
      }
    }
    at += 5 + length;
  }
  return xattrs;
}

/** How a refusal names what the probe found, e.g. `lvstore lvs0 (2f1c…)`. */
export function describeProbe(probe: Exclude<LvstoreProbe, { kind: 'none' }>): string {
  switch (probe.kind) {
    case 'lvnode':
      return `lvstore ${probe.name ?? '(name unreadable)'} (${probe.uuid})`;
    case 'lvnode-damaged':
      return `a damaged lvstore super block (${probe.reason})`;
    case 'spdk':
      return `an SPDK blobstore of type ${probe.bstype || '(none)'}${probe.name ? ` named ${probe.name}` : ''}${probe.uuid ? ` (${probe.uuid})` : ''}`;
  }
}
