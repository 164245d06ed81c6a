// Goal: lvnode's bdev_nvme RPCs next to SPDK's own initiator (spdk_tgt of Longhorn's fork: its
// answers are the oracle, not lvnode's code). A real lvnode node exports an lvol over its NVMe/TCP
// target on two listeners; spdk_tgt and the node itself (its SPDK socket) attach it the same way:
// driver_specific.nvme and the health info equal SPDK's (but the cntlid); the answers for an
// unknown controller and for second paths carry SPDK's codes in SPDK's order; reset answers true
// and gives a new controller; a failover path is listed as SPDK lists it. (SPDK's initiator cannot
// attach a namespace its own process exports: the bdev's UUID is taken.) Skipped without SPDK's
// programs, like the other SPDK tests.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type TestNode, startTestNode } from '../../integration/helpers.ts';
import { type SpdkReply, SpdkSocketClient } from '../../spdkSocketClient.ts';
import { connectSpdkRpc, freePort, killAllSpdk, skipSpdk, startSpdk } from './harness.ts';

const work = mkdtempSync(join(tmpdir(), 'lvnode-initiator-spdk-rpc-'));
afterAll(() => {
  killAllSpdk();
  rmSync(work, { recursive: true, force: true });
});


/** The whole reply (result or error), for comparing two servers' answers. */
async function answer(client: SpdkSocketClient, method: string, params: unknown): Promise<SpdkReply> {
  return client.reply(client.send(method, params));
}

function codeOf(reply: SpdkReply): number | 'ok' {
  return reply.error ? reply.error.code : 'ok';
}

describe.skipIf(skipSpdk)('bdev_nvme RPCs: lvnode next to spdk_tgt', () => {
  it('shows SPDK’s driver_specific and health, answers SPDK’s codes, resets, lists a failover path as SPDK does', async () => {
    const socketPath = join(work, 'spdk.sock');
    const spdk = startSpdk('spdk_tgt', ['--no-huge', '-s', '1024', '-m', '0x1', '--no-pci', '--disable-cpumask-locks', '-r', socketPath]);
    let node: TestNode | undefined;
    let tgt: SpdkSocketClient | undefined;
    let lv: SpdkSocketClient | undefined;
    try {
      tgt = await connectSpdkRpc(socketPath, spdk.output);
      node = await startTestNode({ diskBytes: 64 * 1024 * 1024, rpcSocket: true, nvmfInsecureTcp: true });
      lv = await SpdkSocketClient.connect(node.running.spdkSocket!.path);
      const nqn = 'nqn.2023-01.io.longhorn.spdk:replica-a';
      const [port, port2] = [String(await freePort()), String(await freePort())];
      const listen = (trsvcid: string) => ({ nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid } });
      const lvol = await lv.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'a', size_in_mib: 8 });
      await lv.call('nvmf_create_transport', { trtype: 'TCP' });
      await lv.call('nvmf_create_subsystem', { nqn, allow_any_host: true, serial_number: 'LVNODE00000000000042', model_number: 'lvnode oracle' });
      await lv.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: lvol } });
      await lv.call('nvmf_subsystem_add_listener', listen(port));
      await lv.call('nvmf_subsystem_add_listener', listen(port2));
      const attach = (name: string, hostnqn: string, extra: Record<string, unknown> = {}) => ({ name, trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: port, subnqn: nqn, hostnqn, ...extra });
      const spdkHost = 'nqn.2014-08.io.spdk:oracle';
      const lvHost = 'nqn.2014-08.io.lvnode:host';
      expect(await tgt.call('bdev_nvme_attach_controller', attach('Nvme0', spdkHost))).toEqual(['Nvme0n1']);
      expect(await lv.call('bdev_nvme_attach_controller', attach('Nvme0', lvHost))).toEqual(['Nvme0n1']);

      // driver_specific: the same fields and values as SPDK's initiator shows for the same namespace.
      type Info = { nvme: Array<{ ctrlr_data: Record<string, unknown> }>; mp_policy: string };
      const [spdkBdev] = await tgt.call<Array<{ driver_specific: Info }>>('bdev_get_bdevs', { name: 'Nvme0n1' });
      const [lvBdev] = await lv.call<Array<{ uuid: string; driver_specific: Info }>>('bdev_get_bdevs', { name: 'Nvme0n1' });
      const withoutCntlid = (info: Info) => ({ ...info, nvme: info.nvme.map((path) => ({ ...path, ctrlr_data: { ...path.ctrlr_data, cntlid: 'x' } })) });
      expect(lvBdev!.driver_specific.nvme.length).toBe(1);
      expect(withoutCntlid(lvBdev!.driver_specific)).toEqual(withoutCntlid(spdkBdev!.driver_specific));
      expect(lvBdev!.driver_specific.nvme[0]!.ctrlr_data.cntlid).not.toBe(spdkBdev!.driver_specific.nvme[0]!.ctrlr_data.cntlid);

      // Health: the same answer from both initiators.
      const spdkHealth = await tgt.call('bdev_nvme_get_controller_health_info', { name: 'Nvme0' });
      expect(await lv.call('bdev_nvme_get_controller_health_info', { name: 'Nvme0' })).toEqual(spdkHealth);
      expect(spdkHealth).toMatchObject({ model_number: 'lvnode oracle', serial_number: 'LVNODE00000000000042', traddr: '127.0.0.1' });

      // An unknown controller: the fork's code and message, method by method.
      for (const method of ['bdev_nvme_get_controllers', 'bdev_nvme_reset_controller', 'bdev_nvme_get_controller_health_info', 'bdev_nvme_detach_controller']) {
        const [theirs, ours] = [await answer(tgt, method, { name: 'Nope' }), await answer(lv, method, { name: 'Nope' })];
        expect({ method, code: ours.error?.code, message: ours.error?.message }).toEqual({ method, code: theirs.error?.code, message: theirs.error?.message });
      }

      // Second paths: the same codes, in the same order, for the same requests.
      const nowhere = String(await freePort());
      const secondPaths: Array<Record<string, unknown>> = [
        { multipath: 'failover', trsvcid: nowhere },
        { multipath: 'disable', trsvcid: port2 },
        { trsvcid: port },
        { multipath: 'failover', trsvcid: port, subnqn: `${nqn}x` },
        { multipath: 'failover', trsvcid: port2, subnqn: `${nqn}x` },
        { multipath: 'failover', trsvcid: port2, hostnqn: 'nqn.2014-08.io:someone-else' },
        { multipath: 'failover', trsvcid: port2, ctrlr_loss_timeout_sec: 5 },
      ];
      for (const extra of secondPaths) {
        const theirs = await answer(tgt, 'bdev_nvme_attach_controller', attach('Nvme0', spdkHost, extra));
        const ours = await answer(lv, 'bdev_nvme_attach_controller', attach('Nvme0', lvHost, extra));
        expect({ extra, code: codeOf(ours) }).toEqual({ extra, code: codeOf(theirs) });
        expect(codeOf(ours)).not.toBe('ok');
      }
      // A transport ID and host NQN that another controller has: -17 in both.
      expect(codeOf(await answer(tgt, 'bdev_nvme_attach_controller', attach('Nvme1', spdkHost)))).toBe(-17);
      expect(codeOf(await answer(lv, 'bdev_nvme_attach_controller', attach('Nvme1', lvHost)))).toBe(-17);
      // A controller that cannot be reached: -19 when nobody listens, -5 for a subsystem the target
      // does not have, in both.
      for (const [extra, code] of [[{ trsvcid: nowhere }, -19], [{ subnqn: `${nqn}-nothere` }, -5]] as const) {
        const theirs = await answer(tgt, 'bdev_nvme_attach_controller', attach('Nvme7', spdkHost, extra));
        const ours = await answer(lv, 'bdev_nvme_attach_controller', attach('Nvme7', lvHost, extra));
        expect({ extra, code: codeOf(ours) }).toEqual({ extra, code: codeOf(theirs) });
        expect(codeOf(ours)).toBe(code);
      }

      // Reset: true, enabled again on a new controller.
      const cntlidOf = async (client: SpdkSocketClient) => (await client.call<Array<{ ctrlrs: Array<{ state: string; cntlid: number }> }>>('bdev_nvme_get_controllers', { name: 'Nvme0' }))[0]!.ctrlrs[0]!;
      const before = await cntlidOf(lv);
      expect(await tgt.call('bdev_nvme_reset_controller', { name: 'Nvme0' })).toBe(true);
      expect(await lv.call('bdev_nvme_reset_controller', { name: 'Nvme0' })).toBe(true);
      const after = await cntlidOf(lv);
      expect(after.state).toBe('enabled');
      expect(after.cntlid).not.toBe(before.cntlid);

      // A failover path: [] in both, listed the same way (alternate_trids).
      expect(await tgt.call('bdev_nvme_attach_controller', attach('Nvme0', spdkHost, { multipath: 'failover', trsvcid: port2 }))).toEqual([]);
      expect(await lv.call('bdev_nvme_attach_controller', attach('Nvme0', lvHost, { multipath: 'failover', trsvcid: port2 }))).toEqual([]);
      const paths = async (client: SpdkSocketClient) => {
        const [controller] = await client.call<Array<{ ctrlrs: Array<Record<string, unknown>> }>>('bdev_nvme_get_controllers', { name: 'Nvme0' });
        return { trid: controller!.ctrlrs[0]!.trid, alternate_trids: controller!.ctrlrs[0]!.alternate_trids };
      };
      expect(await paths(lv)).toEqual(await paths(tgt));
      expect((await paths(lv)).alternate_trids).toEqual([{ trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: port2, subnqn: nqn }]);
      expect(await tgt.call('bdev_nvme_detach_controller', { name: 'Nvme0' })).toBe(true);
      expect(await lv.call('bdev_nvme_detach_controller', { name: 'Nvme0' })).toBe(true);
    } finally {
      await lv?.close();
      await node?.close();
      await tgt?.close();
      await spdk.stop();
    }
  });
});
