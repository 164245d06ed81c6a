// One attached NVMe-oF controller's life (SPDK's nvme_ctrlr states): connecting (ICReq, Connect,
// CC.EN and CSTS.RDY, Identify, I/O queues) → enabled; a lost connection (socket closed, bad PDU,
// a command timed out) → reconnecting, which connects again every reconnect_delay_sec (at once to
// an alternate path, multipath failover) until ctrlr_loss_timeout_sec is over (-1: forever); then
// the controller is lost for good and deleted (detaching, `lostForGood`), as SPDK deletes it and
// its bdevs. After fast_io_fail_timeout_sec in reconnecting (0: never) I/O fails at once instead
// of waiting (context.ioFailFast). With a loss timeout or a reconnect delay of 0 (SPDK's defaults)
// a lost controller is `failed`: kept with its bdevs, I/O failing, and connected again every
// failedRetryMs (SPDK retries a failed controller from its admin queue poller) or on a reset.
// bdev_nvme_reset_controller is `resetting`: the session is closed and connected anew.
//
// The actor layer (src/actors/nvmeControllers.ts) provides `connect`, `reset` and `disconnect`
// (through the connector the transport implements), sends `controller.lost` when a queue's
// connection ends, holds I/O while the controller is not enabled and resubmits it on the new
// session, and deletes a controller lost for good.
import { assign, fromPromise, setup } from 'xstate';
import { nvmeInitiatorFailedRetryMs } from '../constants.ts';

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
  /** Paths (transport IDs) known: more than one fails over at once to the next (multipath failover). */
  readonly pathCount?: number;
  /** How often a failed controller tries to connect again; nvmeInitiatorFailedRetryMs by default. */
  readonly failedRetryMs?: number;
}

export interface NvmeControllerContext extends NvmeControllerInput {
  readonly reconnectDelayMs: number;
  readonly lossTimeoutMs: number;
  readonly fastIoFailMs: number;
  readonly pathCount: number;
  readonly failedRetryMs: number;
  /** Resets (bdev_nvme_reset_controller, and a failed controller's retries) that connected again. */
  readonly resets: number;
  /** True once the loss timeout passed: the controller is deleted with its bdevs. */
  readonly lostForGood: boolean;
  /** True once fast_io_fail_timeout_sec passed while reconnecting: I/O fails instead of waiting. */
  readonly ioFailFast: boolean;
  /** Successful reconnects since attach. */
  readonly reconnects: number;
  readonly cntlid: number | null;
  readonly namespaces: number;
  /** Why it failed (connect error, connection lost), or null. */
  readonly error: string | null;
}

export type NvmeControllerEvent =
  | { type: 'controller.lost'; reason: string }
  | { type: 'controller.detach' }
  | { type: 'controller.reset' }
  | { type: 'controller.paths'; count: number };

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
    // Provided by the actor layer: ends the current session (what it has in flight fails) and connects anew.
    reset: fromPromise<NvmeConnected>(async () => {
      throw new Error('reset is provided by the actor layer');
    }),
    disconnect: fromPromise<void>(async () => {}),
  },
  actions: {
    recordLost: assign(({ event }) => (event.type === 'controller.lost' ? { error: event.reason } : {})),
    recordError: assign(({ event }) => ({ error: errorText((event as { error?: unknown }).error) })),
    recordPaths: assign(({ event }) => (event.type === 'controller.paths' ? { pathCount: event.count } : {})),
    failIoFast: assign({ ioFailFast: true }),
    loseForGood: assign(({ context }) => ({ lostForGood: true, error: `not reconnected within ctrlr_loss_timeout_sec: ${context.error ?? 'connection lost'}` })),
  },
  guards: {
    mayReconnect: ({ context }) => context.reconnectDelayMs > 0 && context.lossTimeoutMs !== 0,
    mayRecover: ({ context }) => (context.reconnectDelayMs > 0 && context.lossTimeoutMs !== 0) || context.pathCount > 1,
    hasAlternatePath: ({ context }) => context.pathCount > 1,
    lossTimeoutFinite: ({ context }) => context.lossTimeoutMs > 0,
    fastIoFailSet: ({ context }) => context.fastIoFailMs > 0,
  },
  delays: {
    reconnectDelay: ({ context }) => context.reconnectDelayMs,
    // A delay past setTimeout's 2^31 ms would fire at once: the guards keep 0 (never) from acting.
    lossTimeout: ({ context }) => Math.min(Math.max(context.lossTimeoutMs, 0), 2 ** 31 - 1),
    fastIoFail: ({ context }) => Math.min(context.fastIoFailMs, 2 ** 31 - 1),
    failedRetry: ({ context }) => context.failedRetryMs,
  },
}).createMachine({
  id: 'nvmeController',
  context: ({ input }) => ({
    ...input,
    reconnectDelayMs: input.reconnectDelayMs ?? 0,
    lossTimeoutMs: input.lossTimeoutMs ?? 0,
    fastIoFailMs: input.fastIoFailMs ?? 0,
    pathCount: input.pathCount ?? 1,
    failedRetryMs: input.failedRetryMs ?? nvmeInitiatorFailedRetryMs,
    resets: 0,
    lostForGood: false,
    ioFailFast: false,
    reconnects: 0,
    cntlid: null,
    namespaces: 0,
    error: null,
  }),
  initial: 'connecting',
  on: { 'controller.paths': { actions: 'recordPaths' } },
  states: {
    connecting: {
      invoke: {
        src: 'connect',
        onDone: { target: 'enabled', actions: assign(({ event }) => ({ cntlid: event.output.cntlid, namespaces: event.output.namespaces })) },
        onError: { target: 'failed', actions: 'recordError' },
      },
      on: { 'controller.detach': { target: 'detaching' } },
    },
    enabled: {
      tags: ['serving'],
      on: {
        'controller.lost': [
          { guard: 'mayRecover', target: 'reconnecting', actions: 'recordLost' },
          { target: 'failed', actions: 'recordLost' },
        ],
        'controller.reset': { target: 'resetting' },
        'controller.detach': { target: 'detaching' },
      },
    },
    resetting: {
      tags: ['resetting'],
      invoke: {
        src: 'reset',
        onDone: {
          target: 'enabled',
          actions: assign(({ context, event }) => ({ cntlid: event.output.cntlid, namespaces: event.output.namespaces, resets: context.resets + 1, error: null })),
        },
        onError: [
          { guard: 'mayReconnect', target: 'reconnecting', actions: 'recordError' },
          { target: 'failed', actions: 'recordError' },
        ],
      },
      on: { 'controller.detach': { target: 'detaching' } },
    },
    reconnecting: {
      tags: ['reconnecting'],
      entry: assign({ ioFailFast: false }),
      initial: 'choosing',
      after: {
        lossTimeout: { guard: 'lossTimeoutFinite', target: 'detaching', actions: 'loseForGood' },
        fastIoFail: { guard: 'fastIoFailSet', actions: 'failIoFast' },
      },
      on: { 'controller.detach': { target: 'detaching' } },
      states: {
        // SPDK fails over to an alternate path at once; the same path is tried after the delay.
        choosing: { always: [{ guard: 'hasAlternatePath', target: 'connecting' }, { target: 'waiting' }] },
        waiting: {
          after: { reconnectDelay: { target: 'connecting' } },
          // A reset while a reconnect is delayed connects now (SPDK's bdev_nvme_reconnect_ctrlr_now).
          on: { 'controller.reset': { target: 'connecting' } },
        },
        connecting: {
          invoke: {
            src: 'connect',
            onDone: {
              target: '#nvmeController.enabled',
              actions: assign(({ context, event }) => ({ cntlid: event.output.cntlid, namespaces: event.output.namespaces, reconnects: context.reconnects + 1, ioFailFast: false })),
            },
            onError: [
              { guard: 'mayReconnect', target: 'waiting', actions: 'recordError' },
              { target: '#nvmeController.failed', actions: 'recordError' },
            ],
          },
        },
      },
    },
    failed: {
      after: { failedRetry: { target: 'resetting' } },
      on: { 'controller.reset': { target: 'resetting' }, 'controller.detach': { target: 'detaching' } },
    },
    detaching: {
      invoke: { src: 'disconnect', onDone: { target: 'detached' }, onError: { target: 'detached' } },
    },
    detached: { type: 'final' },
  },
});
