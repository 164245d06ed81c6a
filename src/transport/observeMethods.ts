// Methods for watching the node (SPEC §8): notifications, the inspector stream, the actors and
// machines it shows, and checksum status in bulk for viewers (the dashboard, `lvnode status`).
import { z } from 'zod';
import type { ChecksumStatus } from '../actors/lvolActor.ts';
import { describeMachine, findInspectable, listInspectable, machineOf, snapshotOf } from '../actors/inspectable.ts';
import type { StorageNode } from '../actors/node.ts';
import { type Connection, type RpcMethod, defineMethod } from './methodTable.ts';
import { checksumStatus, checksumValue, name, ok } from './schemas.ts';

export const notificationTypes = [
  'bdev_created',
  'bdev_deleted',
  'lvstore_created',
  'lvstore_deleted',
  'lvol_created',
  'lvol_deleted',
  'lvstore_changed',
  'lvol_changed',
  'checksum_state',
  'checksum_progress',
  'checksum_preempted',
  'checksum_mismatch',
  'copy_state',
  'copy_progress',
] as const;

// Per-connection subscriptions, released when the connection closes.
const inspectSubscriptions = new WeakMap<Connection, () => void>();
const notifySubscriptions = new WeakMap<Connection, () => void>();

function replaceSubscription(map: WeakMap<Connection, () => void>, connection: Connection, cancel: () => void): void {
  map.get(connection)?.();
  map.set(connection, cancel);
  connection.onClose(() => {
    if (map.get(connection) === cancel) {
      cancel();
      map.delete(connection);
    }
  });
}

function unsubscribeMethod(map: WeakMap<Connection, () => void>, description: string): RpcMethod {
  return defineMethod({
    description,
    priority: 'foreground',
    params: z.strictObject({}),
    result: ok,
    handler: (_p, connection) => {
      map.get(connection)?.();
      map.delete(connection);
      return true as const;
    },
  });
}

export function observeMethods(node: StorageNode): Record<string, RpcMethod> {
  return {
    inspect_get_actors: defineMethod({
      description:
        'The actors the inspector can follow: the scheduler, copies, NBD exports, NVMe-oF subsystems, then lvols (at most `limit`, default 1000), each with its current state value.',
      priority: 'foreground',
      params: z.strictObject({ limit: z.number().int().min(0).max(1_000_000).optional() }),
      result: z.object({
        actors: z.array(z.object({ actor_id: z.string(), kind: z.enum(['lvol', 'scheduler', 'copy', 'nbd_export', 'nvmf_subsystem', 'nvme_controller']), label: z.string(), value: z.unknown() })),
        lvols_total: z.number(),
      }),
      handler: async (p) => {
        const { actors, lvols_total } = await listInspectable(node, p.limit ?? 1000);
        return {
          actors: actors.map((actor) => ({ actor_id: actor.actor_id, kind: actor.kind, label: actor.label, value: actor.value() })),
          lvols_total,
        };
      },
    }),
    inspect_get_machine: defineMethod({
      description:
        "An actor's state machine as XState defines it (states, parallel regions, transitions, guards, actions) and its current snapshot: what the dashboard draws as a statechart.",
      priority: 'foreground',
      params: z.strictObject({ actor_id: name }),
      result: z.object({ actor_id: z.string(), session_id: z.string(), kind: z.string(), label: z.string(), machine: z.unknown(), snapshot: z.unknown() }),
      handler: (p) => {
        const found = findInspectable(node, p.actor_id);
        return {
          actor_id: found.actor_id,
          // The root actor's session: inspection records of it (not of its invoked children) carry this id.
          session_id: found.actor.sessionId,
          kind: found.kind,
          label: found.label,
          machine: describeMachine(machineOf(found.actor)),
          snapshot: snapshotOf(found.actor),
        };
      },
    }),
    node_get_unloaded_lvstores: defineMethod({
      description:
        'Bdevs that hold an lvstore the node did not load: damaged metadata (reported, never repaired silently) or a name/UUID already in use. No SPDK listing shows these.',
      priority: 'foreground',
      params: z.strictObject({}),
      result: z.array(z.object({ bdev_name: z.string(), reason: z.enum(['damaged', 'conflict']), detail: z.string() })),
      handler: () => [
        ...[...node.damaged].map(([bdevName, error]) => ({ bdev_name: bdevName, reason: 'damaged' as const, detail: error.detail ?? error.message })),
        ...[...node.conflicting].map(([bdevName, detail]) => ({ bdev_name: bdevName, reason: 'conflict' as const, detail })),
      ],
    }),
    node_get_checksums: defineMethod({
      description:
        'Checksum status of every lvol whose checksum is not idle (queued, computing, stopped, done, failed), with the stored value when there is one: one call instead of one status call per snapshot.',
      priority: 'foreground',
      params: z.strictObject({ lvs_name: z.string().optional() }),
      result: z.array(checksumStatus.extend({ uuid: z.string(), alias: z.string(), checksum: checksumValue.nullable() })),
      handler: async (p) => {
        const out: Array<ChecksumStatus & { uuid: string; alias: string; checksum: bigint | null }> = [];
        // In slices (100,000 lvols are ~100 ms).
        await node.registry.forEachLvolInSlices(({ entry, lvol, actor }) => {
          if (p.lvs_name !== undefined && entry.store.name !== p.lvs_name) return;
          // Idle lvols (most of them) are skipped without starting an actor still waiting for its
          // start slice after a restart; the status of the others needs their actor.
          if (actor.checksumState === 'idle' && lvol.checksum === null) return;
          const status = actor.status();
          out.push({ ...status, uuid: lvol.id, alias: `${entry.store.name}/${lvol.name}`, checksum: lvol.checksum });
        });
        return out;
      },
    }),
    inspect_subscribe: defineMethod({
      description:
        'Stream XState inspection events (of every actor, or one: an lvol by UUID or alias, `scheduler`, `copy-N`, `nbd:NAME`) as `inspect_events` notifications.',
      priority: 'foreground',
      params: z.strictObject({ actor_id: z.string().optional() }),
      result: ok,
      handler: (p, connection) => {
        // Any inspectable actor by its id (an lvol also by alias); unknown ones are -19.
        const actorId = p.actor_id === undefined ? undefined : findInspectable(node, p.actor_id).actor_id;
        const cancel = node.inspector.subscribe(actorId, (batch) => connection.notify('inspect_events', batch));
        replaceSubscription(inspectSubscriptions, connection, cancel);
        return true as const;
      },
    }),
    inspect_unsubscribe: unsubscribeMethod(inspectSubscriptions, 'Stop the inspection stream of this connection.'),
    notify_subscribe: defineMethod({
      description: 'Push node events (bdev/lvol lifecycle, checksum and copy state and progress) as `notify` notifications.',
      priority: 'foreground',
      params: z.strictObject({ types: z.array(z.enum(notificationTypes)).optional() }),
      result: ok,
      handler: (p, connection) => {
        const wanted = new Set<string>(p.types ?? notificationTypes);
        const listener = (event: { type: string }) => {
          if (wanted.has(event.type)) connection.notify('notify', event);
        };
        node.events.on('event', listener);
        replaceSubscription(notifySubscriptions, connection, () => node.events.off('event', listener));
        return true as const;
      },
    }),
    notify_unsubscribe: unsubscribeMethod(notifySubscriptions, 'Stop node event notifications on this connection.'),
  };
}
