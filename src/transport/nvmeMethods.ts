// SPDK's bdev_nvme RPCs for NVMe-oF/TCP controllers lvnode attaches as a host (issue 23; names,
// params, result shapes and error codes of module/bdev/nvme/bdev_nvme_rpc.c in Longhorn's fork,
// checked against its spdk_tgt): attach (and add a failover path), detach (or one path), list,
// reset, health. The wire protocol is src/transport/nvmf/initiator/, handed to the actor layer as
// its connector.
import { z } from 'zod';
import { type NvmeControllerEntry, type NvmeHealth, type NvmeTransportId, nvmeControllersSnapshot } from '../actors/nvmeControllers.ts';
import type { StorageNode } from '../actors/node.ts';
import { nvmeInitiatorIoQueuesDefault, nvmeInitiatorIoQueuesMax, nvmfNqnBytesMax } from '../constants.ts';
import { StorageError } from '../errors.ts';
import { type RpcMethod, defineMethod } from './methodTable.ts';
import { tcpNvmeConnector } from './nvmf/initiator/hostController.ts';
import { ok } from './schemas.ts';

/** The host NQN lvnode connects as when the caller gives none (SPDK derives one from a UUID too). */
const defaultHostNqn = 'nqn.2014-08.org.nvmexpress:uuid:lvnode-host';

const nqn = z
  .string()
  .min(1)
  .refine((value) => Buffer.byteLength(value) <= nvmfNqnBytesMax, `at most ${nvmfNqnBytesMax} bytes`);

const trtype = z
  .string()
  .refine((value) => value.toUpperCase() === 'TCP', 'only TCP')
  .transform(() => 'TCP' as const);

const adrfam = z
  .string()
  .refine((value) => ['IPV4', 'IPV6'].includes(value.toUpperCase()), 'IPv4 or IPv6')
  .transform((value) => (value.toUpperCase() === 'IPV6' ? ('IPv6' as const) : ('IPv4' as const)));

const controllerName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_.:-]+$/, 'letters, digits, _ . : -');

const tridView = z.object({ trtype: z.string(), adrfam: z.string(), traddr: z.string(), trsvcid: z.string(), subnqn: z.string() });

const controllerView = z.object({
  name: z.string(),
  ctrlrs: z.array(
    z.object({
      state: z.string(),
      trid: tridView,
      alternate_trids: z.array(tridView).optional(),
      cntlid: z.number(),
      host: z.object({ nqn: z.string(), addr: z.string(), svcid: z.string() }),
      ctrlr_loss_timeout_sec: z.number(),
      reconnect_delay_sec: z.number(),
      fast_io_fail_timeout_sec: z.number(),
    }),
  ),
});

function viewController(entry: NvmeControllerEntry): z.input<typeof controllerView> {
  const snapshot = nvmeControllersSnapshot(entry);
  const { request } = entry;
  const [active, ...alternates] = entry.paths;
  return {
    name: request.name,
    ctrlrs: [
      {
        state: snapshot.spdkState,
        trid: { ...active! },
        ...(alternates.length > 0 ? { alternate_trids: alternates.map((trid) => ({ ...trid })) } : {}),
        cntlid: snapshot.cntlid,
        host: { nqn: request.hostnqn, addr: entry.session?.hostAddress.addr ?? '', svcid: entry.session?.hostAddress.svcid ?? '' },
        ctrlr_loss_timeout_sec: request.ctrlrLossTimeoutSec,
        reconnect_delay_sec: request.reconnectDelaySec,
        fast_io_fail_timeout_sec: request.fastIoFailTimeoutSec,
      },
    ],
  };
}

const u64 = z.union([z.number(), z.bigint()]);

/** bdev_nvme_get_controller_health_info's result, in SPDK's order. */
const healthView = z.looseObject({
  model_number: z.string(),
  serial_number: z.string(),
  firmware_revision: z.string(),
  traddr: z.string(),
  critical_warning: z.number(),
  temperature_celsius: u64,
  available_spare_percentage: z.number(),
  available_spare_threshold_percentage: z.number(),
  percentage_used: z.number(),
  data_units_read: u64,
  data_units_written: u64,
  host_read_commands: u64,
  host_write_commands: u64,
  controller_busy_time: u64,
  power_cycles: u64,
  power_on_hours: u64,
  unsafe_shutdowns: u64,
  media_errors: u64,
  num_err_log_entries: u64,
  warning_temperature_time_minutes: z.number(),
  critical_composite_temperature_time_minutes: z.number(),
  temperature_sensor_celsius: u64.optional(),
});

/** An exact integer: a number while it is one, else a bigint (JSON carries it as written). */
function exact(value: bigint): number | bigint {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

function u128At(page: Buffer, offset: number): number | bigint {
  return exact((page.readBigUInt64LE(offset + 8) << 64n) | page.readBigUInt64LE(offset));
}

/** Kelvin less 273 as SPDK writes it: in 64 unsigned bits, so 0 K reads 2^64 - 273 (go-spdk-helper maps it to unknown). */
function celsius(kelvin: number): number | bigint {
  return exact(BigInt.asUintN(64, BigInt(kelvin - 273)));
}

/**
 * The SMART / Health log page (NVMe base 1.4 figure 194) as get_health_log_page_completion writes
 * it. SPDK writes `temperature_sensor_celsius` once per sensor that reads non-zero, the same key
 * again each time; a JSON object keeps one, the last, which is what a decoder of SPDK's answer keeps.
 */
export function healthInfoView({ page, identity, traddr }: NvmeHealth): z.input<typeof healthView> {
  const view: z.input<typeof healthView> = {
    model_number: identity.modelNumber,
    serial_number: identity.serialNumber,
    firmware_revision: identity.firmwareRevision,
    traddr,
    critical_warning: page[0]!,
    temperature_celsius: celsius(page.readUInt16LE(1)),
    available_spare_percentage: page[3]!,
    available_spare_threshold_percentage: page[4]!,
    percentage_used: page[5]!,
    data_units_read: u128At(page, 32),
    data_units_written: u128At(page, 48),
    host_read_commands: u128At(page, 64),
    host_write_commands: u128At(page, 80),
    controller_busy_time: u128At(page, 96),
    power_cycles: u128At(page, 112),
    power_on_hours: u128At(page, 128),
    unsafe_shutdowns: u128At(page, 144),
    media_errors: u128At(page, 160),
    num_err_log_entries: u128At(page, 176),
    warning_temperature_time_minutes: page.readUInt32LE(192),
    critical_composite_temperature_time_minutes: page.readUInt32LE(196),
  };
  for (let sensor = 0; sensor < 8; sensor++) {
    const kelvin = page.readUInt16LE(200 + sensor * 2);
    if (kelvin !== 0) view.temperature_sensor_celsius = celsius(kelvin);
  }
  return view;
}

export function nvmeMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    bdev_nvme_attach_controller: defineMethod({
      description:
        'Attach an NVMe-oF/TCP controller (SPDK): one bdev <name>n<nsid> per active namespace; answers their names. ' +
        'A lost connection (closed, bad PDU, a command unanswered for 30 s) reconnects every reconnect_delay_sec until ctrlr_loss_timeout_sec (-1 forever; 0 or a delay of 0: fail at once); ' +
        'waiting I/O is resubmitted, or fails after fast_io_fail_timeout_sec; past the loss timeout the controller is deleted with its bdevs (bdev_deleted). ' +
        'A name that exists adds a failover path (multipath failover, the default, or multipath, which lvnode treats as failover) and answers []: ' +
        '-114 with multipath disable or the same traddr and trsvcid, -22 for another subnqn or hostnqn; -17 for a transport ID and hostnqn another controller has.',
      priority: 'foreground',
      params: z.strictObject({
        name: controllerName,
        trtype,
        traddr: z.string().min(1).max(255),
        adrfam: adrfam.optional(),
        trsvcid: z.string().regex(/^\d{1,5}$/, 'a TCP port').optional(),
        subnqn: nqn.optional().describe('required for TCP'),
        hostnqn: nqn.optional(),
        hostaddr: z.string().optional().describe('not supported: the kernel picks the source address'),
        hostsvcid: z.string().optional().describe('not supported'),
        priority: z.number().optional(),
        prchk_reftag: z.boolean().optional(),
        prchk_guard: z.boolean().optional(),
        hdgst: z.boolean().optional().describe('header digests (CRC32C)'),
        ddgst: z.boolean().optional().describe('data digests (CRC32C)'),
        fabrics_connect_timeout_us: z.number().int().min(0).optional(),
        multipath: z.enum(['disable', 'failover', 'multipath']).optional(),
        num_io_queues: z.number().int().min(1).max(nvmeInitiatorIoQueuesMax).optional().describe(`I/O queues (default ${nvmeInitiatorIoQueuesDefault}), as many as the controller grants`),
        ctrlr_loss_timeout_sec: z.number().int().min(-1).optional(),
        reconnect_delay_sec: z.number().int().min(0).optional(),
        fast_io_fail_timeout_sec: z.number().int().min(0).optional(),
        max_bdevs: z.number().int().min(1).optional(),
        allow_unrecognized_csi: z.boolean().optional(),
      }),
      result: z.array(z.string()),
      handler: async (p) => {
        if (p.subnqn === undefined) throw new StorageError('EINVAL', { detail: 'subnqn is required for TCP' });
        const names = await node.nvme.attach(
          {
            name: p.name,
            trid: { trtype: 'TCP', adrfam: p.adrfam ?? (p.traddr.includes(':') ? 'IPv6' : 'IPv4'), traddr: p.traddr, trsvcid: p.trsvcid ?? '4420', subnqn: p.subnqn },
            hostnqn: p.hostnqn ?? defaultHostNqn,
            headerDigest: p.hdgst ?? false,
            dataDigest: p.ddgst ?? false,
            ctrlrLossTimeoutSec: p.ctrlr_loss_timeout_sec ?? 0,
            reconnectDelaySec: p.reconnect_delay_sec ?? 0,
            fastIoFailTimeoutSec: p.fast_io_fail_timeout_sec ?? 0,
            // SPDK's default: "initialize the multipath parameter to add a failover path".
            multipath: p.multipath ?? 'failover',
            ioQueues: p.num_io_queues,
          },
          tcpNvmeConnector,
        );
        return p.max_bdevs === undefined ? names : names.slice(0, p.max_bdevs);
      },
    }),
    bdev_nvme_detach_controller: defineMethod({
      description:
        'Detach an NVMe controller (SPDK) and remove its bdevs; -16 while one of them is held (an export, a namespace, a copy), where SPDK would hot-remove it; -19 for an unknown name. ' +
        'With trtype/traddr/adrfam/trsvcid/subnqn, only the paths that match go (the active one fails over to the next); -6 when none matches.',
      priority: 'foreground',
      params: z.strictObject({
        name: controllerName,
        trtype: z.string().optional(),
        traddr: z.string().optional(),
        adrfam: z.string().optional(),
        trsvcid: z.string().optional(),
        subnqn: z.string().optional(),
        hostaddr: z.string().optional(),
        hostsvcid: z.string().optional(),
      }),
      result: ok,
      handler: async (p) => {
        const path = {
          ...(p.trtype === undefined ? {} : { trtype: p.trtype }),
          ...(p.traddr === undefined ? {} : { traddr: p.traddr }),
          ...(p.adrfam === undefined ? {} : { adrfam: p.adrfam }),
          ...(p.trsvcid === undefined ? {} : { trsvcid: p.trsvcid }),
          ...(p.subnqn === undefined ? {} : { subnqn: p.subnqn }),
        };
        await node.nvme.detach(p.name, path as Partial<NvmeTransportId>);
        return true as const;
      },
    }),
    bdev_nvme_get_controllers: defineMethod({
      description: 'List attached NVMe controllers (SPDK’s shape, alternate_trids for failover paths), or the one named; -19 for an unknown name (SPDK’s socket: 22 "Controller <name> does not exist", as the fork answers).',
      priority: 'foreground',
      params: z.strictObject({ name: z.string().optional() }),
      result: z.array(controllerView),
      handler: (p) => {
        if (p.name === undefined) return node.nvme.list().map(viewController);
        const entry = node.nvme.lookup(p.name);
        if (!entry) throw new StorageError('ENODEV', { detail: `Controller ${p.name} does not exist` });
        return [viewController(entry)];
      },
    }),
    bdev_nvme_reset_controller: defineMethod({
      description:
        'Reset an NVMe controller (SPDK): its connections are closed (I/O they had in flight fails with EIO, as SPDK aborts it) and connected again, through its paths in order; ' +
        'I/O sent meanwhile waits and goes on the new connection; a namespace that grew grows its bdev. true once enabled; -1 when it does not reconnect; -16 while a reset or reconnect is connecting; -19 for an unknown name or cntlid.',
      priority: 'foreground',
      params: z.strictObject({ name: controllerName, cntlid: z.number().int().min(0).max(0xffff).optional() }),
      result: ok,
      handler: async (p) => {
        await node.nvme.reset(p.name, p.cntlid ?? 0);
        return true as const;
      },
    }),
    bdev_nvme_get_controller_health_info: defineMethod({
      description:
        'The controller’s SMART / Health log page (Get Log Page 02h) with its model, serial, firmware and traddr, in SPDK’s shape (temperatures are Kelvin less 273 in 64 unsigned bits, as SPDK writes them). ' +
        '-19 for an unknown name (SPDK’s socket: -32603 "Device not found"); -32603 "Internal error." when the controller is not connected or does not answer.',
      priority: 'foreground',
      params: z.strictObject({ name: controllerName }),
      result: healthView,
      handler: async (p) => healthInfoView(await node.nvme.health(p.name)),
    }),
  };
}
