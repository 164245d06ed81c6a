// One NVMe/TCP queue pair seen from the host (NVMe/TCP 1.0 §3): ICReq/ICResp, then commands by
// command id with an in-flight map; data in the capsule up to the controller's IOCCSZ, else by
// R2T/H2CData; reads through C2HData (its SUCCESS flag completes the command). A PDU the host
// cannot accept ends the connection: every command in flight fails with EIO, the node goes on.
// So does a command not answered within `commandTimeoutMs` (a target gone silent with its socket
// open): ETIMEDOUT for everything in flight, and the controller treats the connection as lost.
import { type Socket, connect as connectSocket } from 'node:net';
import { nvmeInitiatorCommandTimeoutMs, nvmeInitiatorConnectTimeoutMs, nvmeInitiatorPduBytesMax } from '../../../constants.ts';
import { StorageError } from '../../../errors.ts';
import { crc32c } from '../crc32c.ts';
import {
  type Digests,
  capsuleCmdHeaderBytes,
  commonHeaderBytes,
  dataHeaderBytes,
  digestBytes,
  encodeDataDigest,
  icBytes,
  pduFlag,
  pduType,
  writeCommonHeader,
} from '../pdu.ts';
import { sqeBytes } from '../nvmeSpec.ts';

/** A completion queue entry as the host reads it. */
export interface HostCompletion {
  readonly dw0: number;
  readonly dw1: number;
  /** The CQE status field without the phase bit: 0 for success. */
  readonly status: number;
}

export function statusCodeType(status: number): number {
  return (status >> 9) & 0x7;
}

export function statusCode(status: number): number {
  return (status >> 1) & 0xff;
}

/** What a command moves: `write` is sent to the controller, `read` is filled from it. */
export interface HostTransfer {
  readonly write?: Buffer;
  readonly read?: Buffer;
}

interface InFlight {
  readonly cid: number;
  readonly transfer: HostTransfer;
  readonly resolve: (completion: HostCompletion) => void;
  readonly reject: (error: Error) => void;
  readBytes: number;
}

export interface HostQueueOptions {
  readonly host: string;
  readonly port: number;
  readonly digests: Digests;
  /** Commands in flight at most (the queue's entries minus one). */
  readonly depth: number;
  /** A command unanswered this long ends the connection (nvmeInitiatorCommandTimeoutMs; tests pass less). */
  readonly commandTimeoutMs?: number;
}

const sglInCapsule = 0x01; // data block, offset subtype
const sglTransport = 0x5a; // transport data block

export class HostQueuePair {
  /** What ICResp granted. */
  digests: Digests = { header: false, data: false };
  maxH2cDataBytes = 0;
  /** In-capsule data the controller accepts (IOCCSZ*16 - 64), set after Identify; 0 before. */
  inCapsuleBytesMax = 0;
  private readonly inFlight = new Map<number, InFlight>();
  private readonly freeCids: number[] = [];
  private readonly waiting: Array<() => void> = [];
  private received: Buffer[] = [];
  private receivedBytes = 0;
  private closedError: Error | undefined;
  private readonly closeListeners: Array<(error: Error) => void> = [];
  private icWaiter: ((pdu: Buffer) => void) | undefined;

  private constructor(
    private readonly socket: Socket,
    depth: number,
    private readonly commandTimeoutMs: number,
  ) {
    for (let cid = depth - 1; cid >= 0; cid--) this.freeCids.push(cid);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.fail(new StorageError('EIO', { detail: `NVMe/TCP connection: ${error.message}` })));
    socket.on('close', () => this.fail(new StorageError('EIO', { detail: 'NVMe/TCP connection closed' })));
  }

  /** Opens the TCP connection and exchanges ICReq/ICResp. */
  static async open(options: HostQueueOptions): Promise<HostQueuePair> {
    const socket = connectSocket({ host: options.host, port: options.port });
    const queue = new HostQueuePair(socket, options.depth, options.commandTimeoutMs ?? nvmeInitiatorCommandTimeoutMs);
    const timer = setTimeout(() => queue.close(new StorageError('ETIMEDOUT', { detail: `NVMe/TCP ${options.host}:${options.port} did not answer` })), nvmeInitiatorConnectTimeoutMs);
    try {
      let connected = false;
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', () => {
          connected = true;
          resolve();
        });
        // Nothing listening (refused, unreachable, no answer): no controller, ENODEV as SPDK's probe.
        queue.onClose((error) => reject(!connected ? new StorageError('ENODEV', { detail: `no NVMe/TCP listener reached at ${options.host}:${options.port}: ${error.message}` }) : error));
      });
      await queue.initialize(options.digests);
    } finally {
      clearTimeout(timer);
    }
    return queue;
  }

  /** The host side of the connection, as SPDK reports it (`host.addr`, `host.svcid`). */
  get localAddress(): { addr: string; svcid: string } {
    return { addr: this.socket.localAddress ?? '', svcid: this.socket.localPort === undefined ? '' : String(this.socket.localPort) };
  }

  /** Commands sent and not yet answered (the controller spreads I/O by it). */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Called once when the connection ends (by either side). */
  onClose(listener: (error: Error) => void): void {
    if (this.closedError) listener(this.closedError);
    else this.closeListeners.push(listener);
  }

  close(error: Error = new StorageError('EIO', { detail: 'NVMe/TCP connection closed by the host' })): void {
    this.fail(error);
  }

  private async initialize(digests: Digests): Promise<void> {
    const icReq = Buffer.alloc(icBytes);
    writeCommonHeader(icReq, pduType.icReq, 0, icBytes, 0, icBytes);
    icReq.writeUInt16LE(0, 8); // PFV
    icReq.writeUInt8(0, 10); // HPDA: no padding before C2H data
    icReq.writeUInt8((digests.header ? 1 : 0) | (digests.data ? 2 : 0), 11);
    icReq.writeUInt32LE(0, 12); // MAXR2T 0's based: one R2T at a time per command
    const icResp = await new Promise<Buffer>((resolve, reject) => {
      this.icWaiter = resolve;
      this.onClose(reject);
      this.socket.write(icReq);
    });
    this.digests = { header: (icResp[11]! & 1) !== 0, data: (icResp[11]! & 2) !== 0 };
    this.maxH2cDataBytes = icResp.readUInt32LE(12);
    if (this.maxH2cDataBytes < 4096 || icResp.readUInt16LE(8) !== 0) this.protocolError('ICResp has an unsupported version or MAXH2CDATA');
  }

  /** Sends one command (its SQE's CID and SGL are filled here) and resolves with its completion. */
  async submit(sqe: Buffer, transfer: HostTransfer = {}): Promise<HostCompletion> {
    while (this.freeCids.length === 0 && !this.closedError) await new Promise<void>((resolve) => this.waiting.push(resolve));
    if (this.closedError) throw this.closedError;
    const cid = this.freeCids.pop()!;
    return new Promise<HostCompletion>((resolve, reject) => {
      const timer = setTimeout(
        () => this.close(new StorageError('ETIMEDOUT', { detail: `NVMe/TCP command (opcode 0x${sqe[0]!.toString(16)}) not answered within ${this.commandTimeoutMs} ms` })),
        this.commandTimeoutMs,
      );
      const release = () => {
        clearTimeout(timer);
        this.inFlight.delete(cid);
        this.freeCids.push(cid);
        this.waiting.shift()?.();
      };
      this.inFlight.set(cid, {
        cid,
        transfer,
        readBytes: 0,
        resolve: (completion) => (release(), resolve(completion)),
        reject: (error) => (release(), reject(error)),
      });
      this.sendCapsule(sqe, cid, transfer);
    });
  }

  private sendCapsule(sqe: Buffer, cid: number, transfer: HostTransfer): void {
    sqe.writeUInt16LE(cid, 2);
    sqe[1] = (sqe[1]! & 0x3f) | 0x40; // PSDT: SGL
    const data = transfer.write;
    const inCapsule = data !== undefined && data.length > 0 && data.length <= this.inCapsuleBytesMax ? data : undefined;
    const length = data?.length ?? transfer.read?.length ?? 0;
    sqe.fill(0, 24, 40);
    if (length > 0) {
      sqe.writeUInt32LE(length, 32);
      sqe[39] = inCapsule ? sglInCapsule : sglTransport;
    }
    const headerEnd = capsuleCmdHeaderBytes + (this.digests.header ? digestBytes : 0);
    const dataBytes = inCapsule ? inCapsule.length + (this.digests.data ? digestBytes : 0) : 0;
    const header = Buffer.alloc(headerEnd);
    let flags = this.digests.header ? pduFlag.headerDigest : 0;
    if (inCapsule && this.digests.data) flags |= pduFlag.dataDigest;
    writeCommonHeader(header, pduType.capsuleCmd, flags, capsuleCmdHeaderBytes, inCapsule ? headerEnd : 0, headerEnd + dataBytes);
    sqe.copy(header, commonHeaderBytes, 0, sqeBytes);
    if (this.digests.header) header.writeUInt32LE(crc32c(header, 0, capsuleCmdHeaderBytes), capsuleCmdHeaderBytes);
    this.socket.cork();
    this.socket.write(header);
    if (inCapsule) {
      this.socket.write(inCapsule);
      if (this.digests.data) this.socket.write(encodeDataDigest(inCapsule));
    }
    this.socket.uncork();
  }

  private onData(chunk: Buffer): void {
    if (this.closedError) return;
    this.received.push(chunk);
    this.receivedBytes += chunk.length;
    while (this.receivedBytes >= commonHeaderBytes) {
      const head = this.peek(commonHeaderBytes);
      const plen = head.readUInt32LE(4);
      if (plen < commonHeaderBytes || plen > nvmeInitiatorPduBytesMax) return this.protocolError(`PDU length ${plen} out of range`);
      if (this.receivedBytes < plen) return;
      const pdu = this.take(plen);
      try {
        this.dispatch(pdu);
      } catch (error) {
        return this.protocolError(error instanceof Error ? error.message : String(error));
      }
      if (this.closedError) return;
    }
  }

  private peek(bytes: number): Buffer {
    if (this.received[0]!.length < bytes) this.received = [Buffer.concat(this.received)];
    return this.received[0]!;
  }

  private take(bytes: number): Buffer {
    const all = this.received.length === 1 ? this.received[0]! : Buffer.concat(this.received);
    const pdu = all.subarray(0, bytes);
    const rest = all.subarray(bytes);
    this.received = rest.length > 0 ? [rest] : [];
    this.receivedBytes -= bytes;
    return pdu;
  }

  private dispatch(pdu: Buffer): void {
    const type = pdu[0]!;
    const hlen = pdu[2]!;
    if (type === pduType.icResp) {
      if (!this.icWaiter || hlen !== icBytes || pdu.length !== icBytes) throw new Error('unexpected ICResp');
      const waiter = this.icWaiter;
      this.icWaiter = undefined;
      return waiter(pdu);
    }
    if (type === pduType.c2hTermReq) throw new Error(`the controller ended the connection (C2HTermReq FES ${pdu.length >= 10 ? pdu.readUInt16LE(8) : '?'})`);
    if (this.icWaiter) throw new Error(`PDU type ${type} before ICResp`);
    this.checkHeader(pdu, type, hlen);
    if (type === pduType.capsuleResp) return this.onCapsuleResp(pdu);
    if (type === pduType.c2hData) return this.onC2hData(pdu);
    if (type === pduType.r2t) return this.onR2t(pdu);
    throw new Error(`unexpected PDU type ${type}`);
  }

  /** The header length of each type, and its digest when negotiated. */
  private checkHeader(pdu: Buffer, type: number, hlen: number): void {
    const expected = type === pduType.capsuleResp ? 24 : type === pduType.c2hData || type === pduType.r2t ? dataHeaderBytes : -1;
    if (hlen !== expected) throw new Error(`PDU type ${type} with header length ${hlen}`);
    const withDigest = hlen + (this.digests.header ? digestBytes : 0);
    if (pdu.length < withDigest) throw new Error('PDU shorter than its header');
    if (this.digests.header && pdu.readUInt32LE(hlen) !== crc32c(pdu, 0, hlen)) throw new Error('header digest mismatch');
  }

  private command(cid: number): InFlight {
    const found = this.inFlight.get(cid);
    if (!found) throw new Error(`PDU for command id ${cid}, which is not in flight`);
    return found;
  }

  private onCapsuleResp(pdu: Buffer): void {
    const command = this.command(pdu.readUInt16LE(20));
    command.resolve({ dw0: pdu.readUInt32LE(8), dw1: pdu.readUInt32LE(12), status: pdu.readUInt16LE(22) & 0xfffe });
  }

  private onC2hData(pdu: Buffer): void {
    const command = this.command(pdu.readUInt16LE(8));
    const offsetBytes = pdu.readUInt32LE(12);
    const lengthBytes = pdu.readUInt32LE(16);
    const pdo = pdu[3]!;
    const flags = pdu[1]!;
    const target = command.transfer.read;
    const digest = (flags & pduFlag.dataDigest) !== 0 ? digestBytes : 0;
    if (!target || pdo < dataHeaderBytes || pdo + lengthBytes + digest !== pdu.length) throw new Error('C2HData that does not fit its PDU');
    if (offsetBytes !== command.readBytes || offsetBytes + lengthBytes > target.length) throw new Error('C2HData out of order or past the read');
    const data = pdu.subarray(pdo, pdo + lengthBytes);
    if (this.digests.data && digest === 0) throw new Error('C2HData without its data digest');
    if (digest !== 0 && pdu.readUInt32LE(pdo + lengthBytes) !== crc32c(data)) throw new Error('data digest mismatch');
    data.copy(target, offsetBytes);
    command.readBytes += lengthBytes;
    if ((flags & pduFlag.success) !== 0) {
      if (command.readBytes !== target.length || (flags & pduFlag.lastPdu) === 0) throw new Error('C2HData SUCCESS before all the data');
      command.resolve({ dw0: 0, dw1: 0, status: 0 });
    }
  }

  /** R2T: sends the asked range of the command's data in H2CData PDUs of at most MAXH2CDATA. */
  private onR2t(pdu: Buffer): void {
    const command = this.command(pdu.readUInt16LE(8));
    const ttag = pdu.readUInt16LE(10);
    const offsetBytes = pdu.readUInt32LE(12);
    const lengthBytes = pdu.readUInt32LE(16);
    const data = command.transfer.write;
    if (!data || lengthBytes === 0 || offsetBytes + lengthBytes > data.length) throw new Error('R2T outside the command’s data');
    for (let sent = 0; sent < lengthBytes; ) {
      const piece = Math.min(this.maxH2cDataBytes, lengthBytes - sent);
      this.sendH2cData(command.cid, ttag, offsetBytes + sent, data.subarray(offsetBytes + sent, offsetBytes + sent + piece), sent + piece === lengthBytes);
      sent += piece;
    }
  }

  private sendH2cData(cid: number, ttag: number, offsetBytes: number, data: Buffer, last: boolean): void {
    const headerEnd = dataHeaderBytes + (this.digests.header ? digestBytes : 0);
    const header = Buffer.alloc(headerEnd);
    let flags = last ? pduFlag.lastPdu : 0;
    if (this.digests.header) flags |= pduFlag.headerDigest;
    if (this.digests.data) flags |= pduFlag.dataDigest;
    writeCommonHeader(header, pduType.h2cData, flags, dataHeaderBytes, headerEnd, headerEnd + data.length + (this.digests.data ? digestBytes : 0));
    header.writeUInt16LE(cid, 8);
    header.writeUInt16LE(ttag, 10);
    header.writeUInt32LE(offsetBytes, 12);
    header.writeUInt32LE(data.length, 16);
    if (this.digests.header) header.writeUInt32LE(crc32c(header, 0, dataHeaderBytes), dataHeaderBytes);
    this.socket.cork();
    this.socket.write(header);
    this.socket.write(data);
    if (this.digests.data) this.socket.write(encodeDataDigest(data));
    this.socket.uncork();
  }

  private protocolError(reason: string): void {
    this.fail(new StorageError('EIO', { detail: `NVMe/TCP protocol error from the controller: ${reason}` }));
  }

  /** Ends the connection once: every command in flight (and every waiter) fails with `error`. */
  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    this.socket.destroy();
    for (const command of [...this.inFlight.values()]) command.reject(error);
    for (const wake of this.waiting.splice(0)) wake();
    for (const listener of this.closeListeners.splice(0)) listener(error);
  }
}
