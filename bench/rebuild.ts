// Replica rebuild between two nodes (issue 23), two `lvnode serve` processes with
// --nvmf-insecure-tcp on 127.0.0.1, same run:
//  (a) a shallow copy of a 1 GiB snapshot to a remote lvol through lvnode's NVMe/TCP initiator
//      (node B's lvol exported, attached on node A) against the same copy between two lvstores of
//      node A; alternated, medians and spread;
//  (b) a delta rebuild as Longhorn's range shallow copy does it: the destination's outdated
//      snapshot differs from the source's in k of n clusters, range checksums find them, and a
//      range shallow copy sends them through a counting TCP proxy between the initiator and the
//      target: bytes on the wire each way for each k;
//  (c) 16 closed-loop clients sending bdev_get_bdevs to each node, idle and while a remote 1 GiB
//      shallow copy runs.
// Figures only; nothing is asserted.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { type Server, type Socket, createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RpcClient } from '../src/cli/rpcClient.ts';
import { mibBytes } from '../src/constants.ts';
import { hammer } from './backgroundLoad.ts';
import { startServeProcess, stopProcess } from './childNode.ts';
import { benchClusterBytes, envInteger, fixed, median, printTable, sleepMs, timed } from './support.ts';

const hostnqn = 'nqn.2014-08.org.nvmexpress:uuid:bench-rebuild';
const snapshotMib = envInteger('LVNODE_BENCH_REBUILD_MIB', 1024);
const repeats = envInteger('LVNODE_BENCH_REBUILD_REPEATS', 3);
const clientCount = 16;
const hammerSeconds = 3;
const pollMs = 250;
// LVNODE_BENCH_REBUILD_PARTS=a,c runs only those parts.
const parts = new Set((process.env.LVNODE_BENCH_REBUILD_PARTS ?? 'a,b,c').split(','));

interface Node {
  readonly name: string;
  readonly child: ChildProcess;
  readonly client: RpcClient;
  readonly url: string;
  readonly token: string;
  readonly dir: string;
}

async function startNode(name: string): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), `lvnode-bench-rebuild-${name}-`));
  const { child, url, token } = await startServeProcess(join(dir, 'data'), '8G', ['--nvmf-insecure-tcp']);
  const client = await RpcClient.connect(url, { token });
  return { name, child, client, url, token, dir };
}

async function stopNode(node: Node): Promise<void> {
  await node.client.close().catch(() => undefined);
  await stopProcess(node.child);
  await rm(node.dir, { recursive: true, force: true });
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort) => {
    const server = createServer().listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** A TCP relay that counts the bytes each way (initiator -> target is `toTarget`). */
interface CountingProxy {
  readonly port: number;
  toTarget: number;
  toInitiator: number;
  close(): Promise<void>;
}

async function countingProxy(targetPort: number): Promise<CountingProxy> {
  const sockets = new Set<Socket>();
  const counts = { toTarget: 0, toInitiator: 0 };
  const server: Server = createServer((inbound) => {
    const outbound = netConnect({ host: '127.0.0.1', port: targetPort });
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    inbound.on('data', (chunk: Buffer) => (counts.toTarget += chunk.length));
    outbound.on('data', (chunk: Buffer) => (counts.toInitiator += chunk.length));
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  const port = await new Promise<number>((resolvePort) =>
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      resolvePort(typeof address === 'object' && address ? address.port : 0);
    }),
  );
  return {
    port,
    get toTarget() {
      return counts.toTarget;
    },
    set toTarget(value: number) {
      counts.toTarget = value;
    },
    get toInitiator() {
      return counts.toInitiator;
    },
    set toInitiator(value: number) {
      counts.toInitiator = value;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolveClose) => server.close(resolveClose));
    },
  };
}

/** StartExposeBdev's calls: a subsystem, Longhorn's host, the namespace, a loopback listener. */
async function expose(node: Node, nqn: string, bdevName: string): Promise<number> {
  await node.client.call('nvmf_create_transport', { trtype: 'TCP' }).catch(() => undefined);
  await node.client.call('nvmf_create_subsystem', { nqn, allow_any_host: false });
  await node.client.call('nvmf_subsystem_add_host', { nqn, host: hostnqn });
  await node.client.call('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: bdevName } });
  const port = await freePort();
  await node.client.call('nvmf_subsystem_add_listener', { nqn, listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(port) } });
  return port;
}

/** connectNVMfBdev's parameters; answers the namespace bdev. */
async function attach(node: Node, name: string, nqn: string, port: number): Promise<string> {
  const [bdev] = await node.client.call<string[]>('bdev_nvme_attach_controller', {
    name, trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: String(port), subnqn: nqn, hostnqn,
    ctrlr_loss_timeout_sec: 15, reconnect_delay_sec: 2, fast_io_fail_timeout_sec: 10, multipath: 'disable',
  });
  return bdev!;
}

async function copy(node: Node, kind: 'shallow' | 'range', source: string, destination: string, clusters?: number[]): Promise<Record<string, unknown>> {
  const { operation_id } =
    kind === 'range'
      ? await node.client.call<{ operation_id: number }>('bdev_lvol_start_range_shallow_copy', { src_lvol_name: source, dst_bdev_name: destination, clusters })
      : await node.client.call<{ operation_id: number }>('bdev_lvol_start_shallow_copy', { src_lvol_name: source, dst_bdev_name: destination });
  for (;;) {
    const status = await node.client.call<Record<string, unknown>>('bdev_lvol_check_shallow_copy', { operation_id });
    if (status.state === 'complete') return status;
    if (status.state === 'error') throw new Error(`copy failed: ${JSON.stringify(status)}`);
    // Polled as a controller would (Longhorn: every 3 s), not so often that the poll itself
    // counts as client load and slows the copy (foregroundQuietMs).
    await sleepMs(pollMs);
  }
}

async function fill(node: Node, lvol: string, firstCluster: number, clusterCount: number, seed: number): Promise<void> {
  for (let cluster = firstCluster; cluster < firstCluster + clusterCount; cluster++) {
    // A different byte per cluster and seed: clusters that should differ, do.
    await node.client.call('node_lvol_write', { name: lvol, offset: cluster * benchClusterBytes, fill_byte: (cluster * 7 + seed * 13) % 251, length: benchClusterBytes });
  }
}

const spread = (values: readonly number[]) => `${fixed(Math.min(...values), 0)}–${fixed(Math.max(...values), 0)}`;

export async function rebuildBenchmark(): Promise<void> {
  console.log(`\nrebuild: two lvnode processes over NVMe/TCP on 127.0.0.1, ${snapshotMib} MiB snapshot, ${benchClusterBytes / mibBytes} MiB clusters`);
  const a = await startNode('a');
  const b = await startNode('b');
  const extraDir = await mkdtemp(join(tmpdir(), 'lvnode-bench-rebuild-lvs1-'));
  try {
    const clusters = (snapshotMib * mibBytes) / benchClusterBytes;
    // ---- the source: a snapshot owning every cluster
    await a.client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'src', size_in_mib: snapshotMib, thin_provision: true });
    for (let offset = 0; offset < snapshotMib * mibBytes; offset += 64 * mibBytes) {
      await a.client.call('node_lvol_write', { name: 'lvs0/src', offset, fill_byte: (offset / mibBytes) % 251, length: 64 * mibBytes });
    }
    await a.client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/src', snapshot_name: 'snap' });
    // A second lvstore on node A for the local copy (another file, the same filesystem as lvs0's).
    const lvs1File = join(extraDir, 'lvs1.img');
    const lvs1 = await open(lvs1File, 'w');
    await lvs1.truncate(snapshotMib * mibBytes + 256 * mibBytes);
    await lvs1.close();
    await a.client.call('bdev_aio_create', { name: 'lvs1_aio', filename: lvs1File, block_size: 512 });
    await a.client.call('bdev_lvol_create_lvstore', { bdev_name: 'lvs1_aio', lvs_name: 'lvs1', cluster_sz: benchClusterBytes });

    // ---- (a) remote vs local shallow copy
    const nqn = 'nqn.2023-01.io.longhorn.spdk:bench-dst-rebuilding';
    if (parts.has('a')) await remoteVersusLocal(a, b, nqn, clusters);
    if (parts.has('b')) await deltaOnTheWire(a, b, nqn);
    if (parts.has('c')) await smallRpcsDuringRebuild(a, b, nqn);
  } finally {
    await Promise.all([stopNode(a), stopNode(b)]);
    await rm(extraDir, { recursive: true, force: true });
  }
}

async function remoteVersusLocal(a: Node, b: Node, nqn: string, clusters: number): Promise<void> {
  {
    const local: number[] = [];
    const remote: number[] = [];
    for (let round = 0; round < repeats; round++) {
      await a.client.call('bdev_lvol_create', { lvs_name: 'lvs1', lvol_name: 'dst', size_in_mib: snapshotMib, thin_provision: true });
      local.push((await timed(() => copy(a, 'shallow', 'lvs0/snap', 'lvs1/dst'))).ms);
      await a.client.call('bdev_lvol_delete', { name: 'lvs1/dst' });

      const uuid = await b.client.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'dst', size_in_mib: snapshotMib, thin_provision: true });
      const port = await expose(b, nqn, uuid);
      const bdev = await attach(a, 'dst', nqn, port);
      remote.push((await timed(() => copy(a, 'shallow', 'lvs0/snap', bdev))).ms);
      await a.client.call('bdev_nvme_detach_controller', { name: 'dst' });
      await b.client.call('nvmf_delete_subsystem', { nqn });
      await b.client.call('bdev_lvol_delete', { name: 'lvs0/dst' });
    }
    const mbps = (ms: number) => (snapshotMib * mibBytes) / 1e6 / (ms / 1000);
    console.log(`\n(a) shallow copy of a ${snapshotMib} MiB snapshot (${clusters} clusters), ${repeats} alternated rounds`);
    printTable(
      ['copy', 'median ms', 'spread ms', 'median MB/s'],
      [
        ['local: lvs0 -> lvs1 on node A', fixed(median(local), 0), spread(local), fixed(mbps(median(local)), 0)],
        ['remote: node A -> node B over NVMe/TCP', fixed(median(remote), 0), spread(remote), fixed(mbps(median(remote)), 0)],
      ],
    );
    const ratios = remote.map((ms, index) => local[index]! / ms);
    console.log(`  remote/local throughput: median ${fixed(median(ratios), 2)}x (per round ${ratios.map((ratio) => fixed(ratio, 2)).join(', ')}; goal >= 0.7x)`);

  }
}

async function deltaOnTheWire(a: Node, b: Node, nqn: string): Promise<void> {
  {
    // ---- (b) delta rebuild: k of n clusters on the wire
    const n = 64;
    console.log(`\n(b) delta rebuild: the destination's snapshot differs in k of n=${n} clusters; range checksums pick them, a range shallow copy sends them through a counting proxy`);
    const rows: string[][] = [];
    await a.client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: (n * benchClusterBytes) / mibBytes, thin_provision: true });
    await fill(a, 'lvs0/base', 0, n, 1);
    await a.client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/base', snapshot_name: 'base-snap' });
    await a.client.call('bdev_lvol_register_snapshot_range_checksums', { name: 'lvs0/base-snap' });
    const srcSums = await a.client.call<Array<{ checksum: unknown }>>('bdev_lvol_get_snapshot_range_checksums', { name: 'lvs0/base-snap', cluster_start_index: 0, cluster_count: n });
    for (const k of [0, 1, 4, 16, n]) {
      // B's outdated copy: the same clusters, k of them (spread out) with other bytes.
      const stale = new Set(Array.from({ length: k }, (_, index) => Math.floor((index * n) / Math.max(k, 1))));
      await b.client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'old', size_in_mib: (n * benchClusterBytes) / mibBytes, thin_provision: true });
      for (let cluster = 0; cluster < n; cluster++) await fill(b, 'lvs0/old', cluster, 1, stale.has(cluster) ? 2 : 1);
      await b.client.call('bdev_lvol_snapshot', { lvol_name: 'lvs0/old', snapshot_name: 'old-snap' });
      await b.client.call('bdev_lvol_delete', { name: 'lvs0/old' });
      await b.client.call('bdev_lvol_register_snapshot_range_checksums', { name: 'lvs0/old-snap' });
      const dstSums = await b.client.call<Array<{ checksum: unknown }>>('bdev_lvol_get_snapshot_range_checksums', { name: 'lvs0/old-snap', cluster_start_index: 0, cluster_count: n });
      const mismatching = srcSums.flatMap((sum, index) => (sum.checksum === dstSums[index]?.checksum ? [] : [index]));
      // rebuildingDstShallowCopyPrepare / rebuildingDstRangeShallowCopy: clone, merge the old snapshot in, expose.
      const uuid = await b.client.call<string>('bdev_lvol_clone', { snapshot_name: 'lvs0/old-snap', clone_name: 'rebuilding' });
      await b.client.call('bdev_lvol_delete', { name: 'lvs0/old-snap' });
      const port = await expose(b, nqn, uuid);
      const proxy = await countingProxy(port);
      const bdev = await attach(a, 'rebuilding', nqn, proxy.port);
      const connectTo = proxy.toTarget;
      const connectFrom = proxy.toInitiator;
      let copied = 0;
      if (mismatching.length > 0) copied = Number((await copy(a, 'range', 'lvs0/base-snap', bdev, mismatching)).copied_clusters);
      const toTarget = proxy.toTarget - connectTo;
      const toInitiator = proxy.toInitiator - connectFrom;
      await a.client.call('bdev_nvme_detach_controller', { name: 'rebuilding' });
      await proxy.close();
      await b.client.call('nvmf_delete_subsystem', { nqn });
      await b.client.call('bdev_lvol_delete', { name: 'lvs0/rebuilding' });
      const payload = k * benchClusterBytes;
      rows.push([String(k), String(n), String(mismatching.length), String(copied), String(toTarget), String(toInitiator), String(payload), payload === 0 ? '-' : fixed(toTarget / payload, 4)]);
    }
    printTable(['k', 'n', 'mismatching', 'copied', 'wire bytes A->B', 'wire bytes B->A', 'k x cluster', 'A->B / (k x cluster)'], rows);
    console.log('  (wire bytes counted after Connect, from the copy\'s start to its end: data PDUs plus NVMe/TCP headers and the copy\'s keep-alives)');

  }
}

async function smallRpcsDuringRebuild(a: Node, b: Node, nqn: string): Promise<void> {
  {
    // ---- (c) small RPCs during a rebuild vs idle
    console.log(`\n(c) ${clientCount} clients x bdev_get_bdevs per node, ${hammerSeconds} s idle then ${hammerSeconds} s during a remote ${snapshotMib} MiB shallow copy, ${repeats} rounds`);
    await b.client.call('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'probe', size_in_mib: 4, thin_provision: true });
    const clientsA = await Promise.all(Array.from({ length: clientCount }, () => RpcClient.connect(a.url, { token: a.token })));
    const clientsB = await Promise.all(Array.from({ length: clientCount }, () => RpcClient.connect(b.url, { token: b.token })));
    const figures = { aIdle: [] as number[], aBusy: [] as number[], bIdle: [] as number[], bBusy: [] as number[], copyMBps: [] as number[], copyOutlived: 0 };
    try {
      for (let round = 0; round < repeats; round++) {
        // Both nodes at once, idle and loaded alike (the bench process's 32 clients share the cores too).
        const [idleA, idleB] = await Promise.all([hammer(clientsA, 'lvs0/snap', hammerSeconds), hammer(clientsB, 'lvs0/probe', hammerSeconds)]);
        figures.aIdle.push(idleA.length / hammerSeconds);
        figures.bIdle.push(idleB.length / hammerSeconds);
        const uuid = await b.client.call<string>('bdev_lvol_create', { lvs_name: 'lvs0', lvol_name: 'dst', size_in_mib: snapshotMib, thin_provision: true });
        const port = await expose(b, nqn, uuid);
        const bdev = await attach(a, 'dst', nqn, port);
        const started = performance.now();
        let copyEndMs = 0;
        const copying = copy(a, 'shallow', 'lvs0/snap', bdev).then((status) => ((copyEndMs = performance.now()), status));
        await sleepMs(200);
        const [onA, onB] = await Promise.all([hammer(clientsA, 'lvs0/snap', hammerSeconds), hammer(clientsB, 'lvs0/probe', hammerSeconds)]);
        if (copyEndMs === 0) figures.copyOutlived++;
        const copyStatus = await copying;
        figures.copyMBps.push((snapshotMib * mibBytes) / 1e6 / ((copyEndMs - started) / 1000));
        if (copyStatus.state !== 'complete') throw new Error('copy did not complete');
        figures.aBusy.push(onA.length / hammerSeconds);
        figures.bBusy.push(onB.length / hammerSeconds);
        await a.client.call('bdev_nvme_detach_controller', { name: 'dst' });
        await b.client.call('nvmf_delete_subsystem', { nqn });
        await b.client.call('bdev_lvol_delete', { name: 'lvs0/dst' });
      }
    } finally {
      await Promise.all([...clientsA, ...clientsB].map((client) => client.close()));
    }
    printTable(
      ['node', 'idle req/s', 'spread', 'during rebuild req/s', 'spread', 'ratio (goal >= 0.8x)'],
      [
        ['A (source: reads, NVMe/TCP initiator)', fixed(median(figures.aIdle), 0), spread(figures.aIdle), fixed(median(figures.aBusy), 0), spread(figures.aBusy), `${fixed(median(figures.aBusy) / median(figures.aIdle), 2)}x`],
        ['B (destination: NVMe/TCP target, writes)', fixed(median(figures.bIdle), 0), spread(figures.bIdle), fixed(median(figures.bBusy), 0), spread(figures.bBusy), `${fixed(median(figures.bBusy) / median(figures.bIdle), 2)}x`],
      ],
    );
    console.log(`  the copy meanwhile: median ${fixed(median(figures.copyMBps), 0)} MB/s (spread ${spread(figures.copyMBps)}); still running when the loaded phase ended in ${figures.copyOutlived} of ${repeats} rounds`);
    const ratioA = figures.aBusy.map((busy, index) => busy / figures.aIdle[index]!);
    const ratioB = figures.bBusy.map((busy, index) => busy / figures.bIdle[index]!);
    console.log(`  per-round ratios (each loaded phase over the idle one just before it): A ${ratioA.map((ratio) => fixed(ratio, 2)).join(', ')}; B ${ratioB.map((ratio) => fixed(ratio, 2)).join(', ')}`);
  }
}
