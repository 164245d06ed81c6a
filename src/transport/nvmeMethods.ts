// SPDK's bdev_nvme RPCs for NVMe-oF/TCP controllers lvnode attaches as a host (issue 23; names,
// params and result shapes of module/bdev/nvme/bdev_nvme_rpc.c): attach, detach, list. The wire
// protocol is src/transport/nvmf/initiator/, handed to the actor layer as its connector.
import { z } from 'zod';
import { type NvmeControllerEntry, nvmeControllersSnapshot } from '../actors/nvmeControllers.ts';
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

const controllerView = z.object({
  name: z.string(),
  ctrlrs: z.array(
    z.object({
      state: z.string(),
      trid: z.object({ trtype: z.string(), adrfam: z.string(), traddr: z.string(), trsvcid: z.string(), subnqn: z.string() }),
      cntlid: z.number(),
      host: z.object({ nqn: z.string(), addr: z.string(), svcid: z.string() }),
      ctrlr_loss_timeout_sec: z.number(),
      reconnect_delay_sec: z.number(),
      fast_io_fail_timeout_sec: z.number(),
    }),
  ),
});

/** SPDK's state names: `enabled`, `failed`, `deleting`; an attach still connecting, and a reconnect, show as `resetting`. */
const spdkState: Record<string, string> = { connecting: 'resetting', enabled: 'enabled', reconnecting: 'resetting', failed: 'failed', detaching: 'deleting', detached: 'deleting' };

/**
 * SPDK's bdev_nvme_check_io_error_resiliency_params: a loss timeout other than 0 needs a reconnect
 * delay no longer than it; fast I/O failure lies between the delay and the loss timeout; with a
 * loss timeout of 0 neither may be set. Undefined when they fit together, else why not.
 */
function resiliencyProblem(lossSec: number, delaySec: number, fastFailSec: number): string | undefined {
  if (lossSec === 0) return delaySec !== 0 || fastFailSec !== 0 ? 'reconnect_delay_sec and fast_io_fail_timeout_sec need a ctrlr_loss_timeout_sec' : undefined;
  if (delaySec === 0) return 'a ctrlr_loss_timeout_sec other than 0 needs a reconnect_delay_sec';
  if (lossSec > 0 && delaySec > lossSec) return 'reconnect_delay_sec is longer than ctrlr_loss_timeout_sec';
  if (fastFailSec !== 0 && fastFailSec < delaySec) return 'fast_io_fail_timeout_sec is shorter than reconnect_delay_sec';
  if (fastFailSec !== 0 && lossSec > 0 && fastFailSec > lossSec) return 'fast_io_fail_timeout_sec is longer than ctrlr_loss_timeout_sec';
  return undefined;
}

function viewController(entry: NvmeControllerEntry): z.input<typeof controllerView> {
  const snapshot = nvmeControllersSnapshot(entry);
  const { request } = entry;
  return {
    name: request.name,
    ctrlrs: [
      {
        state: spdkState[snapshot.state] ?? snapshot.state,
        trid: { ...request.trid },
        cntlid: snapshot.cntlid,
        host: { nqn: request.hostnqn, addr: entry.session?.hostAddress.addr ?? '', svcid: entry.session?.hostAddress.svcid ?? '' },
        ctrlr_loss_timeout_sec: request.ctrlrLossTimeoutSec,
        reconnect_delay_sec: request.reconnectDelaySec,
        fast_io_fail_timeout_sec: request.fastIoFailTimeoutSec,
      },
    ],
  };
}

export function nvmeMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    bdev_nvme_attach_controller: defineMethod({
      description:
        'Attach an NVMe-oF/TCP controller (SPDK): one bdev <name>n<nsid> per active namespace; answers their names. ' +
        'A lost connection (closed, bad PDU, a command unanswered for 30 s) reconnects every reconnect_delay_sec until ctrlr_loss_timeout_sec (-1 forever; 0 or a delay of 0: fail at once); ' +
        'waiting I/O is resubmitted, or fails after fast_io_fail_timeout_sec; a controller lost for good fails its I/O and removes its bdevs. ' +
        'multipath other than a first path is -114.',
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
        const problem = resiliencyProblem(p.ctrlr_loss_timeout_sec ?? 0, p.reconnect_delay_sec ?? 0, p.fast_io_fail_timeout_sec ?? 0);
        if (problem) throw new StorageError('EINVAL', { detail: problem });
        if (node.nvme.lookup(p.name)) {
          throw new StorageError('EALREADY', {
            detail: (p.multipath ?? 'disable') === 'disable' ? `A controller named ${p.name} already exists and multipath is disabled` : `A controller named ${p.name} already exists; lvnode has no multipath yet`,
          });
        }
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
            multipath: p.multipath ?? 'disable',
            ioQueues: p.num_io_queues,
          },
          tcpNvmeConnector,
        );
        return p.max_bdevs === undefined ? names : names.slice(0, p.max_bdevs);
      },
    }),
    bdev_nvme_detach_controller: defineMethod({
      description:
        'Detach an NVMe controller (SPDK) and remove its bdevs; -16 while one of them is held (an export, a namespace, a copy), where SPDK would hot-remove it; -19 for an unknown name.',
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
        await node.nvme.detach(p.name);
        return true as const;
      },
    }),
    bdev_nvme_get_controllers: defineMethod({
      description: 'List attached NVMe controllers (SPDK’s shape), or the one named; -19 for an unknown name.',
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
  };
}
