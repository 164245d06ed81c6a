// The NVMe-oF RPCs (SPDK's lib/nvmf/nvmf_rpc.c names, params, results and error texts), SPDK's
// bdev_nvme settings accepted for scripts that send them, and SPDK's log_* controls.
import { z } from 'zod';
import { type NvmfListenAddress, type NvmfSubsystem, listenAddressKey } from '../actors/nvmfTarget.ts';
import type { StorageNode } from '../actors/node.ts';
import { nvmfInCapsuleDataBytes, nvmfNamespacesMax, nvmfNqnBytesMax, nvmfQueueDepthMax, nvmfQueuesPerControllerMax, nvmfTransferBytesMax } from '../constants.ts';
import { StorageError, isStorageError } from '../errors.ts';
import { type LogThreshold, logThreshold, setLogThreshold } from '../log.ts';
import { type RpcMethod, defineMethod } from './methodTable.ts';
import { ok } from './schemas.ts';

/** An error as SPDK's nvmf RPCs send it: its code and its own text. */
function spdkError(kind: 'invalidParams' | 'internal', message: string): never {
  throw new StorageError('EINVAL', { wire: kind === 'invalidParams' ? 'spdkInvalidParams' : 'spdkInternal', detail: message });
}

const invalidParameters = () => spdkError('invalidParams', 'Invalid parameters');

const nqn = z
  .string()
  .min(1)
  .refine((value) => Buffer.byteLength(value) <= nvmfNqnBytesMax, `at most ${nvmfNqnBytesMax} bytes`)
  .refine((value) => value.startsWith('nqn.'), "an NQN starts with 'nqn.'");
const tgtName = z.string().optional().describe('SPDK target name; lvnode has one target');
const caseless = <T extends string>(values: readonly [T, ...T[]]) =>
  z
    .string()
    .transform((value) => values.find((known) => known.toLowerCase() === value.toLowerCase()))
    .refine((value) => value !== undefined, `one of ${values.join(', ')}`)
    .transform((value) => value!);
const listenAddress = z.strictObject({
  trtype: caseless(['TCP'] as const),
  adrfam: caseless(['IPv4', 'IPv6'] as const).optional(),
  traddr: z.string().min(1).max(255),
  trsvcid: z.string().regex(/^\d{1,5}$/, 'a TCP port').optional(),
  secure_channel: z.literal(false).optional().describe('TLS is not supported'),
});
const listenAddressView = z.object({ trtype: z.string(), adrfam: z.string(), traddr: z.string(), trsvcid: z.string() });
const anaState = caseless(['optimized', 'non_optimized', 'inaccessible'] as const);

function toAddress(address: z.output<typeof listenAddress>): NvmfListenAddress {
  const trsvcid = address.trsvcid;
  if (trsvcid === undefined) return invalidParameters();
  return { trtype: 'TCP', adrfam: address.adrfam ?? (address.traddr.includes(':') ? 'IPv6' : 'IPv4'), traddr: address.traddr, trsvcid };
}

/** A subsystem, or SPDK's "Unable to find subsystem with NQN" (-32602). */
function findSubsystem(node: StorageNode, name: string): NvmfSubsystem {
  const subsystem = node.nvmf.subsystem(name);
  if (!subsystem) spdkError('invalidParams', `Unable to find subsystem with NQN ${name}`);
  return subsystem;
}

/** Runs `work`; a StorageError of the target becomes SPDK's answer for that RPC. */
async function asSpdk<T>(work: () => T | Promise<T>, answer: (error: StorageError) => never): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (isStorageError(error) && error.wire === 'errno') answer(error);
    throw error;
  }
}

const transportView = z.object({
  trtype: z.string(),
  max_queue_depth: z.number(),
  max_io_qpairs_per_ctrlr: z.number(),
  in_capsule_data_size: z.number(),
  max_io_size: z.number(),
  io_unit_size: z.number(),
  max_aq_depth: z.number(),
  num_shared_buffers: z.number(),
  buf_cache_size: z.number(),
  dif_insert_or_strip: z.boolean(),
  zcopy: z.boolean(),
  c2h_success: z.boolean(),
  sock_priority: z.number(),
  abort_timeout_sec: z.number(),
});

const subsystemView = z.object({
  nqn: z.string(),
  subtype: z.enum(['NVMe', 'Discovery']),
  listen_addresses: z.array(listenAddressView),
  allow_any_host: z.boolean(),
  hosts: z.array(z.object({ nqn: z.string() })),
  serial_number: z.string().optional(),
  model_number: z.string().optional(),
  max_namespaces: z.number().optional(),
  min_cntlid: z.number().optional(),
  max_cntlid: z.number().optional(),
  namespaces: z.array(z.object({ nsid: z.number(), bdev_name: z.string(), name: z.string(), nguid: z.string(), uuid: z.string(), anagrpid: z.number().optional() })).optional(),
  state: z.string().describe('lvnode: the subsystem actor’s state (active, paused, …)'),
});

function viewSubsystem(subsystem: NvmfSubsystem): z.input<typeof subsystemView> {
  const base = {
    nqn: subsystem.nqn,
    subtype: subsystem.options.subtype,
    listen_addresses: subsystem.listeners.map((listener) => ({ ...listener.address })),
    allow_any_host: subsystem.allowAnyHost,
    hosts: [...subsystem.hosts].map((host) => ({ nqn: host })),
    state: subsystem.state(),
  };
  if (subsystem.isDiscovery) return base;
  const { options } = subsystem;
  return {
    ...base,
    serial_number: options.serialNumber,
    model_number: options.modelNumber,
    max_namespaces: options.maxNamespaces,
    min_cntlid: options.minCntlid,
    max_cntlid: options.maxCntlid,
    namespaces: [...subsystem.namespaces.values()]
      .sort((a, b) => a.nsid - b.nsid)
      .map((namespace) => ({
        nsid: namespace.nsid,
        bdev_name: namespace.bdev.name,
        name: namespace.bdev.name,
        nguid: namespace.nguid.toString('hex').toUpperCase(),
        uuid: namespace.uuid,
        ...(options.anaReporting ? { anagrpid: namespace.anagrpid } : {}),
      })),
  };
}

/** SPDK's nvmf_create_transport options for TCP: accepted; lvnode's limits are fixed (constants.ts) and nvmf_get_transports reports them. */
const transportOptionKeys = [
  'max_queue_depth', 'max_qpairs_per_ctrlr', 'max_io_qpairs_per_ctrlr', 'in_capsule_data_size', 'max_io_size', 'io_unit_size', 'max_aq_depth',
  'num_shared_buffers', 'buf_cache_size', 'num_cqe', 'dif_insert_or_strip', 'abort_timeout_sec', 'acceptor_poll_rate', 'c2h_success',
  'sock_priority', 'zcopy', 'control_msg_num', 'ack_timeout', 'data_wr_pool_size', 'disable_command_passthru',
  // RDMA's and vfio-user's: rpc.py sends no_srq and the store_true flags (false) for every trtype, SPDK's TCP transport ignores them.
  'max_srq_depth', 'no_srq', 'acceptor_backlog', 'no_wr_batching', 'disable_mappable_bar0', 'disable_adaptive_irq', 'disable_shadow_doorbells',
] as const;
const settingValue = z.union([z.number(), z.boolean(), z.string()]).optional();
const settings = (keys: readonly string[]) => Object.fromEntries(keys.map((key) => [key, settingValue]));

export function nvmfMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    ...transportMethods(node),
    ...subsystemMethods(node),
    ...namespaceAndHostMethods(node),
    ...listenerMethods(node),
    ...settingMethods(),
  };
}

function transportMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    nvmf_create_transport: defineMethod({
      description: 'Create the NVMe-oF TCP transport (SPDK). Its options are accepted; lvnode’s limits are fixed and reported by nvmf_get_transports.',
      priority: 'foreground',
      params: z.strictObject({ trtype: z.string(), tgt_name: tgtName, ...settings(transportOptionKeys) }),
      result: ok,
      handler: (p) => {
        if (p.trtype.toUpperCase() !== 'TCP') spdkError('invalidParams', `Transport type '${p.trtype}' does not exist`);
        if (node.nvmf.transport('TCP')) spdkError('internal', `Transport type '${p.trtype}' already exists`);
        node.nvmf.transports.push({
          trtype: 'TCP',
          max_queue_depth: nvmfQueueDepthMax,
          max_io_qpairs_per_ctrlr: nvmfQueuesPerControllerMax - 1,
          in_capsule_data_size: nvmfInCapsuleDataBytes,
          max_io_size: nvmfTransferBytesMax,
          io_unit_size: nvmfTransferBytesMax,
          max_aq_depth: nvmfQueueDepthMax,
          num_shared_buffers: 511,
          buf_cache_size: 0xffffffff,
          dif_insert_or_strip: false,
          zcopy: false,
          c2h_success: true,
          sock_priority: 0,
          abort_timeout_sec: 1,
        });
        return true as const;
      },
    }),
    nvmf_get_transports: defineMethod({
      description: 'List NVMe-oF transports (SPDK), or the one of trtype (-19 when it does not exist).',
      priority: 'foreground',
      params: z.strictObject({ trtype: z.string().optional(), tgt_name: tgtName }),
      result: z.array(transportView),
      handler: (p) => {
        if (p.trtype === undefined) return node.nvmf.transports.map((transport) => ({ ...transport }));
        const found = node.nvmf.transport(p.trtype);
        if (!found) throw new StorageError('ENODEV');
        return [{ ...found }];
      },
    }),
  };
}

function subsystemMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    nvmf_create_subsystem: defineMethod({
      description: 'Create an NVMe-oF subsystem (SPDK): an actor nvmf:<nqn>, active at once.',
      priority: 'foreground',
      params: z.strictObject({
        nqn,
        serial_number: z.string().max(20).regex(/^[\x20-\x7e]*$/, 'printable ASCII').optional(),
        model_number: z.string().max(40).regex(/^[\x20-\x7e]*$/, 'printable ASCII').optional(),
        tgt_name: tgtName,
        max_namespaces: z.number().int().min(0).max(nvmfNamespacesMax).optional().describe(`0: ${nvmfNamespacesMax}`),
        allow_any_host: z.boolean().optional(),
        ana_reporting: z.boolean().optional(),
        min_cntlid: z.number().int().min(1).max(0xffef).optional(),
        max_cntlid: z.number().int().min(1).max(0xffef).optional(),
        max_discard_size_kib: z.number().int().min(0).optional(),
        max_write_zeroes_size_kib: z.number().int().min(0).optional(),
        passthrough: z.literal(false).optional(),
      }),
      result: ok,
      handler: (p) => {
        const minCntlid = p.min_cntlid ?? 1;
        const maxCntlid = p.max_cntlid ?? 0xffef;
        if (minCntlid > maxCntlid) spdkError('invalidParams', `Invalid cntlid range [${minCntlid}-${maxCntlid}]`);
        if (node.nvmf.subsystem(p.nqn)) spdkError('internal', `Unable to create subsystem ${p.nqn}`);
        node.nvmf.createSubsystem({
          nqn: p.nqn,
          serialNumber: p.serial_number ?? '00000000000000000000',
          modelNumber: p.model_number ?? 'SPDK bdev Controller',
          allowAnyHost: p.allow_any_host ?? false,
          maxNamespaces: p.max_namespaces || 32,
          minCntlid,
          maxCntlid,
          anaReporting: p.ana_reporting ?? false,
        });
        return true as const;
      },
    }),
    nvmf_delete_subsystem: defineMethod({
      description: 'Delete an NVMe-oF subsystem (SPDK): its hosts are disconnected and its bdevs let go.',
      priority: 'foreground',
      params: z.strictObject({ nqn, tgt_name: tgtName }),
      result: ok,
      handler: async (p) => {
        const subsystem = node.nvmf.subsystem(p.nqn);
        if (!subsystem || subsystem.isDiscovery) invalidParameters();
        await node.nvmf.deleteSubsystem(p.nqn);
        return true as const;
      },
    }),
    nvmf_get_subsystems: defineMethod({
      description: 'List NVMe-oF subsystems (SPDK), the discovery subsystem first; -19 for an unknown nqn.',
      priority: 'foreground',
      params: z.strictObject({ nqn: z.string().optional(), tgt_name: tgtName }),
      result: z.array(subsystemView),
      handler: (p) => {
        if (p.nqn === undefined) return node.nvmf.list().map(viewSubsystem);
        const subsystem = node.nvmf.subsystem(p.nqn);
        if (!subsystem) throw new StorageError('ENODEV');
        return [viewSubsystem(subsystem)];
      },
    }),
  };
}

function namespaceAndHostMethods(node: StorageNode): Record<string, RpcMethod> {
  const hex = (length: number) => z.string().regex(new RegExp(`^[0-9a-fA-F]{${length}}$`), `${length} hex digits`);
  return {
    nvmf_subsystem_add_ns: defineMethod({
      description: 'Add a namespace on a bdev (lvol by UUID or lvs/lvol, malloc, aio) to a subsystem (SPDK); answers its NSID. The bdev is held open: it cannot be deleted while served.',
      priority: 'foreground',
      params: z.strictObject({
        nqn,
        tgt_name: tgtName,
        namespace: z.strictObject({
          bdev_name: z.string().min(1),
          nsid: z.number().int().min(0).max(nvmfNamespacesMax).optional(),
          nguid: z.union([hex(32), z.string().uuid()]).optional(),
          eui64: hex(16).optional(),
          uuid: z.string().uuid().optional(),
          anagrpid: z.number().int().min(1).optional(),
          ptpl_file: z.string().optional(),
          no_auto_visible: z.literal(false).optional(),
        }),
      }),
      result: z.number().describe('NSID'),
      handler: (p) => {
        const subsystem = findSubsystem(node, p.nqn);
        return asSpdk(
          () => subsystem.addNamespace(node.bdev(p.namespace.bdev_name), { nsid: p.namespace.nsid, uuid: p.namespace.uuid, nguid: p.namespace.nguid, anagrpid: p.namespace.anagrpid }),
          (error) => (error.errno === 'ENODEV' ? spdkError('invalidParams', `Unable to find bdev ${p.namespace.bdev_name}`) : spdkError('invalidParams', 'Invalid parameters')),
        );
      },
    }),
    nvmf_subsystem_remove_ns: defineMethod({
      description: 'Remove a namespace from a subsystem (SPDK); its hosts see it go (namespace attribute notice).',
      priority: 'foreground',
      params: z.strictObject({ nqn, nsid: z.number().int().min(1), tgt_name: tgtName }),
      result: ok,
      handler: (p) => {
        const subsystem = findSubsystem(node, p.nqn);
        return asSpdk(() => (subsystem.removeNamespace(p.nsid), true as const), invalidParameters);
      },
    }),
    nvmf_subsystem_add_host: defineMethod({
      description: 'Allow a host NQN to connect to a subsystem whose allow_any_host is false (SPDK). No DH-HMAC-CHAP or PSK: a host NQN is a claim, not a proof.',
      priority: 'foreground',
      params: z.strictObject({ nqn, host: nqn, tgt_name: tgtName }),
      result: ok,
      handler: (p) => {
        findSubsystem(node, p.nqn);
        return asSpdk(() => (node.nvmf.addHost(p.nqn, p.host), true as const), () => spdkError('internal', 'Internal error'));
      },
    }),
  };
}

function listenerMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    nvmf_subsystem_add_listener: defineMethod({
      description:
        'Listen for a subsystem on a TCP address (SPDK). Refused unless lvnode runs with --nvmf-insecure-tcp (loopback only) or --nvmf-allow-remote (any address): NVMe/TCP here has no authentication or encryption.',
      priority: 'foreground',
      params: z.strictObject({ nqn, listen_address: listenAddress, tgt_name: tgtName, secure_channel: z.literal(false).optional(), ana_state: anaState.optional() }),
      result: ok,
      handler: async (p) => {
        findSubsystem(node, p.nqn);
        const address = toAddress(p.listen_address);
        await asSpdk(
          () => node.nvmf.addListener(p.nqn, address),
          (error) => spdkError('invalidParams', error.errno === 'EPERM' || error.errno === 'EINVAL' ? (error.detail ?? 'Invalid parameters') : 'Invalid parameters'),
        );
        const listener = node.nvmf.require(p.nqn).listener(listenAddressKey(address));
        if (p.ana_state && listener) listener.anaState = p.ana_state;
        return true as const;
      },
    }),
    nvmf_subsystem_remove_listener: defineMethod({
      description: 'Stop listening for a subsystem on an address (SPDK); hosts connected through it are disconnected when no subsystem listens there any more.',
      priority: 'foreground',
      params: z.strictObject({ nqn, listen_address: listenAddress, tgt_name: tgtName }),
      result: ok,
      handler: async (p) => {
        findSubsystem(node, p.nqn);
        await asSpdk(() => node.nvmf.removeListener(p.nqn, toAddress(p.listen_address)), invalidParameters);
        return true as const;
      },
    }),
    nvmf_subsystem_get_listeners: defineMethod({
      description: 'List a subsystem’s listeners (SPDK): the address, and per ANA group its state when the subsystem reports ANA.',
      priority: 'foreground',
      params: z.strictObject({ nqn, tgt_name: tgtName }),
      result: z.array(z.object({ address: listenAddressView, ana_states: z.array(z.object({ ana_group: z.number(), ana_state: z.string() })).optional() })),
      handler: (p) => {
        const subsystem = findSubsystem(node, p.nqn);
        // As spdk_tgt (Longhorn's fork) dumps a listener: no `ana_state` field; `ana_states` only with ANA reporting.
        return subsystem.listeners.map((listener) => ({
          address: { ...listener.address },
          ...(subsystem.options.anaReporting ? { ana_states: [...subsystem.namespaces.values()].map((namespace) => ({ ana_group: namespace.anagrpid, ana_state: listener.anaState })) } : {}),
        }));
      },
    }),
    nvmf_subsystem_listener_set_ana_state: defineMethod({
      description: 'Set the ANA state hosts see through one listener (SPDK): optimized, non_optimized or inaccessible.',
      priority: 'foreground',
      params: z.strictObject({ nqn, listen_address: listenAddress, ana_state: anaState, anagrpid: z.number().int().min(1).optional(), tgt_name: tgtName }),
      result: ok,
      handler: (p) => {
        const subsystem = findSubsystem(node, p.nqn);
        const address = toAddress(p.listen_address);
        const listener = subsystem.listener(listenAddressKey(address));
        if (!listener) return invalidParameters();
        // spdk_nvmf_subsystem_set_ana_state refuses a subsystem without ANA reporting (-EINVAL).
        if (!subsystem.options.anaReporting) spdkError('internal', 'error setting ANA state: -22');
        listener.anaState = p.ana_state;
        return true as const;
      },
    }),
  };
}

/** SPDK's bdev_nvme_set_options parameters (module/bdev/nvme/bdev_nvme_rpc.c): accepted as settings, nothing here uses them. */
const nvmeOptionKeys = [
  'action_on_timeout', 'timeout_us', 'timeout_admin_us', 'keep_alive_timeout_ms', 'arbitration_burst', 'low_priority_weight', 'medium_priority_weight',
  'high_priority_weight', 'nvme_adminq_poll_period_us', 'nvme_ioq_poll_period_us', 'io_queue_requests', 'delay_cmd_submit', 'transport_retry_count',
  'bdev_retry_count', 'transport_ack_timeout', 'ctrlr_loss_timeout_sec', 'reconnect_delay_sec', 'fast_io_fail_timeout_sec', 'disable_auto_failback',
  'generate_uuids', 'transport_tos', 'nvme_error_stat', 'rdma_srq_size', 'io_path_stat', 'allow_accel_sequence', 'rdma_max_cq_size', 'rdma_cm_event_timeout_ms',
  'dhchap_digests', 'dhchap_dhgroups', 'retry_count',
] as const;

const spdkLogLevels = ['ERROR', 'WARNING', 'NOTICE', 'INFO', 'DEBUG'] as const;
/** SPDK's level names against lvnode's thresholds (NOTICE is SPDK's default: info here). */
const levelToThreshold: Record<(typeof spdkLogLevels)[number], LogThreshold> = { ERROR: 'error', WARNING: 'warn', NOTICE: 'info', INFO: 'info', DEBUG: 'debug' };
/** SPDK log flags lvnode knows (its components with debug logs); others are -32602 as in SPDK. */
const logFlags = ['nvmf', 'nvmf_tcp', 'nvme', 'bdev', 'lvol', 'blob', 'nbd', 'rpc'] as const;
const logState = { level: 'NOTICE' as (typeof spdkLogLevels)[number], flags: new Set<string>() };

function settingMethods(): Record<string, RpcMethod> {
  const level = caseless(spdkLogLevels);
  const flag = z.string().refine((value) => value === 'all' || (logFlags as readonly string[]).includes(value), `one of ${logFlags.join(', ')}, all`);
  const setFlags = (value: string, on: boolean) => {
    for (const name of value === 'all' ? logFlags : [value]) {
      if (on) logState.flags.add(name);
      else logState.flags.delete(name);
    }
    return true as const;
  };
  return {
    bdev_nvme_set_options: defineMethod({
      description: 'SPDK’s NVMe bdev module options: accepted as settings; bdev_nvme_attach_controller does not read them (its own params count).',
      priority: 'foreground',
      params: z.strictObject(settings(nvmeOptionKeys)),
      result: ok,
      handler: () => true as const,
    }),
    bdev_nvme_set_hotplug: defineMethod({
      description: 'SPDK’s PCIe hotplug poller: accepted as a setting (no PCIe devices here).',
      priority: 'foreground',
      params: z.strictObject({ enable: z.boolean(), period_us: z.number().int().min(0).optional() }),
      result: ok,
      handler: () => true as const,
    }),
    log_set_level: defineMethod({
      description: 'SPDK’s log level (its syslog threshold): kept and reported; lvnode logs to stderr only (see log_set_print_level).',
      priority: 'foreground',
      params: z.strictObject({ level }),
      result: ok,
      handler: (p) => ((logState.level = p.level), true as const),
    }),
    log_get_level: defineMethod({ description: 'SPDK’s log level.', priority: 'foreground', params: z.strictObject({}), result: z.string(), handler: () => logState.level }),
    log_set_print_level: defineMethod({
      description: 'The threshold of what lvnode prints to stderr, in SPDK’s level names (ERROR, WARNING, NOTICE, INFO, DEBUG).',
      priority: 'foreground',
      params: z.strictObject({ level }),
      result: ok,
      handler: (p) => (setLogThreshold(levelToThreshold[p.level]), true as const),
    }),
    log_get_print_level: defineMethod({
      description: 'The stderr threshold, in SPDK’s level names.',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.string(),
      handler: () => ({ error: 'ERROR', warn: 'WARNING', info: 'NOTICE', debug: 'DEBUG' })[logThreshold()],
    }),
    log_set_flag: defineMethod({ description: 'Turn on an SPDK log flag (component debug logs).', priority: 'foreground', params: z.strictObject({ flag }), result: ok, handler: (p) => setFlags(p.flag, true) }),
    log_clear_flag: defineMethod({ description: 'Turn off an SPDK log flag.', priority: 'foreground', params: z.strictObject({ flag }), result: ok, handler: (p) => setFlags(p.flag, false) }),
    log_get_flags: defineMethod({
      description: 'SPDK log flags and whether each is on.',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.record(z.string(), z.boolean()),
      handler: () => Object.fromEntries(logFlags.map((name) => [name, logState.flags.has(name)])),
    }),
  };
}

