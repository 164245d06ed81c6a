// What a queue pair hands a command handler, and what it gets back: one NVMe command and its completion.
import { genericStatus, readU32, sct, statusField } from './nvmeSpec.ts';

export interface NvmeCommand {
  /** The 64-byte submission queue entry (a view the queue pair keeps until the completion is sent). */
  readonly sqe: Buffer;
  readonly opcode: number;
  readonly cid: number;
  readonly nsid: number;
  /** Bytes the command moves (its SGL's length). */
  readonly transferBytes: number;
  /** The host's data (in-capsule or through R2T), for commands that carry some. */
  readonly data: Buffer | undefined;
}

/**
 * A command's completion. Every one has the same fields in the same order (made by `completion`):
 * the queue pair reads them for every command, and one shape keeps those reads monomorphic (a
 * dozen shapes made them megamorphic, a visible share of a 4 KiB read).
 */
export interface NvmeCompletion {
  /** The CQE status field without the phase bit (`statusField`), 0 for success. */
  readonly status: number;
  readonly dw0: number;
  readonly dw1: number;
  /** Data for the host (C2HData), at most `transferBytes`. */
  readonly data: Buffer | undefined;
  /**
   * A buffer of the target's pool (the one executeIo was given) holding `data` at offset
   * `c2hHeadroomBytes`, whose front is free for the C2HData header: header and data then leave in
   * one socket write, and the queue pair gives the buffer back once the socket took it.
   */
  readonly frame: Buffer | undefined;
}

export function completion(status: number, dw0 = 0, dw1 = 0, data: Buffer | undefined = undefined, frame: Buffer | undefined = undefined): NvmeCompletion {
  return { status, dw0, dw1, data, frame };
}

export const success: NvmeCompletion = completion(0);

export function failed(type: number, code: number, dw0 = 0): NvmeCompletion {
  return completion(statusField(type, code), dw0);
}

export const invalidField = failed(sct.generic, genericStatus.invalidField);
export const invalidOpcode = failed(sct.generic, genericStatus.invalidOpcode);

export function cdw(command: NvmeCommand, index: 10 | 11 | 12 | 13 | 14 | 15): number {
  return readU32(command.sqe, 40 + (index - 10) * 4);
}

/** Hands the host `data` truncated to what it asked for. */
export function withData(command: NvmeCommand, data: Buffer, dw0 = 0): NvmeCompletion {
  return completion(0, dw0, 0, data.length > command.transferBytes ? data.subarray(0, command.transferBytes) : data);
}
