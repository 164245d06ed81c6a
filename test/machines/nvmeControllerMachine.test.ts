// Goal: the NVMe controller machine's transitions, from a table written here (not from the
// machine): a connect that succeeds or fails, a lost connection (failed at once, or reconnecting
// when reconnect_delay_sec and ctrlr_loss_timeout_sec allow it, or an alternate path exists),
// reset (bdev_nvme_reset_controller), deletion past the loss timeout, a failed controller's
// retries, detach from every live state.
import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, initialTransition, transition, waitFor } from 'xstate';
import { nvmeControllerMachine } from '../../src/machines/nvmeControllerMachine.ts';

const input = { name: 'Nvme0', traddr: '127.0.0.1', trsvcid: '4420', subnqn: 'nqn.2016-06.io.spdk:cnode1' };

describe('nvmeControllerMachine', () => {
  it('answers each event from each state as the table says', () => {
    type Value = string | Record<string, string>;
    const expected: Array<[from: Value, event: 'controller.lost' | 'controller.detach' | 'controller.reset', to: Value]> = [
      ['enabled', 'controller.lost', 'failed'],
      ['enabled', 'controller.detach', 'detaching'],
      ['enabled', 'controller.reset', 'resetting'],
      ['failed', 'controller.detach', 'detaching'],
      ['failed', 'controller.lost', 'failed'],
      ['failed', 'controller.reset', 'resetting'],
      ['connecting', 'controller.detach', 'detaching'],
      ['connecting', 'controller.lost', 'connecting'],
      ['connecting', 'controller.reset', 'connecting'],
      ['resetting', 'controller.lost', 'resetting'],
      ['resetting', 'controller.reset', 'resetting'],
      ['resetting', 'controller.detach', 'detaching'],
      [{ reconnecting: 'waiting' }, 'controller.reset', { reconnecting: 'connecting' }],
      [{ reconnecting: 'connecting' }, 'controller.reset', { reconnecting: 'connecting' }],
      [{ reconnecting: 'connecting' }, 'controller.detach', 'detaching'],
    ];
    const [initial] = initialTransition(nvmeControllerMachine, input);
    expect(initial.value).toBe('connecting');
    for (const [from, type, to] of expected) {
      const start = nvmeControllerMachine.resolveState({ value: from, context: initial.context });
      const event = type === 'controller.lost' ? { type, reason: 'gone' } : { type };
      const [next] = transition(nvmeControllerMachine, start, event);
      expect(next.value, `${JSON.stringify(from)} + ${type}`).toEqual(to);
    }
  });

  it('reconnects a lost controller only when both the reconnect delay and the loss timeout allow it (SPDK)', () => {
    const expected: Array<[reconnectDelayMs: number, lossTimeoutMs: number, to: unknown]> = [
      [0, 0, 'failed'],
      [0, -1, 'failed'],
      [1000, 0, 'failed'],
      [1000, 5000, { reconnecting: 'waiting' }],
      [1000, -1, { reconnecting: 'waiting' }],
    ];
    for (const [reconnectDelayMs, lossTimeoutMs, to] of expected) {
      const [initial] = initialTransition(nvmeControllerMachine, { ...input, reconnectDelayMs, lossTimeoutMs });
      const enabled = nvmeControllerMachine.resolveState({ value: 'enabled', context: initial.context });
      const [next] = transition(nvmeControllerMachine, enabled, { type: 'controller.lost', reason: 'gone' });
      expect(next.value, `delay ${reconnectDelayMs} loss ${lossTimeoutMs}`).toEqual(to);
    }
    const [initial] = initialTransition(nvmeControllerMachine, { ...input, reconnectDelayMs: 1000, lossTimeoutMs: -1 });
    const reconnecting = nvmeControllerMachine.resolveState({ value: { reconnecting: 'waiting' }, context: initial.context });
    expect(transition(nvmeControllerMachine, reconnecting, { type: 'controller.lost', reason: 'again' })[0].value).toEqual({ reconnecting: 'waiting' });
    expect(transition(nvmeControllerMachine, reconnecting, { type: 'controller.detach' })[0].value).toBe('detaching');
  });

  it('fails over at once to an alternate path, whatever the reconnect delay (SPDK bdev_nvme_failover_trid)', () => {
    const [initial] = initialTransition(nvmeControllerMachine, input);
    const enabled = nvmeControllerMachine.resolveState({ value: 'enabled', context: initial.context });
    const [twoPaths] = transition(nvmeControllerMachine, enabled, { type: 'controller.paths', count: 2 });
    expect(twoPaths.context.pathCount).toBe(2);
    expect(transition(nvmeControllerMachine, twoPaths, { type: 'controller.lost', reason: 'gone' })[0].value).toEqual({ reconnecting: 'connecting' });
    const [delayed] = initialTransition(nvmeControllerMachine, { ...input, reconnectDelayMs: 1000, lossTimeoutMs: 5000, pathCount: 2 });
    const enabledDelayed = nvmeControllerMachine.resolveState({ value: 'enabled', context: delayed.context });
    expect(transition(nvmeControllerMachine, enabledDelayed, { type: 'controller.lost', reason: 'gone' })[0].value).toEqual({ reconnecting: 'connecting' });
  });

  it('is enabled again after a reset that connects, failed after one that does not (no reconnect configured), and retries a failed controller', async () => {
    let connects = 0;
    let resets = 0;
    let resetWorks = true;
    const actor = createActor(
      nvmeControllerMachine.provide({
        actors: {
          connect: fromPromise(async () => ({ cntlid: ++connects, namespaces: 1 })),
          reset: fromPromise(async () => {
            resets++;
            if (!resetWorks) throw new Error('refused');
            return { cntlid: 10 + resets, namespaces: 1 };
          }),
        },
      }),
      { input: { ...input, failedRetryMs: 20 } },
    ).start();
    await waitFor(actor, (state) => state.value === 'enabled');
    actor.send({ type: 'controller.reset' });
    expect(actor.getSnapshot().value).toBe('resetting');
    expect((await waitFor(actor, (state) => state.value === 'enabled')).context).toMatchObject({ cntlid: 11, resets: 1 });
    resetWorks = false;
    actor.send({ type: 'controller.reset' });
    const failed = await waitFor(actor, (state) => state.value === 'failed');
    expect(failed.context.error).toBe('refused');
    // A failed controller tries again by itself (SPDK's admin poller retries it).
    resetWorks = true;
    expect((await waitFor(actor, (state) => state.value === 'enabled')).context.resets).toBe(2);
    expect(resets).toBeGreaterThanOrEqual(3);
    actor.stop();
  });

  it('retries connect every reconnect delay until one succeeds, then is enabled again', async () => {
    let attempts = 0;
    const actor = createActor(
      nvmeControllerMachine.provide({
        actors: {
          connect: fromPromise(async () => {
            attempts++;
            // The first connect is the attach; the next two (reconnects) fail.
            if (attempts === 2 || attempts === 3) throw new Error(`refused ${attempts}`);
            return { cntlid: attempts, namespaces: 1 };
          }),
        },
      }),
      { input: { ...input, reconnectDelayMs: 5, lossTimeoutMs: -1 } },
    ).start();
    await waitFor(actor, (state) => state.value === 'enabled');
    actor.send({ type: 'controller.lost', reason: 'connection reset' });
    expect(actor.getSnapshot().hasTag('reconnecting')).toBe(true);
    const again = await waitFor(actor, (state) => state.value === 'enabled');
    expect(attempts).toBe(4);
    expect(again.context).toMatchObject({ cntlid: 4, reconnects: 1, ioFailFast: false });
    actor.stop();
  });

  it('is deleted (lost for good) after the loss timeout when no reconnect succeeds, and flags fast I/O failure before that', async () => {
    let attempts = 0;
    const actor = createActor(
      nvmeControllerMachine.provide({
        actors: {
          connect: fromPromise<{ cntlid: number; namespaces: number }>(async () => {
            // Only the attach connects; every reconnect is refused.
            if (attempts++ > 0) throw new Error('refused');
            return { cntlid: 1, namespaces: 1 };
          }),
        },
      }),
      { input: { ...input, reconnectDelayMs: 5, lossTimeoutMs: 150, fastIoFailMs: 20 } },
    ).start();
    await waitFor(actor, (state) => state.value === 'enabled');
    actor.send({ type: 'controller.lost', reason: 'connection reset' });
    const flagged = await waitFor(actor, (state) => state.context.ioFailFast);
    expect(flagged.hasTag('reconnecting')).toBe(true);
    const lost = await waitFor(actor, (state) => state.status === 'done');
    expect(lost.value).toBe('detached');
    expect(lost.context.lostForGood).toBe(true);
    expect(lost.context.error).toMatch(/ctrlr_loss_timeout_sec: refused/);
  });

  it('is enabled with the controller id after connect, failed with the reason when connect fails, and detached (final) after disconnect', async () => {
    const good = createActor(
      nvmeControllerMachine.provide({ actors: { connect: fromPromise(async () => ({ cntlid: 7, namespaces: 2 })) } }),
      { input },
    ).start();
    const enabled = await waitFor(good, (state) => state.value === 'enabled');
    expect(enabled.context).toMatchObject({ cntlid: 7, namespaces: 2, error: null });
    good.send({ type: 'controller.lost', reason: 'connection reset' });
    expect(good.getSnapshot().context.error).toBe('connection reset');
    good.send({ type: 'controller.detach' });
    expect((await waitFor(good, (state) => state.status === 'done')).value).toBe('detached');

    const bad = createActor(
      nvmeControllerMachine.provide({ actors: { connect: fromPromise<{ cntlid: number; namespaces: number }>(async () => { throw new Error('refused'); }) } }),
      { input },
    ).start();
    const failed = await waitFor(bad, (state) => state.value === 'failed');
    expect(failed.context.error).toBe('refused');
    bad.stop();
  });
});
