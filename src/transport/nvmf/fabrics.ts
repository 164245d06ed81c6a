// Fabrics commands (NVMe-oF 1.1 §3.3): Connect (which creates a controller on an admin queue or
// binds an I/O queue to one), Property Get/Set and Disconnect.
import { type NvmfTarget } from '../../actors/nvmfTarget.ts';
import { nvmfKeepAliveTimeoutMsDefault, nvmfKeepAliveTimeoutMsMax, nvmfQueueDepthMax } from '../../constants.ts';
import { type NvmeCommand, type NvmeCompletion, completion, failed, invalidField, success } from './command.ts';
import { NvmfController } from './controller.ts';
import { commandSpecificStatus, fabricsType, genericStatus, readNulTerminated, sct } from './nvmeSpec.ts';

export const connectDataBytes = 1024;

/** Connect's Invalid Parameters status, naming the bad field: in the data (IATTR 1) or the SQE, at byte `offset`. */
function invalidParameter(inData: boolean, offset: number): NvmeCompletion {
  return failed(sct.commandSpecific, commandSpecificStatus.connectInvalidParameters, ((inData ? 1 : 0) << 16) | offset);
}

export interface ConnectRequest {
  readonly qid: number;
  /** Submission queue entries, 1-based. */
  readonly queueEntries: number;
  readonly keepAliveTimeoutMs: number;
  readonly hostId: Buffer;
  readonly cntlid: number;
  readonly subNqn: string;
  readonly hostNqn: string;
}

/** Decodes a Connect command and its 1024 bytes of data, or answers why it is malformed. */
export function decodeConnect(command: NvmeCommand): ConnectRequest | NvmeCompletion {
  const { sqe, data } = command;
  if (sqe.readUInt16LE(40) !== 0) return failed(sct.commandSpecific, commandSpecificStatus.connectIncompatibleFormat);
  if (data === undefined || data.length < connectDataBytes) return failed(sct.generic, genericStatus.dataSglLengthInvalid);
  const qid = sqe.readUInt16LE(42);
  const queueEntries = sqe.readUInt16LE(44) + 1;
  if (queueEntries < 2 || queueEntries > nvmfQueueDepthMax) return invalidParameter(false, 44);
  return {
    qid,
    queueEntries,
    keepAliveTimeoutMs: sqe.readUInt32LE(48),
    hostId: Buffer.from(data.subarray(0, 16)),
    cntlid: data.readUInt16LE(16),
    subNqn: readNulTerminated(data, 256, 256),
    hostNqn: readNulTerminated(data, 512, 256),
  };
}

export type ConnectOutcome = { completion: NvmeCompletion; controller?: NvmfController };

/**
 * Admits a host: the subsystem must exist, listen on this port, accept hosts now and allow this
 * host NQN; an I/O queue must name a live controller of the same host with a free queue id.
 */
export function connect(target: NvmfTarget, listenKey: string, request: ConnectRequest): ConnectOutcome {
  const subsystem = target.subsystem(request.subNqn);
  if (!subsystem || !subsystem.listensOn(listenKey)) return { completion: invalidParameter(true, 256) };
  if (!subsystem.hostAllowed(request.hostNqn)) return { completion: failed(sct.commandSpecific, commandSpecificStatus.connectInvalidHost) };
  if (request.qid === 0) {
    const askedMs = request.keepAliveTimeoutMs;
    // A discovery controller without keep-alive would live forever; an I/O one may ask for none.
    const timeoutMs = askedMs === 0 && subsystem.isDiscovery ? nvmfKeepAliveTimeoutMsDefault : Math.min(askedMs, nvmfKeepAliveTimeoutMsMax);
    const controller = new NvmfController(target, subsystem, request.hostNqn, request.hostId, timeoutMs, listenKey);
    // A paused or full subsystem: the host may retry (DNR clear).
    if (!controller.attach()) return { completion: completion((sct.commandSpecific << 9) | (commandSpecificStatus.connectControllerBusy << 1)) };
    return { completion: completion(0, controller.cntlid), controller };
  }
  const found = subsystem.controller(request.cntlid);
  if (!(found instanceof NvmfController) || found.hostNqn !== request.hostNqn) return { completion: invalidParameter(true, 16) };
  if (!found.enabled || request.qid > found.ioQueuesGranted || found.hasQueue(request.qid)) return { completion: invalidParameter(false, 42) };
  return { completion: completion(0, found.cntlid), controller: found };
}

/** Property Get/Set on a connected controller (Connect and Disconnect are the queue pair's). */
export function executeProperty(controller: NvmfController, command: NvmeCommand): NvmeCompletion {
  const fctype = command.sqe[4];
  const eightBytes = (command.sqe[40]! & 0x7) === 1;
  const offset = command.sqe.readUInt32LE(44);
  if (fctype === fabricsType.propertyGet) {
    const value = controller.propertyGet(offset, eightBytes);
    if (value === undefined) return invalidField;
    return completion(0, Number(value & 0xffffffffn), Number(value >> 32n));
  }
  if (fctype === fabricsType.propertySet) {
    return controller.propertySet(offset, command.sqe.readUInt32LE(48)) ? success : invalidField;
  }
  return invalidField;
}
