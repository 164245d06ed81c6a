// One attached NVMe-oF controller's life (SPDK's nvme_ctrlr states): connecting (ICReq, Connect,
// CC.EN and CSTS.RDY, Identify, I/O queues) → enabled, failed when the connection is lost or
// cannot be made, and detached (final) after bdev_nvme_detach_controller or shutdown.
//
// The actor layer (src/actors/nvmeControllers.ts) provides `connect` and `disconnect` (through
// the connector the transport implements) and sends `controller.lost` when a queue's connection
// ends. Reconnecting (reconnect_delay_sec, ctrlr_loss_timeout_sec) and resets are not here yet:
// a lost controller stays `failed` until it is detached.
import { assign, fromPromise, setup } from 'xstate';

export interface NvmeControllerInput {
  readonly name: string;
  readonly traddr: string;
  readonly trsvcid: string;
  readonly subnqn: string;
}

export interface NvmeControllerContext extends NvmeControllerInput {
  readonly cntlid: number | null;
  readonly namespaces: number;
  /** Why it failed (connect error, connection lost), or null. */
  readonly error: string | null;
}

export type NvmeControllerEvent = { type: 'controller.lost'; reason: string } | { type: 'controller.detach' };

export interface NvmeConnected {
  readonly cntlid: number;
  readonly namespaces: number;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export const nvmeControllerMachine = setup({
  types: {
    context: {} as NvmeControllerContext,
    events: {} as NvmeControllerEvent,
    input: {} as NvmeControllerInput,
  },
  actors: {
    // Provided by the actor layer: connects through the transport's connector.
    connect: fromPromise<NvmeConnected>(async () => {
      throw new Error('connect is provided by the actor layer');
    }),
    disconnect: fromPromise<void>(async () => {}),
  },
  actions: {
    recordLost: assign(({ event }) => (event.type === 'controller.lost' ? { error: event.reason } : {})),
  },
}).createMachine({
  id: 'nvmeController',
  context: ({ input }) => ({ ...input, cntlid: null, namespaces: 0, error: null }),
  initial: 'connecting',
  states: {
    connecting: {
      invoke: {
        src: 'connect',
        onDone: { target: 'enabled', actions: assign(({ event }) => ({ cntlid: event.output.cntlid, namespaces: event.output.namespaces })) },
        onError: { target: 'failed', actions: assign(({ event }) => ({ error: errorText(event.error) })) },
      },
      on: { 'controller.detach': { target: 'detaching' } },
    },
    enabled: {
      tags: ['serving'],
      on: {
        'controller.lost': { target: 'failed', actions: 'recordLost' },
        'controller.detach': { target: 'detaching' },
      },
    },
    failed: {
      on: { 'controller.detach': { target: 'detaching' } },
    },
    detaching: {
      invoke: { src: 'disconnect', onDone: { target: 'detached' }, onError: { target: 'detached' } },
    },
    detached: { type: 'final' },
  },
});
