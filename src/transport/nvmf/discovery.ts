// The discovery log page (NVMe-oF 1.1 §5.3): one entry per listener of each subsystem a host may
// see, plus the discovery subsystem's own ports.
import { type NvmfTarget, nvmfDiscoveryNqn } from '../../actors/nvmfTarget.ts';
import { writePadded, writeU64 } from './nvmeSpec.ts';

const headerBytes = 1024;
const entryBytes = 1024;
const trtypeTcp = 3;
const subtypeNvme = 2;
const subtypeCurrentDiscovery = 3;
const adrfam = { IPv4: 1, IPv6: 2 } as const;

/** The whole discovery log page for `hostNqn`, as of now. */
export function discoveryLogPage(target: NvmfTarget, hostNqn: string): Buffer {
  const entries: Buffer[] = [];
  const ports = new Map<string, number>();
  const portId = (key: string) => {
    if (!ports.has(key)) ports.set(key, ports.size + 1);
    return ports.get(key)!;
  };
  for (const subsystem of target.list()) {
    if (subsystem.isDiscovery || !subsystem.hostAllowed(hostNqn)) continue;
    for (const listener of subsystem.listeners) {
      const { address } = listener;
      entries.push(entry(subtypeNvme, subsystem.nqn, address.adrfam, address.traddr, address.trsvcid, portId(`${address.traddr}:${address.trsvcid}`)));
    }
  }
  // Every port answers for discovery too (the discovery subsystem listens on all of them).
  for (const [key, id] of [...ports]) {
    const [traddr, trsvcid] = splitKey(key);
    entries.push(entry(subtypeCurrentDiscovery, nvmfDiscoveryNqn, traddr.includes(':') ? 'IPv6' : 'IPv4', traddr, trsvcid, id));
  }
  const page = Buffer.alloc(headerBytes + entries.length * entryBytes);
  writeU64(page, 0, target.generation);
  writeU64(page, 8, entries.length);
  page.writeUInt16LE(0, 16); // RECFMT
  entries.forEach((item, index) => item.copy(page, headerBytes + index * entryBytes));
  return page;
}

function splitKey(key: string): [string, string] {
  const at = key.lastIndexOf(':');
  return [key.slice(0, at), key.slice(at + 1)];
}

function entry(subtype: number, nqn: string, family: keyof typeof adrfam, traddr: string, trsvcid: string, portid: number): Buffer {
  const data = Buffer.alloc(entryBytes);
  data.writeUInt8(trtypeTcp, 0);
  data.writeUInt8(adrfam[family], 1);
  data.writeUInt8(subtype, 2);
  data.writeUInt8(0x02, 3); // TREQ: secure channel not required
  data.writeUInt16LE(portid, 4);
  data.writeUInt16LE(0xffff, 6); // CNTLID: dynamic controller model
  data.writeUInt16LE(128, 8); // ASQSZ
  data.writeUInt16LE(subtype === subtypeCurrentDiscovery ? 0x3 : 0, 10); // EFLAGS: explicit persistent connections, duplicate returned info
  writePadded(data, 32, 32, trsvcid, 0x20);
  writePadded(data, 256, 256, nqn, 0);
  writePadded(data, 512, 256, traddr, 0x20);
  data.writeUInt8(0, 768); // TSAS for TCP: SECTYPE none
  return data;
}
