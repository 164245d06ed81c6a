// One NVMe/TCP connection: a queue pair (admin or I/O) of one controller. It frames PDUs from the
// socket, answers ICReq, receives command capsules (in-capsule data, or data asked for with R2T
// and received in H2CData PDUs straight into the command's buffer), runs commands concurrently
// and sends their completions (C2HData with SUCCESS for reads, else CapsuleResp). A PDU that
// breaks the transport rules ends the connection with a C2HTermReq, never the node.
//
// Memory stays bounded: a command's payload is reserved in the queue's and the target's byte
// budgets before its buffer is taken, at most the negotiated queue depth of commands exist, and a
// PDU is at most nvmfPduBytesMax. Socket writes of one event-loop turn leave in one writev (cork
// until setImmediate).
import type { Socket } from 'node:net';
import type { NvmfTarget } from '../../actors/nvmfTarget.ts';
import { nvmfH2cDataBytesMax, nvmfInCapsuleDataBytes, nvmfPduBytesMax, nvmfQueueDepthMax, nvmfTransferBytesMax } from '../../constants.ts';
import { log } from '../../log.ts';
import type { ByteBudget } from '../byteBudget.ts';
import type { BufferPool } from '../nbd/bufferPool.ts';
import { readIntoBuffer } from '../nbd/socketReadBuffer.ts';
import { executeAdmin } from './adminCommands.ts';
import { type NvmeCommand, type NvmeCompletion, completion, failed, invalidOpcode, success } from './command.ts';
import type { ControllerQueue, NvmfController } from './controller.ts';
import { crc32c } from './crc32c.ts';
import { connect, connectDataBytes, decodeConnect, executeProperty } from './fabrics.ts';
import { executeIo } from './ioCommands.ts';
import { adminOpcode, fabricsType, genericStatus, ioOpcode, readU16, readU32, sct, sqeBytes } from './nvmeSpec.ts';
import {
  type Digests,
  c2hDataOffset,
  commonHeaderBytes,
  dataHeaderBytes,
  digestBytes,
  encodeC2hDataHeader,
  encodeC2hTermReq,
  encodeCapsuleResp,
  encodeDataDigest,
  encodeIcResp,
  encodeR2t,
  expectedHostHeaderBytes,
  icBytes,
  pduFlag,
  pduType,
  termReqFes,
  writeC2hDataHeader,
} from './pdu.ts';

/** What a queue pair needs of its listener. */
export interface QueuePairContext {
  readonly target: NvmfTarget;
  /** `traddr:trsvcid` of the listener the connection came through. */
  readonly listenKey: string;
  readonly nodeBudget: ByteBudget;
  readonly buffers: BufferPool;
  /** Payload bytes (in-capsule and H2CData) received, read in place or copied out of a read buffer. */
  readonly payloadReceived: { inPlaceBytes: number; copiedBytes: number };
  /** Foreground first: background checksum steps back off while hosts do I/O. */
  noteForeground(): void;
  /**
   * Connect succeeded: the queue leaves the listener's handshake pool (and its deadline) and counts
   * only against the connection cap.
   */
  noteConnected(queue: NvmfQueuePair): void;
}

/** In-capsule data a queue accepts: the admin queue takes 8 KiB (NVMe-oF 1.1 §2.3.4), I/O queues what IOCCSZ says. */
const adminInCapsuleBytesMax = 8192;
/** Transient Transport Error: a data digest did not match; the host may retry the command. */
const transientTransportError = 0x22;
// The header buffer holds a header, its digest and padding up to PDO (at most 255).
const headerBufferBytes = 256;
/**
 * Room in front of a pooled read buffer's data for a C2HData header: 24 bytes, a digest and padding
 * to the host's alignment (HPDA at most 31: 128 bytes).
 */
export const c2hHeadroomBytes = 128;
// Each connection reads its socket into one buffer of this size, kept while it is open.
const socketReadBufferBytes = 256 * 1024;
/**
 * Payload bytes still to come from which the socket reads them straight into the command's buffer
 * (no copy out of the read buffer: at 128 KiB writes that copy is a third of the bytes moved).
 */
const directReadBytesMin = 16 * 1024;
/** What a read takes while large payloads are awaited and it does not land in one (largePayloadsAwaited). */
const cappedReadBytes = 4096;

type SlotState = 'free' | 'receiving' | 'r2t' | 'executing';

/** One command in flight; its index is the transfer tag of its R2T. */
interface Slot {
  readonly index: number;
  readonly sqe: Buffer;
  state: SlotState;
  cid: number;
  transferBytes: number;
  data: Buffer | undefined;
  pooled: Buffer | undefined;
  receivedBytes: number;
  /** Why the command fails once its data is in (a bad data digest, a bad in-capsule SGL). */
  failure: NvmeCompletion | undefined;
  /**
   * Payload bytes this command holds in the queue's and the target's budgets (0: none): a count,
   * given back with giveBack, rather than a release function per request.
   */
  heldBytes: number;
  /** Where the command's completion goes: made once per slot, not per command. */
  readonly done: (completion: NvmeCompletion) => void;
}

type Phase = 'header' | 'data' | 'dataDigest' | 'closed';

export class NvmfQueuePair implements ControllerQueue {
  qid = -1;
  private controller: NvmfController | undefined;
  private digests: Digests = { header: false, data: false };
  private hostAlignmentBytes = 4;
  private initialized = false;
  private queueEntries = 1;
  private sqhd = 0;
  private readonly slots: Slot[] = [];
  private readonly freeSlots: number[] = [];
  private phase: Phase = 'header';
  private readonly header = Buffer.alloc(headerBufferBytes);
  private headerFill = 0;
  private headerNeed = commonHeaderBytes;
  private dataTarget: Buffer | undefined;
  private dataSlot: Slot | undefined;
  private dataFill = 0;
  private readonly digestBuffer = Buffer.alloc(digestBytes);
  private digestFill = 0;
  /** PDUs of this event-loop turn not yet handed to the socket, and what to call once they left. */
  private outgoing: Buffer[] = [];
  /** Read buffers (pool frames) among `outgoing`, and the budget bytes their reads hold: given back once written. */
  private outgoingFrames: Buffer[] = [];
  private outgoingHeldBytes = 0;
  private flushScheduled = false;
  /**
   * Whether this socket read's commands were already reported as traffic (keep-alive) and as
   * foreground I/O (the scheduler): once per read is as good as once per command, and each report
   * reads a clock.
   */
  private trafficNoted = false;
  private foregroundNoted = false;
  private readonly readBuffer = Buffer.allocUnsafeSlow(socketReadBufferBytes);
  /** The view of `dataTarget` the socket's next read lands in, when it reads a payload in place. */
  private directTarget: Buffer | undefined;
  /**
   * Commands sent an R2T for a payload of `directReadBytesMin` or more whose data has not all
   * come. While there are any, reads that do not land in a payload take at most
   * `cappedReadBytes` (`cappedRead`): a full read-buffer read would pull up to 256 KiB of the
   * next payloads into the read buffer, to be copied out again; capped, the next H2CData header
   * comes with at most a few KiB of its payload, and the rest is read in place.
   */
  private largePayloadsAwaited = 0;
  private readonly cappedRead: Buffer;
  /** The most commands this queue held at once (stats, tests: the depth hosts really reach). */
  inFlightPeak = 0;

  constructor(
    readonly id: number,
    private readonly socket: Socket,
    private readonly context: QueuePairContext,
    private readonly queueBudget: ByteBudget,
    private readonly onClosed: (queue: NvmfQueuePair) => void,
  ) {
    for (let index = 0; index < nvmfQueueDepthMax; index++) {
      const slot: Slot = {
        index,
        sqe: Buffer.alloc(sqeBytes),
        state: 'free',
        cid: 0,
        transferBytes: 0,
        data: undefined,
        pooled: undefined,
        receivedBytes: 0,
        failure: undefined,
        heldBytes: 0,
        done: (completion) => this.finish(slot, completion),
      };
      this.slots.push(slot);
    }
    // Before Connect one command at a time is enough (the Connect itself).
    this.freeSlots.push(0);
    this.cappedRead = this.readBuffer.subarray(0, cappedReadBytes);
    socket.setNoDelay(true);
    // Accepted paused: reads land in one buffer of the queue's own when this Node allows it (no
    // allocation per read; consume() copies out everything it keeps before returning), or
    // straight into a large payload's buffer (nextReadBuffer), else they come as 'data' events.
    const ownBuffer = readIntoBuffer(
      socket,
      this.readBuffer,
      (bytes, buffer) => (buffer === this.directTarget ? this.consumeDirect(bytes) : this.consumeGuarded(buffer.subarray(0, bytes))),
      () => this.nextReadBuffer(),
    );
    if (!ownBuffer) socket.on('data', (chunk: Buffer) => this.consumeGuarded(chunk));
    socket.resume();
    socket.on('error', () => undefined);
    socket.on('close', () => this.closed());
  }

  /** A bug met while handling one host's PDUs ends that connection, never the node. */
  private consumeGuarded(chunk: Buffer): void {
    try {
      this.consume(chunk);
    } catch (error) {
      log('error', 'nvmf connection failed unexpectedly; closed', { queue: this.id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      this.close('internal error');
    }
  }

  /**
   * Where the next socket read lands: the rest of a large payload in place, else the read buffer
   * (its first few KiB while large payloads are awaited).
   */
  private nextReadBuffer(): Buffer {
    if (this.phase === 'data' && this.dataTarget!.length - this.dataFill >= directReadBytesMin) {
      this.directTarget = this.dataTarget!.subarray(this.dataFill);
      return this.directTarget;
    }
    this.directTarget = undefined;
    return this.largePayloadsAwaited > 0 ? this.cappedRead : this.readBuffer;
  }

  /** `bytes` of the payload were read in place (into `directTarget`, at `dataFill`). */
  private consumeDirect(bytes: number): void {
    try {
      this.directTarget = undefined;
      if (this.phase !== 'data') return; // terminated meanwhile: what still arrives is dropped
      this.trafficNoted = this.foregroundNoted = false;
      this.dataFill += bytes;
      this.context.payloadReceived.inPlaceBytes += bytes;
      if (this.dataFill === this.dataTarget!.length) this.afterData();
    } catch (error) {
      log('error', 'nvmf connection failed unexpectedly; closed', { queue: this.id, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      this.close('internal error');
    }
  }

  /** Parses what arrived: headers into `header`, data straight into the command's buffer. */
  private consume(chunk: Buffer): void {
    this.trafficNoted = this.foregroundNoted = false;
    let at = 0;
    while (at < chunk.length && this.phase !== 'closed') {
      if (this.phase === 'header') {
        const take = Math.min(this.headerNeed - this.headerFill, chunk.length - at);
        // At most 256 bytes: a loop costs less than Buffer.copy's checks and views.
        const header = this.header;
        for (let index = 0, to = this.headerFill; index < take; index++) header[to + index] = chunk[at + index]!;
        at += take;
        this.headerFill += take;
        if (this.headerFill < this.headerNeed) continue;
        if (this.headerNeed === commonHeaderBytes) this.onCommonHeader();
        else this.onHeader();
      } else if (this.phase === 'data') {
        const take = Math.min(this.dataTarget!.length - this.dataFill, chunk.length - at);
        chunk.copy(this.dataTarget!, this.dataFill, at, at + take);
        at += take;
        this.dataFill += take;
        this.context.payloadReceived.copiedBytes += take;
        if (this.dataFill === this.dataTarget!.length) this.afterData();
      } else {
        const take = Math.min(digestBytes - this.digestFill, chunk.length - at);
        chunk.copy(this.digestBuffer, this.digestFill, at, at + take);
        at += take;
        this.digestFill += take;
        if (this.digestFill === digestBytes) this.afterDataDigest();
      }
    }
  }

  private get pduTypeNow(): number {
    return this.header[0]!;
  }

  private get plen(): number {
    return readU32(this.header, 4);
  }

  /** Checks the common header and works out how much header (up to PDO) follows. */
  private onCommonHeader(): void {
    const type = this.header[0]!;
    const flags = this.header[1]!;
    const hlen = this.header[2]!;
    const pdo = this.header[3]!;
    const plen = this.plen;
    const expected = expectedHostHeaderBytes(type);
    if (expected === undefined) return this.terminate(termReqFes.invalidHeaderField, 0);
    if (!this.initialized && type !== pduType.icReq) return this.terminate(termReqFes.pduSequenceError, 0);
    if (this.initialized && type === pduType.icReq) return this.terminate(termReqFes.pduSequenceError, 0);
    if (hlen !== expected) return this.terminate(termReqFes.invalidHeaderField, 2);
    if (plen > nvmfPduBytesMax) return this.terminate(termReqFes.dataTransferLimitExceeded, 4);
    const headerDigest = this.headerDigestBytes(type);
    if (type === pduType.capsuleCmd || type === pduType.h2cData) {
      // The digest flags must say what was negotiated (NVMe/TCP 1.0 §3.6.2.2).
      if (((flags & pduFlag.headerDigest) !== 0) !== this.digests.header) return this.terminate(termReqFes.invalidHeaderField, 1);
    }
    const headerEnd = hlen + headerDigest;
    if (plen < headerEnd) return this.terminate(termReqFes.invalidHeaderField, 4);
    const hasData = plen > headerEnd;
    if (hasData) {
      if (type !== pduType.capsuleCmd && type !== pduType.h2cData) return this.terminate(termReqFes.invalidHeaderField, 4);
      if (pdo < headerEnd || pdo > plen) return this.terminate(termReqFes.invalidHeaderField, 3);
      if (((flags & pduFlag.dataDigest) !== 0) !== this.digests.data) return this.terminate(termReqFes.invalidHeaderField, 1);
      if (plen - pdo < (this.digests.data ? digestBytes + 1 : 1)) return this.terminate(termReqFes.invalidHeaderField, 4);
    } else if (type === pduType.h2cData) {
      return this.terminate(termReqFes.invalidHeaderField, 4);
    }
    this.headerNeed = hasData ? pdo : Math.min(plen, headerBufferBytes);
    if (!hasData && plen > headerBufferBytes) return this.terminate(termReqFes.invalidHeaderField, 4);
    if (this.headerFill >= this.headerNeed) this.onHeader();
  }

  private headerDigestBytes(type: number): number {
    return this.digests.header && type !== pduType.icReq && type !== pduType.h2cTermReq ? digestBytes : 0;
  }

  /** The PDU's data bytes (without its digest). */
  private dataBytes(): number {
    const pdo = this.header[3]!;
    const hasData = this.plen > this.header[2]! + this.headerDigestBytes(this.pduTypeNow);
    return hasData ? this.plen - pdo - (this.digests.data ? digestBytes : 0) : 0;
  }

  private onHeader(): void {
    const type = this.pduTypeNow;
    const hlen = this.header[2]!;
    if (this.headerDigestBytes(type) > 0) {
      const found = readU32(this.header, hlen);
      if (found !== crc32c(this.header, 0, hlen)) return this.terminate(termReqFes.headerDigestError, found);
    }
    switch (type) {
      case pduType.icReq:
        return this.onIcReq();
      case pduType.h2cTermReq:
        log('info', 'nvmf host ended the connection (H2CTermReq)', { queue: this.id, fes: this.header.readUInt16LE(8) });
        return this.close('H2CTermReq');
      case pduType.capsuleCmd:
        return this.onCapsule();
      case pduType.h2cData:
        return this.onH2cData();
    }
  }

  private nextPdu(): void {
    this.phase = this.phase === 'closed' ? 'closed' : 'header';
    this.headerFill = 0;
    this.headerNeed = commonHeaderBytes;
    this.dataTarget = undefined;
    this.dataSlot = undefined;
  }

  private onIcReq(): void {
    if (this.plen !== icBytes) return this.terminate(termReqFes.invalidHeaderField, 4);
    const pfv = this.header.readUInt16LE(8);
    const hpda = this.header[10]!;
    const digestBits = this.header[11]!;
    if (pfv !== 0) return this.terminate(termReqFes.invalidHeaderField, 8);
    if (hpda > 31) return this.terminate(termReqFes.invalidHeaderField, 10);
    this.hostAlignmentBytes = (hpda + 1) * 4;
    this.digests = { header: (digestBits & 1) !== 0, data: (digestBits & 2) !== 0 };
    this.initialized = true;
    this.send(encodeIcResp({ digests: this.digests, maxH2cDataBytes: nvmfH2cDataBytesMax }));
    this.nextPdu();
  }

  /** A command capsule: takes a slot, then receives its in-capsule data, asks for its data (R2T), or runs it. */
  private onCapsule(): void {
    const slotIndex = this.freeSlots.pop();
    // More commands than the queue has entries: the host broke flow control.
    if (slotIndex === undefined) return this.terminate(termReqFes.pduSequenceError, 0);
    const slot = this.slots[slotIndex]!;
    const inFlight = this.queueEntries - this.freeSlots.length;
    if (inFlight > this.inFlightPeak) this.inFlightPeak = inFlight;
    const header = this.header;
    const sqe = slot.sqe;
    for (let index = 0; index < sqeBytes; index++) sqe[index] = header[commonHeaderBytes + index]!;
    slot.cid = readU16(sqe, 2);
    slot.failure = undefined;
    slot.receivedBytes = 0;
    const sglType = sqe[39]!;
    const sglLength = readU32(sqe, 32);
    const inCapsuleBytes = this.dataBytes();
    if (inCapsuleBytes > 0) {
      const limit = this.qid > 0 ? nvmfInCapsuleDataBytes : adminInCapsuleBytesMax;
      if (inCapsuleBytes > limit) return this.terminate(termReqFes.dataTransferLimitExceeded, 4);
      slot.transferBytes = inCapsuleBytes;
      slot.pooled = this.context.buffers.acquire(inCapsuleBytes);
      slot.data = slot.pooled.subarray(0, inCapsuleBytes);
      slot.state = 'receiving';
      // Only an SGL data block at offset 0 may describe in-capsule data of exactly this length.
      if (sglType !== 0x01) slot.failure = failed(sct.generic, genericStatus.sglDescriptorTypeInvalid);
      else if (readU32(sqe, 24) !== 0 || readU32(sqe, 28) !== 0) slot.failure = failed(sct.generic, genericStatus.sglOffsetInvalid);
      else if (sglLength !== inCapsuleBytes) slot.failure = failed(sct.generic, genericStatus.dataSglLengthInvalid);
      this.receiveInto(slot, slot.data);
      return;
    }
    this.nextPdu();
    slot.transferBytes = sglLength;
    slot.data = undefined;
    slot.pooled = undefined;
    if (sglLength === 0) return this.run(slot);
    if (sglType !== 0x5a) return this.finish(slot, failed(sct.generic, genericStatus.sglDescriptorTypeInvalid));
    if (sglLength > nvmfTransferBytesMax) return this.finish(slot, failed(sct.generic, genericStatus.dataSglLengthInvalid));
    if (this.hostToController(slot.sqe)) this.requestData(slot);
    else this.run(slot);
  }

  /** Whether a command carries data from the host (opcode bits, or Fabrics command type bits). */
  private hostToController(sqe: Buffer): boolean {
    const bits = sqe[0] === adminOpcode.fabrics ? sqe[4]! & 0x3 : sqe[0]! & 0x3;
    return bits === 0x1;
  }

  private receiveInto(slot: Slot, target: Buffer): void {
    this.phase = 'data';
    this.dataSlot = slot;
    this.dataTarget = target;
    this.dataFill = 0;
  }

  /** Reserves the payload in the queue's and the target's budgets, then sends one R2T for all of it. */
  private requestData(slot: Slot): void {
    slot.state = 'r2t';
    const bytes = slot.transferBytes;
    if (this.reserveNow(bytes)) return this.sendR2t(slot, bytes);
    void this.reserveLater(bytes).then(() => {
      if (this.phase === 'closed') return this.giveBack(bytes);
      this.sendR2t(slot, bytes);
    });
  }

  private sendR2t(slot: Slot, heldBytes: number): void {
    slot.heldBytes = heldBytes;
    if (slot.transferBytes >= directReadBytesMin) this.largePayloadsAwaited++;
    slot.pooled = this.context.buffers.acquire(slot.transferBytes);
    slot.data = slot.pooled.subarray(0, slot.transferBytes);
    this.send(encodeR2t(this.digests, { cid: slot.cid, ttag: slot.index, offsetBytes: 0, lengthBytes: slot.transferBytes }));
  }

  /** H2CData: data for the command whose R2T carried this transfer tag, in order, inside its range. */
  private onH2cData(): void {
    const cid = readU16(this.header, 8);
    const ttag = readU16(this.header, 10);
    const offsetBytes = readU32(this.header, 12);
    const lengthBytes = readU32(this.header, 16);
    const slot = this.slots[ttag];
    if (!slot || slot.state !== 'r2t' || slot.cid !== cid || slot.data === undefined) return this.terminate(termReqFes.invalidHeaderField, 10);
    if (lengthBytes !== this.dataBytes()) return this.terminate(termReqFes.invalidHeaderField, 16);
    if (lengthBytes > nvmfH2cDataBytesMax) return this.terminate(termReqFes.dataTransferLimitExceeded, 16);
    if (offsetBytes !== slot.receivedBytes || offsetBytes + lengthBytes > slot.transferBytes) {
      return this.terminate(termReqFes.dataTransferOutOfRange, 12);
    }
    this.receiveInto(slot, slot.data.subarray(offsetBytes, offsetBytes + lengthBytes));
  }

  private afterData(): void {
    if (this.digests.data) {
      this.phase = 'dataDigest';
      this.digestFill = 0;
      return;
    }
    this.dataComplete();
  }

  private afterDataDigest(): void {
    const expected = crc32c(this.dataTarget!);
    // A bad data digest fails the command (Transient Transport Error), not the connection.
    if (readU32(this.digestBuffer, 0) !== expected) this.dataSlot!.failure = completion((sct.generic << 9) | (transientTransportError << 1));
    this.dataComplete();
  }

  /** A PDU's data is in: an in-capsule command runs now; an R2T command once all its data came. */
  private dataComplete(): void {
    const slot = this.dataSlot!;
    const received = this.dataTarget!.length;
    const wasCapsule = this.pduTypeNow === pduType.capsuleCmd;
    this.nextPdu();
    if (wasCapsule) return this.run(slot);
    slot.receivedBytes += received;
    if (slot.receivedBytes !== slot.transferBytes) return;
    if (slot.transferBytes >= directReadBytesMin) this.largePayloadsAwaited--;
    this.run(slot);
  }

  private run(slot: Slot): void {
    slot.state = 'executing';
    if (!this.trafficNoted && this.controller) {
      this.trafficNoted = true;
      this.controller.noteTraffic();
    }
    const command: NvmeCommand = {
      sqe: slot.sqe,
      opcode: slot.sqe[0]!,
      cid: slot.cid,
      nsid: readU32(slot.sqe, 4),
      transferBytes: slot.transferBytes,
      data: slot.data,
    };
    if (slot.failure) return this.finish(slot, slot.failure);
    if (command.opcode === adminOpcode.fabrics) return this.finish(slot, this.fabrics(command));
    const controller = this.controller;
    if (!controller || !controller.enabled) return this.finish(slot, failed(sct.generic, genericStatus.commandSequenceError));
    if (this.qid === 0) {
      const result = executeAdmin(controller, command, () => controller.holdAsyncEvent(slot.cid, this));
      if (result !== 'held') this.finish(slot, result);
      return;
    }
    if (!this.foregroundNoted) {
      this.foregroundNoted = true;
      this.context.noteForeground();
    }
    // A read's buffer is reserved in the budgets as a write's is (before its R2T); the bytes go
    // back when its data has left (finish → sendData → flush).
    const bytes = slot.transferBytes;
    if (command.opcode === ioOpcode.read && bytes > 0 && slot.heldBytes === 0) {
      if (!this.reserveNow(bytes)) {
        void this.reserveLater(bytes).then(() => {
          slot.heldBytes = bytes;
          this.executeIoCommand(controller, slot, command);
        });
        return;
      }
      slot.heldBytes = bytes;
    }
    this.executeIoCommand(controller, slot, command);
  }

  private executeIoCommand(controller: NvmfController, slot: Slot, command: NvmeCommand): void {
    try {
      executeIo(controller.subsystem, command, this.context.buffers, slot.done);
    } catch (error) {
      // A bug before the command reached the bdev: this command fails, the connection goes on.
      log('error', 'nvmf I/O command failed unexpectedly', { error: String(error) });
      this.finish(slot, failed(sct.generic, genericStatus.internalError));
    }
  }

  /** Takes `bytes` in the queue's and the target's budgets at once; false (nothing taken) when either is full. */
  private reserveNow(bytes: number): boolean {
    if (!this.queueBudget.tryTake(bytes)) return false;
    if (this.context.nodeBudget.tryTake(bytes)) return true;
    this.queueBudget.give(bytes);
    return false;
  }

  /** Waits its turn in both budgets (first come, first served), then holds `bytes` in each. */
  private async reserveLater(bytes: number): Promise<void> {
    await this.queueBudget.take(bytes);
    await this.context.nodeBudget.take(bytes);
  }

  /** Gives back what reserveNow or reserveLater took. */
  private giveBack(bytes: number): void {
    if (bytes === 0) return;
    this.queueBudget.give(bytes);
    this.context.nodeBudget.give(bytes);
  }

  private fabrics(command: NvmeCommand): NvmeCompletion {
    const fctype = command.sqe[4];
    if (fctype === fabricsType.connect) return this.onConnect(command);
    const controller = this.controller;
    if (!controller) return failed(sct.generic, genericStatus.commandSequenceError);
    if (fctype === fabricsType.disconnect) {
      setImmediate(() => this.close('Disconnect'));
      return success;
    }
    if (this.qid !== 0) return invalidOpcode;
    return executeProperty(controller, command);
  }

  private onConnect(command: NvmeCommand): NvmeCompletion {
    if (this.controller) return failed(sct.generic, genericStatus.commandSequenceError);
    if (command.data !== undefined && command.data.length !== connectDataBytes) return failed(sct.generic, genericStatus.dataSglLengthInvalid);
    const request = decodeConnect(command);
    if ('status' in request) return request;
    const outcome = connect(this.context.target, this.context.listenKey, request);
    const controller = outcome.controller;
    if (!controller) return outcome.completion;
    this.qid = request.qid;
    this.queueEntries = request.queueEntries;
    if (!controller.addQueue(this)) return failed(sct.commandSpecific, 0x82, 42);
    this.controller = controller;
    this.context.noteConnected(this);
    // The Connect holds slot 0; the queue's other entries become free slots.
    for (let index = this.queueEntries - 1; index >= 1; index--) this.freeSlots.push(index);
    return outcome.completion;
  }

  completeAsyncEvent(cid: number, dw0: number): void {
    const slot = this.slots.find((candidate) => candidate.state === 'executing' && candidate.cid === cid && candidate.sqe[0] === adminOpcode.asyncEventRequest);
    if (slot) this.finish(slot, completion(0, dw0));
  }

  /** Sends a command's completion (and its data), then frees its slot and payload. */
  private finish(slot: Slot, completion: NvmeCompletion): void {
    const { status, data } = completion;
    const sendsData = this.phase !== 'closed' && data !== undefined && data.length > 0 && status === 0;
    // A read's budget goes back with its buffer, once its data has left for the socket; a
    // write's (and anything else's) now.
    const heldBytes = slot.heldBytes;
    slot.heldBytes = 0;
    this.releasePayload(slot);
    if (sendsData) {
      this.sqhd = (this.sqhd + 1) % this.queueEntries;
      this.sendData(slot, completion, heldBytes);
    } else {
      if (completion.frame !== undefined) this.context.buffers.release(completion.frame);
      this.giveBack(heldBytes);
      if (this.phase !== 'closed') {
        this.sqhd = (this.sqhd + 1) % this.queueEntries;
        this.send(encodeCapsuleResp(this.digests, { dw0: completion.dw0, dw1: completion.dw1, sqhd: this.sqhd, cid: slot.cid, status }));
      }
    }
    slot.state = 'free';
    this.freeSlots.push(slot.index);
  }

  /**
   * C2HData with the command's data (SUCCESS: no CapsuleResp follows unless dw0/dw1 carry
   * something). The read's frame goes back to the pool, and its `heldBytes` to the budgets, once
   * the socket took the data.
   */
  private sendData(slot: Slot, completion: NvmeCompletion, heldBytes: number): void {
    const { status, dw0, dw1, frame } = completion;
    const data = completion.data!;
    const successFlag = dw0 === 0 && dw1 === 0;
    const fields = { cid: slot.cid, offsetBytes: 0, lengthBytes: data.length, last: true, success: successFlag };
    const pdo = c2hDataOffset(this.digests, this.hostAlignmentBytes);
    if (frame !== undefined && pdo <= c2hHeadroomBytes) {
      // Header written into the headroom in front of the data: one write for both.
      const pdu = frame.subarray(c2hHeadroomBytes - pdo, c2hHeadroomBytes + data.length);
      writeC2hDataHeader(pdu, this.digests, this.hostAlignmentBytes, fields);
      this.send(pdu);
    } else {
      this.send(encodeC2hDataHeader(this.digests, this.hostAlignmentBytes, fields));
      this.send(data);
    }
    if (frame !== undefined) this.outgoingFrames.push(frame);
    this.outgoingHeldBytes += heldBytes;
    if (this.digests.data) this.send(encodeDataDigest(data));
    if (!successFlag) this.send(encodeCapsuleResp(this.digests, { dw0, dw1, sqhd: this.sqhd, cid: slot.cid, status }));
  }

  private releasePayload(slot: Slot): void {
    if (slot.pooled) this.context.buffers.release(slot.pooled);
    slot.pooled = undefined;
    slot.data = undefined;
    this.giveBack(slot.heldBytes);
    slot.heldBytes = 0;
  }

  /** Queues `buffer` for the socket; the PDUs of one event-loop turn leave together (one writev). */
  private send(buffer: Buffer): void {
    this.outgoing.push(buffer);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  /** Hands the queued PDUs to the socket in order (also at once before the socket ends). */
  private readonly flush = (): void => {
    this.flushScheduled = false;
    const buffers = this.outgoing;
    if (buffers.length === 0) return;
    const frames = this.outgoingFrames;
    const heldBytes = this.outgoingHeldBytes;
    this.outgoing = [];
    this.outgoingFrames = [];
    this.outgoingHeldBytes = 0;
    // Read buffers and their budget bytes go back from one write callback, not one per PDU (that
    // cost a visible share of a 4 KiB read). A destroyed socket still calls it (with an error).
    const written =
      frames.length === 0 && heldBytes === 0
        ? undefined
        : () => {
            for (const frame of frames) this.context.buffers.release(frame);
            this.giveBack(heldBytes);
          };
    this.socket.cork();
    const last = buffers.length - 1;
    for (let index = 0; index < last; index++) this.socket.write(buffers[index]!);
    if (written) this.socket.write(buffers[last]!, written);
    else this.socket.write(buffers[last]!);
    this.socket.uncork();
  };

  /** Ends the connection for a fatal transport error: C2HTermReq quoting the header, then close. */
  private terminate(fes: number, fei: number): void {
    if (this.phase === 'closed') return;
    log('warn', 'nvmf connection terminated (C2HTermReq)', { queue: this.id, fes, fei, pduType: this.pduTypeNow });
    this.send(encodeC2hTermReq(fes, fei, this.header.subarray(0, Math.min(this.headerFill, dataHeaderBytes + 104))));
    this.phase = 'closed';
    this.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  close(reason: string): void {
    if (this.phase !== 'closed') log('debug', 'nvmf queue closed', { queue: this.id, qid: this.qid, reason });
    this.phase = 'closed';
    this.socket.destroy();
  }

  private closed(): void {
    this.phase = 'closed';
    // Commands still waiting for data never run: their payloads go back now.
    for (const slot of this.slots) if (slot.state === 'r2t' || slot.state === 'receiving') this.releasePayload(slot);
    this.controller?.queueClosed(this);
    this.onClosed(this);
  }
}
