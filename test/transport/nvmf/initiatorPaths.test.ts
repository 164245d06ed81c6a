// Goal: bdev_nvme_reset_controller, failover paths, a namespace resized across a reset, health and
// driver_specific, against lvnode's own target in-process. Bytes are checked on the target's
// memory bdev (not through the initiator): I/O before and after a reset lands where it should; a
// command in flight at the reset fails (SPDK aborts it with Do Not Retry) and one sent during it
// waits and lands; a second path is used when the first target goes away; SPDK's refusals for a
// second path come in SPDK's order; a namespace that grew grows its bdev, one that shrank
// shrinks it only while nobody holds it.
import { afterEach, describe, expect, it } from 'vitest';
import { nvmePathsPerControllerMax } from '../../../src/constants.ts';
import { InspectionHub } from '../../../src/actors/inspector.ts';
import type { NodeEvent } from '../../../src/actors/nodeEvents.ts';
import { type NvmeAttachRequest, type NvmeConnector, NvmeControllers } from '../../../src/actors/nvmeControllers.ts';
import { Registry } from '../../../src/actors/registry.ts';
import { readBdev } from '../../../src/bdev/bdev.ts';
import type { NvmeBdev } from '../../../src/bdev/nvmeBdev.ts';
import { healthInfoView } from '../../../src/transport/nvmeMethods.ts';
import { tcpNvmeConnector } from '../../../src/transport/nvmf/initiator/hostController.ts';
import { attachRequest, errnoOf, freePort, memoryBdev, randomData, type StandaloneTarget, startTarget } from './harness.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const mib = 1024 * 1024;

function request(target: { port: number; nqn: string }, overrides: Partial<NvmeAttachRequest> = {}): NvmeAttachRequest {
  return attachRequest(target, { hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:lvnode-paths-test', multipath: 'failover', ...overrides });
}

async function target(backing: ReturnType<typeof memoryBdev>, port?: number): Promise<StandaloneTarget> {
  const started = await startTarget({ bdevs: [backing], ...(port === undefined ? {} : { port }) });
  cleanups.push(() => started.close());
  return started;
}

function nodeParts() {
  const registry = new Registry();
  const events: NodeEvent[] = [];
  const controllers = new NvmeControllers(registry, new InspectionHub(), (event) => events.push(event));
  cleanups.push(() => controllers.detachAll());
  return { registry, events, controllers };
}

/** The backing bdev's next read never finishes until released (the target holds it in flight). */
function holdNextRead(backing: ReturnType<typeof memoryBdev>): { release: () => void; held: () => boolean } {
  const original = backing.readInto;
  let release = () => {};
  let held = false;
  backing.readInto = async (offsetBytes, buffer) => {
    backing.readInto = original;
    held = true;
    await new Promise<void>((resolve) => (release = resolve));
    return original.call(backing, offsetBytes, buffer);
  };
  return { release: () => release(), held: () => held };
}

describe('bdev_nvme_reset_controller against lvnode’s own target', () => {
  it('reconnects: bytes written before and after the reset land on the target, reads return them, the cntlid is new', async () => {
    const backing = memoryBdev('mem0', 2 * mib);
    const served = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(served), tcpNvmeConnector);
    const bdev = registry.findBdev('Nvme0n1') as NvmeBdev;
    const before = randomData(1, 64 * 1024);
    await bdev.write(4096, before);
    const cntlid = controllers.lookup('Nvme0')!.actor.getSnapshot().context.cntlid;
    const oldSession = controllers.lookup('Nvme0')!.session;

    await controllers.reset('Nvme0');
    const entry = controllers.lookup('Nvme0')!;
    expect(entry.actor.getSnapshot().value).toBe('enabled');
    expect(entry.session).not.toBe(oldSession);
    expect(oldSession!.lost).toBe(true);
    expect(entry.actor.getSnapshot().context).toMatchObject({ resets: 1 });
    expect(entry.actor.getSnapshot().context.cntlid).not.toBe(cntlid);
    expect((await readBdev(bdev, 4096, before.length)).equals(before)).toBe(true);
    const after = randomData(2, 32 * 1024);
    await bdev.write(512 * 1024, after);
    expect((await readBdev(backing, 512 * 1024, after.length)).equals(after)).toBe(true);
    expect((await readBdev(backing, 4096, before.length)).equals(before)).toBe(true);
  });

  it('fails the read in flight at the reset with EIO (not resubmitted), and a read sent during the reset waits and returns the bytes', async () => {
    const backing = memoryBdev('mem0', 2 * mib);
    const served = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(served), tcpNvmeConnector);
    const bdev = registry.findBdev('Nvme0n1') as NvmeBdev;
    const data = randomData(3, 8192);
    await backing.write(65536, data);
    const hold = holdNextRead(backing);
    cleanups.push(hold.release);
    const inFlight = errnoOf(readBdev(bdev, 65536, 8192));
    await expect.poll(hold.held).toBe(true);
    const reset = controllers.reset('Nvme0');
    // Sent while the controller is resetting: it waits for the new connection.
    expect(controllers.lookup('Nvme0')!.actor.getSnapshot().value).toBe('resetting');
    const during = readBdev(bdev, 65536, 8192);
    expect(await errnoOf(controllers.reset('Nvme0'))).toBe('EBUSY');
    await reset;
    expect(await inFlight).toBe('EIO');
    expect((await during).equals(data)).toBe(true);
  });

  it('answers ENODEV for an unknown controller or cntlid, EPERM when the reset does not reconnect, and true again once the target is back', async () => {
    const backing = memoryBdev('mem0', mib);
    let served = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(served, { failedRetryMs: 60_000 }), tcpNvmeConnector);
    expect(await errnoOf(controllers.reset('Nvme9'))).toBe('ENODEV');
    expect(await errnoOf(controllers.reset('Nvme0', 0xfff0))).toBe('ENODEV');
    await served.close();
    await expect.poll(() => controllers.lookup('Nvme0')!.actor.getSnapshot().value).toBe('failed');
    expect(await errnoOf(controllers.reset('Nvme0'))).toBe('EPERM');
    // SPDK keeps a failed controller (loss timeout 0) and its bdev; I/O fails meanwhile.
    expect(registry.lookupBdev('Nvme0n1')).toBeDefined();
    expect(await errnoOf(readBdev(registry.findBdev('Nvme0n1'), 0, 512))).toBe('EIO');
    served = await target(backing, served.port);
    await controllers.reset('Nvme0');
    await backing.write(0, randomData(4, 512));
    expect((await readBdev(registry.findBdev('Nvme0n1'), 0, 512)).equals(randomData(4, 512))).toBe(true);
  });

  it('grows the bdev when the namespace grew across a reset; shrinks it only while nobody holds it', async () => {
    const backing = memoryBdev('mem0', 4 * mib);
    let namespaceBytes = 2 * mib;
    backing.sizeBytes = () => namespaceBytes;
    const served = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(served), tcpNvmeConnector);
    const bdev = registry.findBdev('Nvme0n1') as NvmeBdev;
    expect(bdev.sizeBytes()).toBe(2 * mib);
    expect(await errnoOf(bdev.write(3 * mib, Buffer.alloc(512)))).toBe('EINVAL');

    namespaceBytes = 4 * mib;
    await controllers.reset('Nvme0');
    expect(bdev.sizeBytes()).toBe(4 * mib);
    const tail = randomData(5, 4096);
    await bdev.write(4 * mib - 4096, tail);
    expect((await readBdev(backing, 4 * mib - 4096, 4096)).equals(tail)).toBe(true);

    const hold = bdev.claims.open('a copy in progress');
    namespaceBytes = 3 * mib;
    await controllers.reset('Nvme0');
    expect(bdev.sizeBytes()).toBe(4 * mib);
    hold.release();
    await controllers.reset('Nvme0');
    expect(bdev.sizeBytes()).toBe(3 * mib);
  });
});

/** The NVMe/TCP connector, noting the port of each connect it is asked for. */
function recordingConnector(): NvmeConnector & { ports: string[] } {
  const ports: string[] = [];
  return { ports, connect: (wanted, signal) => (ports.push(wanted.trid.trsvcid), tcpNvmeConnector.connect(wanted, signal)) };
}

describe('multipath failover against lvnode’s own targets', () => {
  it('adds a second path ([]), lists it as an alternate, and reads and writes through it once the first target is gone', async () => {
    const backing = memoryBdev('mem0', 2 * mib);
    const first = await target(backing);
    const second = await target(backing);
    const { registry, events, controllers } = nodeParts();
    const connector = recordingConnector();
    expect(await controllers.attach(request(first), connector)).toEqual(['Nvme0n1']);
    expect(await controllers.attach(request(second), connector)).toEqual([]);
    const entry = controllers.lookup('Nvme0')!;
    expect(entry.paths.map((trid) => trid.trsvcid)).toEqual([String(first.port), String(second.port)]);
    expect(entry.actor.getSnapshot().context.pathCount).toBe(2);
    const bdev = registry.findBdev('Nvme0n1') as NvmeBdev;
    const data = randomData(6, 16384);
    await bdev.write(8192, data);

    await first.close();
    // No reconnect delay and a loss timeout of 0: without the second path this controller would fail.
    expect((await readBdev(bdev, 8192, data.length)).equals(data)).toBe(true);
    const more = randomData(7, 4096);
    await bdev.write(mib, more);
    expect((await readBdev(backing, mib, 4096)).equals(more)).toBe(true);
    expect(entry.actor.getSnapshot().value).toBe('enabled');
    expect(entry.paths.map((trid) => trid.trsvcid)).toEqual([String(second.port), String(first.port)]);
    expect(bdev.driverSpecific()).toMatchObject({ nvme: [{ trid: { trsvcid: String(second.port) } }] });
    expect(events).toEqual([]);
    // Attach, the new path's probe, then straight to the alternate (SPDK: the lost path goes last).
    expect(connector.ports).toEqual([String(first.port), String(second.port), String(second.port)]);
  });

  it('keeps at most nvmePathsPerControllerMax paths: one more is refused (ENOSPC) before it connects, and changes nothing', async () => {
    const backing = memoryBdev('mem0', mib);
    const only = await target(backing);
    const { controllers } = nodeParts();
    // Every port reaches the one real target, so each extra path is a distinct, working trid.
    const ports: string[] = [];
    const anyPort: NvmeConnector = {
      connect: (wanted, signal) => (ports.push(wanted.trid.trsvcid), tcpNvmeConnector.connect({ ...wanted, trid: { ...wanted.trid, trsvcid: String(only.port) } }, signal)),
    };
    expect(await controllers.attach(request(only), anyPort)).toEqual(['Nvme0n1']);
    const extra = (index: number) => request({ port: 40_000 + index, nqn: only.nqn });
    for (let index = 1; index < nvmePathsPerControllerMax; index++) expect(await controllers.attach(extra(index), anyPort)).toEqual([]);
    const entry = controllers.lookup('Nvme0')!;
    expect(entry.paths).toHaveLength(nvmePathsPerControllerMax);
    const connects = ports.length;
    expect(await errnoOf(controllers.attach(extra(nvmePathsPerControllerMax), anyPort))).toBe('ENOSPC');
    expect(entry.paths).toHaveLength(nvmePathsPerControllerMax);
    expect(ports).toHaveLength(connects);
  });

  it('tries every path on each reconnect attempt: the one that comes back is used', async () => {
    const backing = memoryBdev('mem0', mib);
    const first = await target(backing);
    const second = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(first, { ctrlrLossTimeoutSec: 10, reconnectDelaySec: 0.05 }), tcpNvmeConnector);
    await controllers.attach(request(second, { ctrlrLossTimeoutSec: 10, reconnectDelaySec: 0.05 }), tcpNvmeConnector);
    await second.close();
    await first.close();
    await expect.poll(() => controllers.lookup('Nvme0')!.actor.getSnapshot().context.error).toMatch(/ECONNREFUSED/);
    // The path the controller lost is the one that comes back; the alternate stays away.
    const back = await target(backing, first.port);
    const data = randomData(9, 4096);
    await backing.write(4096, data);
    expect((await readBdev(registry.findBdev('Nvme0n1'), 4096, 4096)).equals(data)).toBe(true);
    expect(controllers.lookup('Nvme0')!.paths[0]!.trsvcid).toBe(String(back.port));
  });

  it('refuses a second path as SPDK does, in SPDK’s order, and changes nothing', async () => {
    const backing = memoryBdev('mem0', mib);
    const first = await target(backing);
    const second = await target(backing);
    const { controllers } = nodeParts();
    await controllers.attach(request(first), tcpNvmeConnector);
    const paths = () => controllers.lookup('Nvme0')!.paths.map((trid) => trid.trsvcid);
    const before = paths();
    const refusals: Array<[Partial<NvmeAttachRequest>, string]> = [
      [{ multipath: 'disable' }, 'EALREADY'],
      // The same traddr and trsvcid comes before a different subnqn (SPDK checks the network path first).
      [{ trid: { ...request(first).trid, subnqn: 'nqn.2016-06.io.spdk:other' } }, 'EALREADY'],
      [{ trid: { ...request(second).trid, subnqn: 'nqn.2016-06.io.spdk:other' } }, 'EINVAL'],
      [{ ...request(second), hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:someone-else' }, 'EINVAL'],
      [{ ...request(second), ctrlrLossTimeoutSec: 5 }, 'EINVAL'],
      [{ ...request(second), trid: { ...request(second).trid, trsvcid: String(await freePort()) } }, 'ENODEV'], // nobody listens: -19, as spdk_tgt (initiatorSpdkRpc.test.ts)
    ];
    for (const [overrides, errno] of refusals) {
      expect(await errnoOf(controllers.attach({ ...request(first), ...overrides }, tcpNvmeConnector)), JSON.stringify(overrides)).toBe(errno);
      expect(paths()).toEqual(before);
    }
    // Another name with the same transport ID and host NQN: EEXIST (spdk_bdev_nvme_create).
    expect(await errnoOf(controllers.attach({ ...request(first), name: 'Nvme1' }, tcpNvmeConnector))).toBe('EEXIST');
    expect(controllers.list().length).toBe(1);
    await controllers.attach(request(second), tcpNvmeConnector);
    expect(await errnoOf(controllers.attach(request(second), tcpNvmeConnector))).toBe('EALREADY');
  });

  it('detaches one path (ENXIO when none matches) and keeps the controller on the other', async () => {
    const backing = memoryBdev('mem0', mib);
    const first = await target(backing);
    const second = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(first), tcpNvmeConnector);
    await controllers.attach(request(second), tcpNvmeConnector);
    expect(await errnoOf(controllers.detach('Nvme0', { trsvcid: String(await freePort()) }))).toBe('ENXIO');
    expect(controllers.lookup('Nvme0')!.paths.length).toBe(2);
    // The active path goes: the controller fails over to the other one.
    await controllers.detach('Nvme0', { trsvcid: String(first.port) });
    const entry = controllers.lookup('Nvme0')!;
    expect(entry.paths.map((trid) => trid.trsvcid)).toEqual([String(second.port)]);
    const data = randomData(8, 4096);
    await registry.findBdev('Nvme0n1').write(0, data);
    expect((await readBdev(backing, 0, 4096)).equals(data)).toBe(true);
    expect(entry.actor.getSnapshot().value).toBe('enabled');
    await controllers.detach('Nvme0', { trsvcid: String(second.port) });
    expect(controllers.lookup('Nvme0')).toBeUndefined();
    expect(registry.lookupBdev('Nvme0n1')).toBeUndefined();
  });
});

describe('health and driver_specific against lvnode’s own target', () => {
  it('reads the SMART / Health page and Identify into SPDK’s shapes', async () => {
    const backing = memoryBdev('mem0', mib);
    const served = await target(backing);
    const { registry, controllers } = nodeParts();
    await controllers.attach(request(served), tcpNvmeConnector);
    const health = healthInfoView(await controllers.health('Nvme0'));
    // lvnode's target, like SPDK's, reports a zeroed page: 0 K reads as 2^64 - 273 in SPDK's arithmetic.
    expect(health).toEqual({
      model_number: 'lvnode test',
      serial_number: 'LVNODE0001',
      firmware_revision: expect.any(String),
      traddr: '127.0.0.1',
      critical_warning: 0,
      temperature_celsius: 2n ** 64n - 273n,
      available_spare_percentage: 0,
      available_spare_threshold_percentage: 0,
      percentage_used: 0,
      data_units_read: 0,
      data_units_written: 0,
      host_read_commands: 0,
      host_write_commands: 0,
      controller_busy_time: 0,
      power_cycles: 0,
      power_on_hours: 0,
      unsafe_shutdowns: 0,
      media_errors: 0,
      num_err_log_entries: 0,
      warning_temperature_time_minutes: 0,
      critical_composite_temperature_time_minutes: 0,
    });
    expect(await errnoOf(controllers.health('Nvme9'))).toBe('ENODEV');
    const cntlid = controllers.lookup('Nvme0')!.actor.getSnapshot().context.cntlid;
    expect((registry.findBdev('Nvme0n1') as NvmeBdev).driverSpecific()).toEqual({
      nvme: [
        {
          trid: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: String(served.port), subnqn: served.nqn },
          ctrlr_data: {
            cntlid,
            vendor_id: expect.stringMatching(/^0x[0-9a-f]{4}$/),
            model_number: 'lvnode test',
            serial_number: 'LVNODE0001',
            firmware_revision: expect.any(String),
            subnqn: served.nqn,
            oacs: { security: 0, format: 0, firmware: 0, ns_manage: 0 },
            multi_ctrlr: true,
            ana_reporting: false,
          },
          vs: { nvme_version: expect.stringMatching(/^1\.\d+(\.\d+)?$/) },
          ns_data: { id: 1, can_share: expect.any(Boolean) },
        },
      ],
      mp_policy: 'active_passive',
    });
  });

  it('decodes the page’s fields at their offsets (a page written here, not by a target)', () => {
    const page = Buffer.alloc(512);
    page[0] = 0x04;
    page.writeUInt16LE(300, 1);
    page[3] = 97;
    page[4] = 10;
    page[5] = 3;
    page.writeBigUInt64LE(123n, 32);
    page.writeBigUInt64LE(1n, 56); // data_units_written's high half: 2^64 + 0
    page.writeBigUInt64LE(7n, 112);
    page.writeBigUInt64LE(8n, 144);
    page.writeBigUInt64LE(9n, 160);
    page.writeUInt32LE(11, 192);
    page.writeUInt32LE(12, 196);
    page.writeUInt16LE(310, 202);
    const identity = { cntlid: 1, vendorId: 0x8086, serialNumber: 'S', modelNumber: 'M', firmwareRevision: 'F', subnqn: 'n', oacs: 0, cmic: 0, version: 0x10300 };
    expect(healthInfoView({ page, identity, traddr: '10.0.0.1' })).toMatchObject({
      critical_warning: 4,
      temperature_celsius: 27,
      available_spare_percentage: 97,
      available_spare_threshold_percentage: 10,
      percentage_used: 3,
      data_units_read: 123,
      data_units_written: 2n ** 64n,
      power_cycles: 7,
      unsafe_shutdowns: 8,
      media_errors: 9,
      warning_temperature_time_minutes: 11,
      critical_composite_temperature_time_minutes: 12,
      temperature_sensor_celsius: 37,
    });
  });
});
