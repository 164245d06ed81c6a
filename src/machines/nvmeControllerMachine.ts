// One attached NVMe-oF controller's life (SPDK's nvme_ctrlr states): connecting (ICReq, Connect,
// CC.EN and CSTS.RDY, Identify, I/O queues) → enabled; a lost connection (socket closed, bad PDU,
// a command timed out) → reconnecting, which connects again every reconnect_delay_sec until
// ctrlr_loss_timeout_sec is over (-1: forever) and then fails; after fast_io_fail_timeout_sec in
// it (0: never) I/O fails at once instead of waiting (context.ioFailFast). SPDK's semantics: a
// reconnect delay of 0 or a loss timeout of 0 means a lost controller fails at once. A failed
// controller stays until detached (final) by bdev_nvme_detach_controller or shutdown.
//
// The actor layer (src/actors/nvmeControllers.ts) provides `connect` and `disconnect` (through
// the connector the transport implements), sends `controller.lost` when a queue's connection
// ends, holds I/O while the controller is not enabled and resubmits it on the new session.
import { assign, fromPromise, setup } from 'xstate';

export interface NvmeControllerInput {
  readonly name: string;
  readonly traddr: string;
  readonly trsvcid: string;
  readonly subnqn: string;
  /** reconnect_delay_sec in ms; 0 (the default): no reconnecting. */
  readonly reconnectDelayMs?: number;
  /** ctrlr_loss_timeout_sec in ms; -1 forever, 0 (the default): fail at once. */
  readonly lossTimeoutMs?: number;
  /** fast_io_fail_timeout_sec in ms; 0 (the default): I/O waits until the loss timeout. */
  readonly fastIoFailMs?: number;
}

export interface NvmeControllerContext extends NvmeControllerInput {
  readonly reconnectDelayMs: number;
  readonly lossTimeoutMs: number;
  readonly fastIoFailMs: number;
  /** True once fast_io_fail_timeout_sec passed while reconnecting: I/O fails instead of waiting. */
  readonly ioFailFast: boolean;
  /** Successful reconnects since attach. */
  readonly reconnects: number;
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
    failIoFast: assign({ ioFailFast: true }),
  },
  guards: {
    mayReconnect: ({ context }) => context.reconnectDelayMs > 0 && context.lossTimeoutMs !== 0,
    lossTimeoutFinite: ({ context }) => context.lossTimeoutMs > 0,
    fastIoFailSet: ({ context }) => context.fastIoFailMs > 0,
  },
  delays: {
    reconnectDelay: ({ context }) => context.reconnectDelayMs,
    // A delay past setTimeout's 2^31 ms would fire at once: the guards keep 0 (never) from acting.
    lossTimeout: ({ context }) => Math.min(Math.max(context.lossTimeoutMs, 0), 2 ** 31 - 1),
    fastIoFail: ({ context }) => Math.min(context.fastIoFailMs, 2 ** 31 - 1),
  },
}).createMachine({
  id: 'nvmeController',
  context: ({ input }) => ({
    ...input,
    reconnectDelayMs: input.reconnectDelayMs ?? 0,
    lossTimeoutMs: input.lossTimeoutMs ?? 0,
    fastIoFailMs: input.fastIoFailMs ?? 0,
    ioFailFast: false,
    reconnects: 0,
    cntlid: null,
    namespaces: 0,
    error: null,
  }),
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
        'controller.lost': [
          { guard: 'mayReconnect', target: 'reconnecting', actions: 'recordLost' },
          { target: 'failed', actions: 'recordLost' },
        ],
        'controller.detach': { target: 'detaching' },
      },
    },
    reconnecting: {
      tags: ['reconnecting'],
      entry: assign({ ioFailFast: false }),
      initial: 'waiting',
      after: {
        lossTimeout: { guard: 'lossTimeoutFinite', target: 'failed' },
        fastIoFail: { guard: 'fastIoFailSet', actions: 'failIoFast' },
      },
      on: { 'controller.detach': { target: 'detaching' } },
      states: {
        waiting: { after: { reconnectDelay: { target: 'connecting' } } },
        connecting: {
          invoke: {
            src: 'connect',
            onDone: {
              target: '#nvmeController.enabled',
              actions: assign(({ context, event }) => ({ cntlid: event.output.cntlid, namespaces: event.output.namespaces, reconnects: context.reconnects + 1, ioFailFast: false })),
            },
            onError: { target: 'waiting', actions: assign(({ event }) => ({ error: errorText(event.error) })) },
          },
        },
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
