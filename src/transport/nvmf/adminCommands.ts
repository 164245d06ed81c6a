// Admin commands a host's NVMe driver needs of a fabrics controller (NVMe base 1.4 §5): Identify,
// Get Log Page, Get/Set Features, Keep Alive, Asynchronous Event Request, Abort.
import { nvmfKeepAliveTimeoutMsMax } from '../../constants.ts';
import { type NvmeCommand, type NvmeCompletion, cdw, completion, failed, invalidField, invalidOpcode, success, withData } from './command.ts';
import type { NvmfController } from './controller.ts';
import { discoveryLogPage } from './discovery.ts';
import { activeNamespaceList, identifyController, identifyNamespace, namespaceDescriptors } from './identify.ts';
import { adminOpcode, commandSpecificStatus, featureId, genericStatus, identifyCns, logPage, sct, writeU64 } from './nvmeSpec.ts';

/** `held` means the command completes later (an AER, when an event comes). */
export type AdminResult = NvmeCompletion | 'held';

export function executeAdmin(controller: NvmfController, command: NvmeCommand, holdAsyncEvent: () => boolean): AdminResult {
  const discovery = controller.subsystem.isDiscovery;
  switch (command.opcode) {
    case adminOpcode.identify:
      return identify(controller, command);
    case adminOpcode.getLogPage:
      return getLogPage(controller, command);
    case adminOpcode.keepAlive:
      return success;
    case adminOpcode.asyncEventRequest:
      return holdAsyncEvent() ? 'held' : failed(sct.commandSpecific, commandSpecificStatus.asyncEventRequestLimitExceeded);
    case adminOpcode.getFeatures:
      return getFeature(controller, command);
    case adminOpcode.setFeatures:
      return discovery && (cdw(command, 10) & 0xff) !== featureId.keepAliveTimer && (cdw(command, 10) & 0xff) !== featureId.asyncEventConfiguration ? invalidField : setFeature(controller, command);
    case adminOpcode.abort:
      // Commands here run to completion; "not aborted" (dw0 bit 0) is always a correct answer.
      return completion(0, 1);
    default:
      return invalidOpcode;
  }
}

function identify(controller: NvmfController, command: NvmeCommand): NvmeCompletion {
  const cns = cdw(command, 10) & 0xff;
  const { subsystem } = controller;
  switch (cns) {
    case identifyCns.controller:
      return withData(command, identifyController(subsystem, controller.cntlid));
    case identifyCns.namespace: {
      const namespace = subsystem.namespaces.get(command.nsid);
      // An inactive NSID in range reads as zeros (NVMe 1.4); outside the range it is invalid.
      if (namespace) return withData(command, identifyNamespace(namespace));
      if (command.nsid === 0 || command.nsid > subsystem.options.maxNamespaces) return failed(sct.generic, genericStatus.invalidNamespaceOrFormat);
      return withData(command, Buffer.alloc(4096));
    }
    case identifyCns.activeNamespaceList:
      if (command.nsid >= 0xfffffffe) return failed(sct.generic, genericStatus.invalidNamespaceOrFormat);
      return withData(command, activeNamespaceList(subsystem, command.nsid));
    case identifyCns.namespaceDescriptors: {
      const namespace = subsystem.namespaces.get(command.nsid);
      if (!namespace) return failed(sct.generic, genericStatus.invalidNamespaceOrFormat);
      return withData(command, namespaceDescriptors(namespace));
    }
    default:
      return invalidField;
  }
}

function getLogPage(controller: NvmfController, command: NvmeCommand): NvmeCompletion {
  const lid = cdw(command, 10) & 0xff;
  const dwords = ((cdw(command, 11) & 0xffff) * 0x10000 + (cdw(command, 10) >>> 16) + 1);
  const offsetBytes = cdw(command, 13) * 0x1_0000_0000 + cdw(command, 12);
  const lengthBytes = Math.min(dwords * 4, command.transferBytes);
  if (offsetBytes % 4 !== 0) return invalidField;
  const page = logPageContent(controller, lid);
  if (page === undefined) return failed(sct.commandSpecific, commandSpecificStatus.invalidLogPage);
  if (offsetBytes > page.length) return invalidField;
  const out = Buffer.alloc(lengthBytes);
  page.copy(out, 0, offsetBytes, Math.min(page.length, offsetBytes + lengthBytes));
  return completion(0, 0, 0, out);
}

function logPageContent(controller: NvmfController, lid: number): Buffer | undefined {
  if (controller.subsystem.isDiscovery) return lid === logPage.discovery ? discoveryLogPage(controller.target, controller.hostNqn) : undefined;
  switch (lid) {
    case logPage.error:
      return Buffer.alloc(64);
    case logPage.health:
      return Buffer.alloc(512);
    case logPage.firmwareSlot: {
      const page = Buffer.alloc(512);
      page.writeUInt8(1, 0); // AFI: slot 1 active
      page.write('lvnode  ', 8, 8, 'latin1');
      return page;
    }
    case logPage.changedNamespaces:
      return changedNamespaceList(controller);
    case logPage.commandEffects:
      return commandEffects();
    case logPage.ana:
      return anaLogPage(controller);
    default:
      return undefined;
  }
}

/** The changed namespace list; reading it clears it (as NVMe says, with RAE clear). */
function changedNamespaceList(controller: NvmfController): Buffer {
  const page = Buffer.alloc(4096);
  const nsids = [...controller.changedNamespaces].sort((a, b) => a - b);
  if (nsids.length > 1024) page.writeUInt32LE(0xffffffff, 0);
  else nsids.forEach((nsid, index) => page.writeUInt32LE(nsid, index * 4));
  controller.changedNamespaces.clear();
  return page;
}

/** Command Effects: which commands are supported and that writes change the namespace content. */
function commandEffects(): Buffer {
  const page = Buffer.alloc(4096);
  const supported = 1;
  const lbcc = 2;
  for (const opcode of [0x02, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18]) page.writeUInt32LE(supported, opcode * 4);
  page.writeUInt32LE(supported, 1024 + 0x02 * 4); // Read
  for (const opcode of [0x00, 0x01, 0x08, 0x09]) page.writeUInt32LE(supported | lbcc, 1024 + opcode * 4);
  return page;
}

const anaStateCode = { optimized: 0x01, non_optimized: 0x02, inaccessible: 0x03 } as const;

/** ANA log page: one group per namespace (ANAGRPID = NSID), in the state of the controller's listener. */
function anaLogPage(controller: NvmfController): Buffer {
  const { subsystem } = controller;
  const namespaces = [...subsystem.namespaces.values()].sort((a, b) => a.nsid - b.nsid);
  const page = Buffer.alloc(16 + namespaces.length * (32 + 4));
  writeU64(page, 0, controller.target.generation);
  page.writeUInt16LE(namespaces.length, 8);
  let offset = 16;
  const state = anaStateCode[controller.anaState()];
  for (const namespace of namespaces) {
    page.writeUInt32LE(namespace.anagrpid, offset);
    page.writeUInt32LE(1, offset + 4); // NNSIDS
    writeU64(page, offset + 8, controller.target.generation);
    page.writeUInt8(state, offset + 16);
    page.writeUInt32LE(namespace.nsid, offset + 32);
    offset += 36;
  }
  return page;
}

function getFeature(controller: NvmfController, command: NvmeCommand): NvmeCompletion {
  const fid = cdw(command, 10) & 0xff;
  switch (fid) {
    case featureId.numberOfQueues: {
      const granted = controller.ioQueuesGranted - 1;
      return completion(0, (granted << 16) | granted);
    }
    case featureId.keepAliveTimer:
      return completion(0, controller.keepAliveTimeoutMs);
    case featureId.volatileWriteCache:
      return completion(0, 1);
    case featureId.hostIdentifier: {
      return withData(command, controller.hostId);
    }
    case featureId.arbitration:
    case featureId.powerManagement:
    case featureId.temperatureThreshold:
    case featureId.errorRecovery:
    case featureId.interruptCoalescing:
    case featureId.writeAtomicity:
    case featureId.asyncEventConfiguration:
      return completion(0, controller.features.get(fid) ?? 0);
    default:
      return invalidField;
  }
}

function setFeature(controller: NvmfController, command: NvmeCommand): NvmeCompletion {
  const fid = cdw(command, 10) & 0xff;
  const value = cdw(command, 11);
  if (cdw(command, 10) >>> 31) return failed(sct.commandSpecific, commandSpecificStatus.featureIdNotSaveable);
  switch (fid) {
    case featureId.numberOfQueues: {
      // Fixed once I/O queues exist (NVMe: only before they are created).
      if (controller.hasIoQueues()) return failed(sct.generic, genericStatus.commandSequenceError);
      const asked = Math.max(value & 0xffff, value >>> 16) + 1;
      controller.ioQueuesGranted = Math.min(asked, controller.ioQueuesGranted);
      const granted = controller.ioQueuesGranted - 1;
      return completion(0, (granted << 16) | granted);
    }
    case featureId.keepAliveTimer:
      controller.setKeepAliveTimeout(Math.min(value, nvmfKeepAliveTimeoutMsMax));
      return success;
    case featureId.volatileWriteCache:
      // The cache cannot be turned off; FLUSH is what makes writes durable.
      return (value & 1) === 1 ? success : invalidField;
    case featureId.hostIdentifier:
      // Over fabrics the host identifier comes with Connect and is not changed (NVMe-oF 1.1).
      return failed(sct.generic, genericStatus.commandSequenceError);
    case featureId.arbitration:
    case featureId.powerManagement:
    case featureId.temperatureThreshold:
    case featureId.errorRecovery:
    case featureId.interruptCoalescing:
    case featureId.writeAtomicity:
    case featureId.asyncEventConfiguration:
      controller.features.set(fid, value);
      return success;
    default:
      return invalidField;
  }
}
