// The Identify data structures the target returns (NVMe base 1.4 §5.15): controller, namespace,
// active namespace list and namespace identification descriptors, filled as SPDK's target fills them.
import {
  nvmfAsyncEventsMax,
  nvmfInCapsuleDataBytes,
  nvmfQueueDepthMax,
  nvmfTransferBytesMax,
} from '../../constants.ts';
import type { NvmfNamespace, NvmfSubsystem } from '../../actors/nvmfTarget.ts';
import { controllerType, versionRegister, writePadded, writeU64 } from './nvmeSpec.ts';

export const identifyBytes = 4096;
/** Our firmware revision in Identify Controller (8 ASCII characters). */
const firmwareRevision = 'lvnode';
/** Keep Alive Support granularity: 10 x 100 ms, as SPDK's KAS_DEFAULT_VALUE. */
const keepAliveGranularity = 10;

/** Identify Controller for a controller `cntlid` of `subsystem`. */
export function identifyController(subsystem: NvmfSubsystem, cntlid: number): Buffer {
  const data = Buffer.alloc(identifyBytes);
  data.writeUInt16LE(0x8086, 0); // VID, as SPDK's target
  data.writeUInt16LE(0x8086, 2); // SSVID
  writePadded(data, 4, 20, subsystem.options.serialNumber, 0x20);
  writePadded(data, 24, 40, subsystem.options.modelNumber, 0x20);
  writePadded(data, 64, 8, firmwareRevision, 0x20);
  data.writeUInt8(0xe4, 73); // IEEE OUI, as SPDK's
  data.writeUInt8(0xd2, 74);
  data.writeUInt8(0x5c, 75);
  data.writeUInt8(Math.log2(nvmfTransferBytesMax / 4096), 77); // MDTS in minimum pages (4 KiB)
  data.writeUInt16LE(cntlid, 78);
  data.writeUInt32LE(versionRegister, 80);
  data.writeUInt8(nvmfAsyncEventsMax - 1, 259); // AERL, 0's based
  data.writeUInt8(0x04, 261); // LPA: extended data for Get Log Page
  data.writeUInt8(127, 262); // ELPE
  data.writeUInt16LE(keepAliveGranularity, 320); // KAS
  data.writeUInt16LE(nvmfQueueDepthMax, 514); // MAXCMD
  // SGLs: supported (byte-aligned not required), SGL offsets (in-capsule data) supported.
  data.writeUInt32LE(0x1 | (1 << 20), 536);
  writePadded(data, 768, 256, subsystem.nqn, 0);
  if (subsystem.isDiscovery) {
    data.writeUInt32LE(0x8000_0000, 92); // OAES: discovery log change notices
    data.writeUInt8(controllerType.discovery, 111);
  } else {
    data.writeUInt8(6, 72); // RAB
    data.writeUInt8(0x03 | (subsystem.options.anaReporting ? 0x08 : 0), 76); // CMIC: multi-port, multi-controller, ANA
    data.writeUInt32LE((1 << 8) | (subsystem.options.anaReporting ? 1 << 11 : 0), 92); // OAES: namespace attribute notices, ANA change
    data.writeUInt8(controllerType.io, 111);
    data.writeUInt8(0x01 | (1 << 1), 260); // FRMW: slot 1 read-only, one slot
    data.writeUInt8(0x04 | 0x02, 261); // LPA: extended data, command effects log
    data.writeUInt8(0x66, 512); // SQES
    data.writeUInt8(0x44, 513); // CQES
    data.writeUInt32LE(subsystem.options.maxNamespaces, 516); // NN
    data.writeUInt16LE(0x04 | 0x08, 520); // ONCS: dataset management, write zeroes
    data.writeUInt8(0x01, 525); // VWC present (flush reaches the bdev)
    data.writeUInt32LE(subsystem.options.maxNamespaces, 540); // MNAN
    if (subsystem.options.anaReporting) {
      data.writeUInt8(10, 342); // ANATT seconds
      data.writeUInt8(0x07 | 0x40, 343); // ANACAP: optimized, non-optimized, inaccessible; ANAGRPID does not change
      data.writeUInt32LE(subsystem.options.maxNamespaces, 344); // ANAGRPMAX
      data.writeUInt32LE(subsystem.options.maxNamespaces, 348); // NANAGRPID
    }
  }
  // NVMe-oF attributes: capsule sizes in 16-byte units, in-capsule data right after the SQE.
  data.writeUInt32LE(4 + nvmfInCapsuleDataBytes / 16, 1792); // IOCCSZ
  data.writeUInt32LE(1, 1796); // IORCSZ
  data.writeUInt16LE(0, 1800); // ICDOFF
  data.writeUInt8(0, 1802); // CTRATTR: dynamic controller model
  data.writeUInt8(1, 1803); // MSDBD
  return data;
}

/** Identify Namespace: size in blocks, one LBA format, thin provisioning, deallocated blocks read zeros. */
export function identifyNamespace(namespace: NvmfNamespace): Buffer {
  const data = Buffer.alloc(identifyBytes);
  const blocks = Math.floor(namespace.bdev.sizeBytes() / namespace.bdev.blockSizeBytes);
  writeU64(data, 0, blocks); // NSZE
  writeU64(data, 8, blocks); // NCAP
  writeU64(data, 16, blocks); // NUSE
  data.writeUInt8(0x01 | 0x04, 24); // NSFEAT: thin provisioning, DAE (deallocate) supported
  data.writeUInt8(0, 25); // NLBAF: one format
  data.writeUInt8(0, 26); // FLBAS: format 0
  data.writeUInt8(0x01, 30); // NMIC: may be shared by several controllers
  data.writeUInt8(0x01 | 0x08, 33); // DLFEAT: deallocated blocks read zeros; write zeroes may deallocate
  data.writeUInt32LE(namespace.anagrpid, 92); // ANAGRPID
  data.writeUInt8(namespace.bdev.readOnly() ? 0x01 : 0x00, 99); // NSATTR: write protected
  namespace.nguid.copy(data, 104, 0, 16); // NGUID
  data.writeUInt32LE(Math.log2(namespace.bdev.blockSizeBytes) << 16, 128); // LBAF0: LBADS
  return data;
}

/** Namespace identification descriptors: NGUID and UUID (the host tells namespaces apart by them). */
export function namespaceDescriptors(namespace: NvmfNamespace): Buffer {
  const data = Buffer.alloc(identifyBytes);
  let offset = 0;
  data.writeUInt8(0x02, offset); // NIDT NGUID
  data.writeUInt8(16, offset + 1);
  namespace.nguid.copy(data, offset + 4, 0, 16);
  offset += 20;
  data.writeUInt8(0x03, offset); // NIDT UUID
  data.writeUInt8(16, offset + 1);
  Buffer.from(namespace.uuid.replaceAll('-', ''), 'hex').copy(data, offset + 4, 0, 16);
  return data;
}

/** Active NSIDs above `afterNsid`, ascending, at most 1024. */
export function activeNamespaceList(subsystem: NvmfSubsystem, afterNsid: number): Buffer {
  const data = Buffer.alloc(identifyBytes);
  const nsids = [...subsystem.namespaces.keys()].filter((nsid) => nsid > afterNsid).sort((a, b) => a - b);
  nsids.slice(0, identifyBytes / 4).forEach((nsid, index) => data.writeUInt32LE(nsid, index * 4));
  return data;
}
