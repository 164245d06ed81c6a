// One NBD export's life: which clients it serves, and how it stops (SPEC §7).
//
// The actor layer (src/actors/nbdExports.ts) sends `connection.open` when a client enters the
// transmission phase on this export and `connection.close` when its socket is gone. `export.stop`
// (nbd_stop_export, the bdev going away, node shutdown) asks every client to disconnect:
// in-flight requests finish, later ones get ESHUTDOWN; once the last client has left the export
// is `stopped`. States say at a glance what an export does: `idle` (no client), `serving`,
// `draining` (stopping, clients still leaving), `stopped` (final).
//
// Per-request counters (requests, bytes) are kept outside the machine: one event per I/O would
// flood the inspection stream and cost every request an actor step.
import { assertEvent, assign, setup } from 'xstate';

export interface NbdExportInput {
  readonly exportName: string;
  readonly bdevName: string;
}

export interface NbdExportContext extends NbdExportInput {
  /** Ids of the connections in the transmission phase on this export. */
  readonly connections: readonly number[];
  readonly connectionsTotal: number;
  /** Why the export is stopping or stopped (`nbd_stop_export`, `bdev deleted`, `shutdown`). */
  readonly stopReason: string | null;
}

export type NbdExportEvent =
  | { type: 'connection.open'; connectionId: number }
  | { type: 'connection.close'; connectionId: number }
  | { type: 'export.stop'; reason: string };

export const nbdExportMachine = setup({
  types: {
    context: {} as NbdExportContext,
    events: {} as NbdExportEvent,
    input: {} as NbdExportInput,
  },
  actions: {
    addConnection: assign(({ context, event }) => {
      assertEvent(event, 'connection.open');
      if (context.connections.includes(event.connectionId)) return {};
      return { connections: [...context.connections, event.connectionId], connectionsTotal: context.connectionsTotal + 1 };
    }),
    removeConnection: assign(({ context, event }) => {
      assertEvent(event, 'connection.close');
      return { connections: context.connections.filter((id) => id !== event.connectionId) };
    }),
    recordStopReason: assign(({ event }) => {
      assertEvent(event, 'export.stop');
      return { stopReason: event.reason };
    }),
    // Provided by the actor layer: tells every connection of the export to drain and close.
    disconnectClients: () => {},
  },
  guards: {
    noConnections: ({ context }) => context.connections.length === 0,
  },
}).createMachine({
  id: 'nbdExport',
  context: ({ input }) => ({ ...input, connections: [], connectionsTotal: 0, stopReason: null }),
  initial: 'idle',
  states: {
    idle: {
      on: {
        'connection.open': { target: 'serving', actions: 'addConnection' },
        'export.stop': { target: 'stopped', actions: 'recordStopReason' },
      },
    },
    serving: {
      on: {
        'connection.open': { actions: 'addConnection' },
        'connection.close': { actions: 'removeConnection' },
        'export.stop': { target: 'draining', actions: ['recordStopReason', 'disconnectClients'] },
      },
      always: { guard: 'noConnections', target: 'idle' },
    },
    draining: {
      // No new client is admitted while draining; the actor layer refuses them before sending.
      on: { 'connection.close': { actions: 'removeConnection' } },
      always: { guard: 'noConnections', target: 'stopped' },
    },
    stopped: { type: 'final' },
  },
});
