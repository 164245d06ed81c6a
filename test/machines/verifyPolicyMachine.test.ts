// Goal: the policy machine's transitions (disabled, inside and outside a window) and the window arithmetic, pure.
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { defaultVerifyPolicy, msUntilWindowChange, verifyPolicyMachine, windowOpenAt } from '../../src/machines/verifyPolicyMachine.ts';

// 2024-01-01 was a Monday (day 1).
const mondayMidnightUtc = Date.UTC(2024, 0, 1);
const hourMs = 3600_000;

describe('verify policy windows (UTC)', () => {
  const windows = [{ days: [1], start_hour: 2, end_hour: 4 }];
  it('is open only in the window hours of its days', () => {
    expect(windowOpenAt(windows, mondayMidnightUtc + 1 * hourMs)).toBe(false);
    expect(windowOpenAt(windows, mondayMidnightUtc + 2 * hourMs)).toBe(true);
    expect(windowOpenAt(windows, mondayMidnightUtc + 4 * hourMs - 1)).toBe(true);
    expect(windowOpenAt(windows, mondayMidnightUtc + 4 * hourMs)).toBe(false);
    expect(windowOpenAt(windows, mondayMidnightUtc + 24 * hourMs + 2 * hourMs)).toBe(false); // Tuesday
    expect(windowOpenAt([], mondayMidnightUtc)).toBe(true);
  });
  it('says how long until the window opens or closes', () => {
    expect(msUntilWindowChange(windows, mondayMidnightUtc + 30 * 60_000)).toBe(90 * 60_000);
    expect(msUntilWindowChange(windows, mondayMidnightUtc + 3 * hourMs)).toBe(hourMs);
    // After Monday's window: next Monday 02:00.
    expect(msUntilWindowChange(windows, mondayMidnightUtc + 4 * hourMs)).toBe(7 * 24 * hourMs - 2 * hourMs);
    expect(msUntilWindowChange([], mondayMidnightUtc)).toBe(Number.POSITIVE_INFINITY);
    expect(msUntilWindowChange([{ days: [0, 1, 2, 3, 4, 5, 6], start_hour: 0, end_hour: 24 }], mondayMidnightUtc)).toBe(Number.POSITIVE_INFINITY);
  });
});

describe('verify policy machine', () => {
  const open = verifyPolicyMachine.provide({ guards: { windowOpen: () => true } });
  const closed = verifyPolicyMachine.provide({ guards: { windowOpen: () => false } });
  const enabled = { ...defaultVerifyPolicy(), enabled: true };
  const actionTypes = (actions: readonly { type: string }[]) => actions.map((action) => action.type);

  it('starts disabled with the default policy and stops nothing it did not start', () => {
    const [state] = initialTransition(open, { policy: defaultVerifyPolicy() });
    expect(state.value).toBe('disabled');
  });
  it('scans and starts due verifies on entering a window', () => {
    const [state, actions] = initialTransition(open, { policy: enabled });
    expect(state.value).toBe('inWindow');
    expect(actionTypes(actions)).toEqual(expect.arrayContaining(['scanDue', 'startDue']));
  });
  it('stops running verifies outside a window, and starts nothing there', () => {
    const [state, actions] = initialTransition(closed, { policy: enabled });
    expect(state.value).toBe('outsideWindow');
    expect(state.hasTag('noVerifyReads')).toBe(true);
    expect(actionTypes(actions)).toContain('stopRunning');
    expect(actionTypes(actions)).not.toContain('startDue');
    const [, ended] = transition(closed, state, { type: 'verify.ended', lvolId: 'a' });
    expect(actionTypes(ended)).not.toContain('startDue');
  });
  it('starts the next one when a verify ends inside a window, and a first registration at once', () => {
    const [state] = initialTransition(open, { policy: enabled });
    const [, ended] = transition(open, state, { type: 'verify.ended', lvolId: 'a' });
    expect(actionTypes(ended)).toEqual(['startDue']);
    const [, registered] = transition(open, state, { type: 'checksum.registered', lvolId: 'a' });
    expect(actionTypes(registered)).toEqual(['rememberRegistered', 'startDue']);
  });
  it('disabling the policy stops what it started', () => {
    const [state] = initialTransition(open, { policy: enabled });
    const [next, actions] = transition(open, state, { type: 'policy.set', policy: defaultVerifyPolicy() });
    expect(next.value).toBe('disabled');
    expect(actionTypes(actions)).toContain('stopRunning');
  });
});
