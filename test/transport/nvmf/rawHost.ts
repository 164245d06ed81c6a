// A minimal NVMe/TCP host for the nvmf tests, written from the spec, for what SPDK's initiators
// will not send: malformed PDUs, bad digests, disallowed hosts. It reads PDUs whole.
import { type Socket, connect } from 'node:net';
import { crc32cTable } from '../../../src/transport/nvmf/crc32c.ts';

export interface Pdu {
  readonly type: number;
  readonly flags: number;
  readonly bytes: Buffer;
}

export interface Cqe {
  readonly dw0: number;
  readonly cid: number;
  /** Status field without the phase bit: SCT << 8 | SC. */
  readonly sct: number;
  readonly sc: number;
}

export class RawHost {
  private buffered = Buffer.alloc(0);
  private readonly pdus: Pdu[] = [];
  private waiter: (() => void) | undefined;
  closed = false;
  private nextCid = 1;
  headerDigest = false;
  dataDigest = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      while (this.buffered.length >= 8 && this.buffered.length >= this.buffered.readUInt32LE(4)) {
        const plen = this.buffered.readUInt32LE(4);
        this.pdus.push({ type: this.buffered[0]!, flags: this.buffered[1]!, bytes: this.buffered.subarray(0, plen) });
        this.buffered = this.buffered.subarray(plen);
      }
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', () => undefined);
  }

  static open(port: number): Promise<RawHost> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => resolve(new RawHost(socket)));
      socket.once('error', reject);
    });
  }

  /** The next PDU, or undefined once the target closed the connection. */
  async next(timeoutMs = 3000): Promise<Pdu | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.pdus.length === 0) {
      if (this.closed) return undefined;
      if (Date.now() > deadline) throw new Error('no PDU from the target in time');
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 50);
      });
    }
    return this.pdus.shift();
  }

  /** Waits until the target closes the connection. */
  async waitClosed(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the target kept the connection open');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  async icReq(options: { headerDigest?: boolean; dataDigest?: boolean } = {}): Promise<Pdu> {
    const pdu = Buffer.alloc(128);
    pdu.writeUInt8(0x00, 0);
    pdu.writeUInt8(128, 2);
    pdu.writeUInt32LE(128, 4);
    pdu.writeUInt8((options.headerDigest ? 1 : 0) | (options.dataDigest ? 2 : 0), 11);
    this.write(pdu);
    const answer = await this.next();
    if (!answer || answer.type !== 0x01) throw new Error(`expected ICResp, got ${answer?.type}`);
    this.headerDigest = (answer.bytes[11]! & 1) !== 0;
    this.dataDigest = (answer.bytes[11]! & 2) !== 0;
    return answer;
  }

  /** A CapsuleCmd for `sqe` with in-capsule `data`; `corruptDataDigest` flips the digest. */
  capsule(sqe: Buffer, data?: Buffer, options: { corruptDataDigest?: boolean; corruptHeaderDigest?: boolean } = {}): Buffer {
    const hlen = 72;
    const headerEnd = hlen + (this.headerDigest ? 4 : 0);
    const hasData = data !== undefined && data.length > 0;
    const plen = headerEnd + (hasData ? data.length + (this.dataDigest ? 4 : 0) : 0);
    const pdu = Buffer.alloc(plen);
    pdu.writeUInt8(0x04, 0);
    pdu.writeUInt8((this.headerDigest ? 1 : 0) | (hasData && this.dataDigest ? 2 : 0), 1);
    pdu.writeUInt8(hlen, 2);
    pdu.writeUInt8(hasData ? headerEnd : 0, 3);
    pdu.writeUInt32LE(plen, 4);
    sqe.copy(pdu, 8);
    if (this.headerDigest) pdu.writeUInt32LE((crc32cTable(pdu, 0, hlen) ^ (options.corruptHeaderDigest ? 1 : 0)) >>> 0, hlen);
    if (hasData) {
      data.copy(pdu, headerEnd);
      if (this.dataDigest) pdu.writeUInt32LE((crc32cTable(data) ^ (options.corruptDataDigest ? 1 : 0)) >>> 0, headerEnd + data.length);
    }
    return pdu;
  }

  /** An SQE with an SGL for in-capsule data of `dataBytes` (or a transport SGL of `transferBytes`). */
  sqe(opcode: number, fields: { nsid?: number; cdw10?: number; cdw11?: number; cdw12?: number; dataBytes?: number; transferBytes?: number; fctype?: number } = {}): Buffer {
    const sqe = Buffer.alloc(64);
    sqe.writeUInt8(opcode, 0);
    sqe.writeUInt8(0x40, 1); // PSDT: SGL
    sqe.writeUInt16LE(this.nextCid++, 2);
    if (fields.fctype !== undefined) sqe.writeUInt8(fields.fctype, 4);
    else sqe.writeUInt32LE(fields.nsid ?? 0, 4);
    if (fields.dataBytes !== undefined) {
      sqe.writeUInt32LE(fields.dataBytes, 32);
      sqe.writeUInt8(0x01, 39);
    } else if (fields.transferBytes !== undefined) {
      sqe.writeUInt32LE(fields.transferBytes, 32);
      sqe.writeUInt8(0x5a, 39);
    }
    sqe.writeUInt32LE(fields.cdw10 ?? 0, 40);
    sqe.writeUInt32LE(fields.cdw11 ?? 0, 44);
    sqe.writeUInt32LE(fields.cdw12 ?? 0, 48);
    return sqe;
  }

  /** Sends a command and returns its completion (skipping data PDUs, kept in `data`). */
  async command(sqe: Buffer, data?: Buffer, options: { corruptDataDigest?: boolean } = {}): Promise<Cqe & { data: Buffer[] }> {
    this.write(this.capsule(sqe, data, options));
    const received: Buffer[] = [];
    for (;;) {
      const pdu = await this.next();
      if (!pdu) throw new Error('connection closed before the completion');
      if (pdu.type === 0x07) {
        const pdo = pdu.bytes[3]!;
        const length = pdu.bytes.readUInt32LE(16);
        received.push(Buffer.from(pdu.bytes.subarray(pdo, pdo + length)));
        if (pdu.flags & 0x08) return { dw0: 0, cid: pdu.bytes.readUInt16LE(8), sct: 0, sc: 0, data: received };
        continue;
      }
      if (pdu.type !== 0x05) throw new Error(`expected CapsuleResp, got PDU type ${pdu.type}`);
      const status = pdu.bytes.readUInt16LE(22);
      return { dw0: pdu.bytes.readUInt32LE(8), cid: pdu.bytes.readUInt16LE(20), sct: (status >> 9) & 0x7, sc: (status >> 1) & 0xff, data: received };
    }
  }

  /** Fabrics Connect of queue `qid` to `subNqn` as `hostNqn`. */
  connectCommand(qid: number, subNqn: string, hostNqn: string, cntlid = 0xffff): [Buffer, Buffer] {
    const sqe = this.sqe(0x7f, { fctype: 0x01, dataBytes: 1024 });
    sqe.writeUInt16LE(qid, 42);
    sqe.writeUInt16LE(31, 44); // SQSIZE 32 entries
    sqe.writeUInt32LE(qid === 0 ? 10_000 : 0, 48);
    const data = Buffer.alloc(1024);
    data.writeUInt16LE(cntlid, 16);
    data.write(subNqn, 256);
    data.write(hostNqn, 512);
    return [sqe, data];
  }

  /** ICReq, Connect (admin, keep-alive timeout `keepAliveMs`), CC.EN=1; returns the controller id. */
  async connectAdmin(subNqn: string, hostNqn = 'nqn.2014-08.org.nvmexpress:uuid:test-host', keepAliveMs = 10_000): Promise<number> {
    await this.icReq();
    const [sqe, data] = this.connectCommand(0, subNqn, hostNqn);
    sqe.writeUInt32LE(keepAliveMs, 48);
    const connectResult = await this.command(sqe, data);
    if (connectResult.sct !== 0 || connectResult.sc !== 0) throw new Error(`Connect failed: sct ${connectResult.sct} sc ${connectResult.sc}`);
    const set = this.sqe(0x7f, { fctype: 0x00 });
    set.writeUInt32LE(0x14, 44); // CC
    set.writeUInt32LE(0x00460001, 48); // EN, IOSQES 6, IOCQES 4
    await this.command(set);
    return connectResult.dw0 & 0xffff;
  }

  close(): void {
    this.socket.destroy();
  }
}
