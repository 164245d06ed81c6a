// Goal: the NVMe controller machine's transitions, from a table written here (not from the
// machine): a connect that succeeds or fails, a lost connection, detach from every live state.
import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, initialTransition, transition, waitFor } from 'xstate';
import { nvmeControllerMachine } from '../../src/machines/nvmeControllerMachine.ts';

const input = { name: 'Nvme0', traddr: '127.0.0.1', trsvcid: '4420', subnqn: 'nqn.2016-06.io.spdk:cnode1' };

describe('nvmeControllerMachine', () => {
  it('answers each event from each state as the table says', () => {
    const expected: Array<[from: string, event: 'controller.lost' | 'controller.detach', to: string]> = [
      ['enabled', 'controller.lost', 'failed'],
      ['enabled', 'controller.detach', 'detaching'],
      ['failed', 'controller.detach', 'detaching'],
      ['failed', 'controller.lost', 'failed'],
      ['connecting', 'controller.detach', 'detaching'],
      ['connecting', 'controller.lost', 'connecting'],
    ];
    const [initial] = initialTransition(nvmeControllerMachine, input);
    expect(initial.value).toBe('connecting');
    for (const [from, type, to] of expected) {
      const start = nvmeControllerMachine.resolveState({ value: from, context: initial.context });
      const event = type === 'controller.lost' ? { type, reason: 'gone' } : { type };
      const [next] = transition(nvmeControllerMachine, start, event);
      expect(next.value, `${from} + ${type}`).toBe(to);
    }
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
  });
});
