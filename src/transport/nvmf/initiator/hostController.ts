// The NVMe/TCP host side of one controller (NVMe-oF 1.1 §3.3, NVMe base 1.4 §7.6.1): the admin
// queue's Connect, CC.EN then CSTS.RDY through Property Set/Get, Identify (controller, active
// namespaces, each namespace and its descriptors), Set Features Number of Queues then that many
// I/O queues (each command goes to the one with the fewest in flight), Keep Alive at KATO/2; and
// the namespaces' block commands. Every command is timed (hostQueuePair.ts): a silent target ends
// the session like a closed socket does. It implements the actor layer's `NvmeConnector`
// (tcpNvmeConnector); reconnecting is the actor layer's, which connects a new session.
import { randomBytes } from 'node:crypto';
import type { NvmeAttachRequest, NvmeConnector, NvmeSession } from '../../../actors/nvmeControllers.ts';
import type { NvmeControllerIdentity, NvmeNamespaceIo } from '../../../bdev/nvmeBdev.ts';
import {
  nvmeInitiatorCommandTimeoutMs,
  nvmeInitiatorIoQueuesDefault,
  nvmeInitiatorIoQueuesMax,
  nvmeInitiatorKeepAliveTimeoutMs,
  nvmeInitiatorQueueEntries,
  nvmeInitiatorReadyTimeoutMs,
  nvmeInitiatorTransferBytesMax,
} from '../../../constants.ts';
import { StorageError, fail } from '../../../errors.ts';
import { adminOpcode, fabricsType, featureId, identifyCns, ioOpcode, logPage, property, readNulTerminated, readU64, sqeBytes, writeU64 } from '../nvmeSpec.ts';
import { type HostCompletion, HostQueuePair, type HostTransfer, statusCode, statusCodeType } from './hostQueuePair.ts';

const connectDataBytes = 1024;
const identifyBytes = 4096;
/** CC: EN, I/O SQ entry 2^6 bytes, I/O CQ entry 2^4 bytes (NVMe over fabrics fixes both). */
const ccEnable = 0x00460001;
const readyPollMs = 5;
/** The SMART / Health Information log page (NVMe base 1.4 §5.14.1.2). */
const healthLogBytes = 512;
/** NSID FFFFFFFFh: the controller as a whole (SPDK_NVME_GLOBAL_NS_TAG). */
const globalNamespace = 0xffffffff;

/** An ASCII field of Identify Controller, space padded, as SPDK trims it (spdk_str_trim). */
function asciiField(data: Buffer, offset: number, length: number): string {
  return readNulTerminated(data, offset, length).trim();
}

function sqe(opcode: number, nsid = 0): Buffer {
  const entry = Buffer.alloc(sqeBytes);
  entry[0] = opcode;
  entry.writeUInt32LE(nsid, 4);
  return entry;
}

function fabricsSqe(fctype: number): Buffer {
  const entry = sqe(adminOpcode.fabrics);
  entry[4] = fctype;
  return entry;
}

/** A completion's failure as EIO naming the command and its status (SCT/SC). */
function checkStatus(what: string, completion: HostCompletion): HostCompletion {
  if (completion.status === 0) return completion;
  throw new StorageError('EIO', {
    detail: `NVMe ${what} failed: status type ${statusCodeType(completion.status)} code 0x${statusCode(completion.status).toString(16).padStart(2, '0')}`,
    data: { nvme_sct: statusCodeType(completion.status), nvme_sc: statusCode(completion.status) },
  });
}

function uuidText(bytes: Buffer): string | undefined {
  if (bytes.every((byte) => byte === 0)) return undefined;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** How the transport connects, beyond what the attach asked (tests make the timeout small). */
export interface HostControllerOptions {
  readonly commandTimeoutMs?: number;
  /** Keep Alive every this many ms; KATO/2 (nvmeInitiatorKeepAliveTimeoutMs / 2) by default. */
  readonly keepAliveIntervalMs?: number;
}

export class HostController implements NvmeSession {
  cntlid = 0;
  identity: NvmeControllerIdentity = { cntlid: 0, vendorId: 0, serialNumber: '', modelNumber: '', firmwareRevision: '', subnqn: '', oacs: 0, cmic: 0, version: 0 };
  namespaces: NvmeNamespaceIo[] = [];
  transferBytesMax = nvmeInitiatorTransferBytesMax;
  private ioQueues: HostQueuePair[] = [];
  private keepAlive: NodeJS.Timeout | undefined;
  private closing = false;
  private readonly lostListeners: Array<(reason: string) => void> = [];
  private readonly hostId = randomBytes(16);

  private constructor(
    private readonly request: NvmeAttachRequest,
    private readonly admin: HostQueuePair,
    private readonly keepAliveIntervalMs: number,
  ) {
    admin.onClose((error) => this.connectionLost(error.message));
  }

  get hostAddress(): { addr: string; svcid: string } {
    return this.admin.localAddress;
  }

  /** True once a queue's connection ended or `close` was called: commands sent on it are not known complete. */
  get lost(): boolean {
    return this.closing;
  }

  /** I/O queues connected (tests count them). */
  get ioQueueCount(): number {
    return this.ioQueues.length;
  }

  static async connect(request: NvmeAttachRequest, signal: AbortSignal, options: HostControllerOptions = {}): Promise<HostController> {
    const digests = { header: request.headerDigest, data: request.dataDigest };
    const commandTimeoutMs = options.commandTimeoutMs ?? nvmeInitiatorCommandTimeoutMs;
    const open = () =>
      HostQueuePair.open({ host: request.trid.traddr, port: Number(request.trid.trsvcid), digests, depth: nvmeInitiatorQueueEntries - 1, commandTimeoutMs });
    const controller = new HostController(request, await open(), options.keepAliveIntervalMs ?? nvmeInitiatorKeepAliveTimeoutMs / 2);
    const abort = () => controller.admin.close(new StorageError('ECANCELED', { detail: 'attach cancelled' }));
    signal.addEventListener('abort', abort);
    try {
      await controller.connectQueue(controller.admin, 0, 0xffff);
      await controller.enable();
      await controller.identify();
      const queueCount = await controller.setQueueCount(Math.min(request.ioQueues ?? nvmeInitiatorIoQueuesDefault, nvmeInitiatorIoQueuesMax));
      for (let qid = 1; qid <= queueCount; qid++) {
        const ioQueue = await open();
        ioQueue.inCapsuleBytesMax = controller.admin.inCapsuleBytesMax;
        ioQueue.onClose((error) => controller.connectionLost(error.message));
        controller.ioQueues.push(ioQueue);
        await controller.connectQueue(ioQueue, qid, controller.cntlid);
      }
      controller.startKeepAlive();
      return controller;
    } catch (error) {
      await controller.close();
      throw error instanceof StorageError ? error : new StorageError('EIO', { detail: String(error) });
    } finally {
      signal.removeEventListener('abort', abort);
    }
  }

  onLost(listener: (reason: string) => void): void {
    this.lostListeners.push(listener);
  }

  /**
   * The SMART / Health log page, read as SPDK's bdev_nvme_get_controller_health_info reads it:
   * Get Features (Temperature Threshold) first, then Get Log Page 02h for the whole controller.
   */
  async healthLogPage(): Promise<Buffer> {
    if (this.closing) fail('EIO', `NVMe controller ${this.request.name} is not connected`);
    const features = sqe(adminOpcode.getFeatures);
    features.writeUInt32LE(featureId.temperatureThreshold, 40);
    checkStatus('Get Features (Temperature Threshold)', await this.admin.submit(features));
    const entry = sqe(adminOpcode.getLogPage, globalNamespace);
    entry.writeUInt32LE(logPage.health | ((healthLogBytes / 4 - 1) << 16), 40); // LID, NUMDL (0's based dwords)
    const page = Buffer.alloc(healthLogBytes);
    checkStatus('Get Log Page (SMART / Health)', await this.admin.submit(entry, { read: page }));
    return page;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.keepAlive);
    for (const queue of this.ioQueues) queue.close();
    this.admin.close();
  }

  private connectionLost(reason: string): void {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.keepAlive);
    for (const queue of this.ioQueues) queue.close();
    this.admin.close();
    for (const listener of this.lostListeners.splice(0)) listener(reason);
  }

  /** Fabrics Connect of queue `qid` (0: admin, which creates the controller). */
  private async connectQueue(queue: HostQueuePair, qid: number, cntlid: number): Promise<void> {
    const entry = fabricsSqe(fabricsType.connect);
    entry.writeUInt16LE(0, 40); // RECFMT
    entry.writeUInt16LE(qid, 42);
    entry.writeUInt16LE(nvmeInitiatorQueueEntries - 1, 44); // SQSIZE, 0's based
    entry.writeUInt32LE(qid === 0 ? nvmeInitiatorKeepAliveTimeoutMs : 0, 48); // KATO
    const data = Buffer.alloc(connectDataBytes);
    this.hostId.copy(data, 0);
    data.writeUInt16LE(cntlid, 16);
    data.write(this.request.trid.subnqn, 256, 255, 'utf8');
    data.write(this.request.hostnqn, 512, 255, 'utf8');
    // Connect's data goes in the capsule: no controller can have said how much it accepts yet.
    queue.inCapsuleBytesMax = Math.max(queue.inCapsuleBytesMax, connectDataBytes);
    const completion = checkStatus(`Connect (queue ${qid})`, await queue.submit(entry, { write: data }));
    if (qid === 0) this.cntlid = completion.dw0 & 0xffff;
  }

  /** Set Features Number of Queues: asks for `wanted` I/O queues, answers how many to use (at most granted). */
  private async setQueueCount(wanted: number): Promise<number> {
    const entry = sqe(adminOpcode.setFeatures);
    entry.writeUInt32LE(featureId.numberOfQueues, 40);
    entry.writeUInt32LE(((wanted - 1) << 16) | (wanted - 1), 44);
    const { dw0 } = checkStatus('Set Features (Number of Queues)', await this.admin.submit(entry));
    const granted = Math.min(dw0 & 0xffff, dw0 >>> 16) + 1;
    return Math.max(1, Math.min(wanted, granted));
  }

  private async propertyGet(offset: number, eightBytes: boolean): Promise<number> {
    const entry = fabricsSqe(fabricsType.propertyGet);
    entry[40] = eightBytes ? 1 : 0;
    entry.writeUInt32LE(offset, 44);
    const completion = checkStatus(`Property Get 0x${offset.toString(16)}`, await this.admin.submit(entry));
    return completion.dw0 + (eightBytes ? completion.dw1 * 0x1_0000_0000 : 0);
  }

  private async propertySet(offset: number, value: number): Promise<void> {
    const entry = fabricsSqe(fabricsType.propertySet);
    entry[40] = 0;
    entry.writeUInt32LE(offset, 44);
    writeU64(entry, 48, value);
    checkStatus(`Property Set 0x${offset.toString(16)}`, await this.admin.submit(entry));
  }

  /** CC.EN = 1, then CSTS.RDY within CAP.TO (500 ms units), bounded by nvmeInitiatorReadyTimeoutMs. */
  private async enable(): Promise<void> {
    const cap = await this.propertyGet(property.cap, true);
    const timeoutMs = Math.min(nvmeInitiatorReadyTimeoutMs, Math.max(1, Math.floor(cap / 2 ** 24) & 0xff) * 500);
    await this.propertySet(property.cc, ccEnable);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const csts = await this.propertyGet(property.csts, false);
      if ((csts & 0x2) !== 0) fail('EIO', 'the controller reports a fatal status (CSTS.CFS)');
      if ((csts & 0x1) !== 0) return;
      if (Date.now() > deadline) fail('ETIMEDOUT', `the controller was not ready within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, readyPollMs));
    }
  }

  private async identifyData(cns: number, nsid: number): Promise<Buffer> {
    const entry = sqe(adminOpcode.identify, nsid);
    entry.writeUInt32LE(cns, 40);
    const data = Buffer.alloc(identifyBytes);
    checkStatus(`Identify CNS ${cns}`, await this.admin.submit(entry, { read: data }));
    return data;
  }

  private async identify(): Promise<void> {
    const controllerData = await this.identifyData(identifyCns.controller, 0);
    this.identity = {
      cntlid: controllerData.readUInt16LE(78),
      vendorId: controllerData.readUInt16LE(0),
      serialNumber: asciiField(controllerData, 4, 20),
      modelNumber: asciiField(controllerData, 24, 40),
      firmwareRevision: asciiField(controllerData, 64, 8),
      subnqn: readNulTerminated(controllerData, 768, 256),
      oacs: controllerData.readUInt16LE(256),
      cmic: controllerData[76]!,
      version: await this.propertyGet(property.vs, false),
    };
    const mdts = controllerData[77]!;
    // MDTS is in units of the minimum page size (CAP.MPSMIN; 4 KiB for every fabrics controller).
    if (mdts !== 0) this.transferBytesMax = Math.min(nvmeInitiatorTransferBytesMax, 4096 * 2 ** mdts);
    const ioccszBytes = controllerData.readUInt32LE(1792) * 16;
    this.admin.inCapsuleBytesMax = controllerData.readUInt16LE(1800) === 0 && ioccszBytes > sqeBytes ? ioccszBytes - sqeBytes : 0;
    const subnqn = readNulTerminated(controllerData, 768, 256);
    if (subnqn !== '' && subnqn !== this.request.trid.subnqn) fail('EIO', `the controller serves ${subnqn}, not ${this.request.trid.subnqn}`);
    const list = await this.identifyData(identifyCns.activeNamespaceList, 0);
    for (let offset = 0; offset < identifyBytes; offset += 4) {
      const nsid = list.readUInt32LE(offset);
      if (nsid === 0) break;
      const namespace = await this.identifyNamespace(nsid);
      if (namespace) this.namespaces.push(namespace);
    }
  }

  /** One namespace's geometry and id; undefined for an inactive one (NSZE 0). */
  private async identifyNamespace(nsid: number): Promise<NvmeNamespaceIo | undefined> {
    const data = await this.identifyData(identifyCns.namespace, nsid);
    const blockCount = readU64(data, 0);
    if (blockCount === 0 || !Number.isSafeInteger(blockCount)) return undefined;
    const format = data[26]! & 0x0f;
    const blockSizeBytes = 2 ** data[130 + format * 4]!;
    if ((data.readUInt16LE(128 + format * 4) & 0xffff) !== 0) fail('EIO', `namespace ${nsid} has metadata per block, which lvnode does not support`);
    let uuid = uuidText(data.subarray(104, 120));
    try {
      const descriptors = await this.identifyData(identifyCns.namespaceDescriptors, nsid);
      for (let offset = 0; offset + 4 <= identifyBytes; ) {
        const type = descriptors[offset]!;
        const length = descriptors[offset + 1]!;
        if (type === 0 || length === 0) break;
        if (type === 0x03 && length === 16) uuid = uuidText(descriptors.subarray(offset + 4, offset + 20)) ?? uuid;
        offset += 4 + length;
      }
    } catch {
      // Descriptors are optional before NVMe 1.3: the NGUID serves.
    }
    return this.namespaceIo(nsid, blockSizeBytes, blockCount, uuid, (data[99]! & 1) !== 0, (data[30]! & 1) !== 0);
  }

  private namespaceIo(nsid: number, blockSizeBytes: number, blockCount: number, uuid: string | undefined, writeProtected: boolean, canShare: boolean): NvmeNamespaceIo {
    const controller = this;
    return {
      nsid,
      blockSizeBytes,
      blockCount,
      uuid,
      writeProtected,
      canShare,
      get transferBytesMax() {
        return controller.transferBytesMax;
      },
      read: (lba, target) => this.blockCommand('Read', ioOpcode.read, nsid, lba, target.length / blockSizeBytes, { read: target }),
      write: (lba, data) => this.blockCommand('Write', ioOpcode.write, nsid, lba, data.length / blockSizeBytes, { write: data }),
      writeZeroes: (lba, blocks) => this.blockCommand('Write Zeroes', ioOpcode.writeZeroes, nsid, lba, blocks, {}),
      flush: async () => void checkStatus('Flush', await this.io(sqe(ioOpcode.flush, nsid), {})),
      deallocate: async (lba, blocks) => {
        const entry = sqe(ioOpcode.datasetManagement, nsid);
        entry.writeUInt32LE(0, 40); // NR: one range
        entry.writeUInt32LE(0x4, 44); // AD: deallocate
        const range = Buffer.alloc(16);
        range.writeUInt32LE(blocks, 4);
        writeU64(range, 8, lba);
        checkStatus('Dataset Management', await this.io(entry, { write: range }));
      },
    };
  }

  private async blockCommand(what: string, opcode: number, nsid: number, lba: number, blocks: number, transfer: HostTransfer): Promise<void> {
    const entry = sqe(opcode, nsid);
    writeU64(entry, 40, lba);
    entry.writeUInt32LE((blocks - 1) & 0xffff, 48);
    checkStatus(what, await this.io(entry, transfer));
  }

  private io(entry: Buffer, transfer: HostTransfer): Promise<HostCompletion> {
    if (this.ioQueues.length === 0 || this.closing) fail('EIO', `NVMe controller ${this.request.name} is not connected`);
    let queue = this.ioQueues[0]!;
    for (const candidate of this.ioQueues) if (candidate.inFlightCount < queue.inFlightCount) queue = candidate;
    return queue.submit(entry, transfer);
  }

  /** Keep Alive's reply is timed like any command: a controller that stops answering it, idle or not, is lost. */
  private startKeepAlive(): void {
    this.keepAlive = setInterval(() => {
      this.admin.submit(sqe(adminOpcode.keepAlive)).then(
        (completion) => completion.status !== 0 && this.connectionLost(`Keep Alive failed with status 0x${completion.status.toString(16)}`),
        () => undefined,
      );
    }, this.keepAliveIntervalMs);
    this.keepAlive.unref();
  }
}

/** The NVMe/TCP connector with options (a small command timeout in tests). */
export function tcpNvmeConnectorWith(options: HostControllerOptions): NvmeConnector {
  return { connect: (request, signal) => HostController.connect(request, signal, options) };
}

export const tcpNvmeConnector: NvmeConnector = tcpNvmeConnectorWith({});
