// Goal: the policy machine's transitions (disabled, inside and outside a window) and the window arithmetic, pure.
import { describe, expect, it } from 'vitest';
import { initialTransition, transition } from 'xstate';
import { backoffMs, defaultVerifyPolicy, msUntilWindowChange, verifyPolicyMachine, windowOpenAt } from '../../src/machines/verifyPolicyMachine.ts';

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
    const [, ended] = transition(closed, state, { type: 'verify.ended', lvolId: 'a', outcome: 'other', atMs: 0 });
    expect(actionTypes(ended)).not.toContain('startDue');
  });
  it('starts the next one when a verify ends inside a window, and a first registration at once', () => {
    const [state] = initialTransition(open, { policy: enabled });
    const [, ended] = transition(open, state, { type: 'verify.ended', lvolId: 'a', outcome: 'other', atMs: 0 });
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

describe('verify policy back-off (read errors)', () => {
  // The oracle: the rule written out, 1 min doubling, never past the interval.
  const expectedMs = (failures: number, intervalSec: number) => Math.min(intervalSec * 1000, 60_000 * 2 ** (failures - 1));
  it('waits 1 min after a first failure, doubling each failure in a row, at most the interval', () => {
    for (const intervalSec of [60, 300, 7 * 24 * 3600]) {
      for (let failures = 1; failures <= 30; failures++) expect(backoffMs(failures, intervalSec), `${failures} @ ${intervalSec}`).toBe(expectedMs(failures, intervalSec));
    }
    expect(backoffMs(10_000, 7 * 24 * 3600)).toBe(7 * 24 * 3600 * 1000);
  });

  it('keeps the back-off in the machine context: a read error sets it, a stop leaves it, a result clears it, also outside a window', () => {
    const open = verifyPolicyMachine.provide({ guards: { windowOpen: () => true } });
    const closed = verifyPolicyMachine.provide({ guards: { windowOpen: () => false } });
    const policy = { ...defaultVerifyPolicy(), enabled: true, interval_sec: 300 };
    const [state] = initialTransition(open, { policy });
    const [once] = transition(open, state, { type: 'verify.ended', lvolId: 'a', outcome: 'readError', atMs: 1000 });
    expect(once.context.backingOff).toEqual({ a: { failures: 1, retryAtMs: 61_000 } });
    const [twice] = transition(open, once, { type: 'verify.ended', lvolId: 'a', outcome: 'readError', atMs: 70_000 });
    expect(twice.context.backingOff).toEqual({ a: { failures: 2, retryAtMs: 190_000 } });
    const [stopped] = transition(open, twice, { type: 'verify.ended', lvolId: 'a', outcome: 'other', atMs: 80_000 });
    expect(stopped.context.backingOff).toEqual(twice.context.backingOff);
    const [healed] = transition(open, twice, { type: 'verify.ended', lvolId: 'a', outcome: 'done', atMs: 90_000 });
    expect(healed.context.backingOff).toEqual({});
    const [outside] = initialTransition(closed, { policy });
    expect(outside.value).toBe('outsideWindow');
    const [failedOutside] = transition(closed, outside, { type: 'verify.ended', lvolId: 'b', outcome: 'readError', atMs: 0 });
    expect(failedOutside.context.backingOff).toEqual({ b: { failures: 1, retryAtMs: 60_000 } });
  });
});
