// One NVMe-oF subsystem's life (SPDK's spdk_nvmf_subsystem_state): inactive → active, paused while
// its namespaces change, and deactivated (final) when it is deleted.
//
// The actor layer (src/actors/nvmfTarget.ts) sends `controller.connect`/`controller.disconnect`
// as hosts come and go, `subsystem.pause`/`subsystem.resume` around a namespace change (SPDK
// pauses the subsystem for nvmf_subsystem_add_ns/remove_ns, so no I/O runs against a half-changed
// namespace list) and `subsystem.stop` for nvmf_delete_subsystem or shutdown: `stopping` waits for
// the last controller to go, then the subsystem is `deactivated`. Hosts may connect only while
// the state carries the `accepting` tag. Per-command figures are kept outside the machine, as
// for NBD exports: one event per I/O would flood the inspection stream.
import { assertEvent, assign, setup } from 'xstate';

export interface NvmfSubsystemInput {
  readonly nqn: string;
  readonly subtype: 'NVMe' | 'Discovery';
}

export interface NvmfSubsystemContext extends NvmfSubsystemInput {
  /** Controller ids (cntlid) connected now. */
  readonly controllers: readonly number[];
  readonly controllersTotal: number;
  /** Why the subsystem is stopping or deactivated (`nvmf_delete_subsystem`, `shutdown`). */
  readonly stopReason: string | null;
}

export type NvmfSubsystemEvent =
  | { type: 'subsystem.start' }
  | { type: 'subsystem.pause' }
  | { type: 'subsystem.resume' }
  | { type: 'subsystem.stop'; reason: string }
  | { type: 'controller.connect'; cntlid: number }
  | { type: 'controller.disconnect'; cntlid: number };

export const nvmfSubsystemMachine = setup({
  types: {
    context: {} as NvmfSubsystemContext,
    events: {} as NvmfSubsystemEvent,
    input: {} as NvmfSubsystemInput,
  },
  actions: {
    addController: assign(({ context, event }) => {
      assertEvent(event, 'controller.connect');
      if (context.controllers.includes(event.cntlid)) return {};
      return { controllers: [...context.controllers, event.cntlid], controllersTotal: context.controllersTotal + 1 };
    }),
    removeController: assign(({ context, event }) => {
      assertEvent(event, 'controller.disconnect');
      return { controllers: context.controllers.filter((id) => id !== event.cntlid) };
    }),
    recordStopReason: assign(({ event }) => {
      assertEvent(event, 'subsystem.stop');
      return { stopReason: event.reason };
    }),
    // Provided by the actor layer: disconnects every controller of the subsystem.
    disconnectControllers: () => {},
  },
  guards: {
    noControllers: ({ context }) => context.controllers.length === 0,
  },
}).createMachine({
  id: 'nvmfSubsystem',
  context: ({ input }) => ({ ...input, controllers: [], controllersTotal: 0, stopReason: null }),
  initial: 'inactive',
  // A controller may leave in any state (its host disconnects whenever it likes).
  on: { 'controller.disconnect': { actions: 'removeController' } },
  states: {
    inactive: {
      on: {
        'subsystem.start': { target: 'active' },
        'subsystem.stop': { target: 'deactivated', actions: 'recordStopReason' },
      },
    },
    active: {
      tags: ['accepting'],
      on: {
        'controller.connect': { actions: 'addController' },
        'subsystem.pause': { target: 'paused' },
        'subsystem.stop': { target: 'stopping', actions: ['recordStopReason', 'disconnectControllers'] },
      },
    },
    paused: {
      on: {
        'subsystem.resume': { target: 'active' },
        'subsystem.stop': { target: 'stopping', actions: ['recordStopReason', 'disconnectControllers'] },
      },
    },
    stopping: {
      always: { guard: 'noControllers', target: 'deactivated' },
    },
    deactivated: { type: 'final' },
  },
});
