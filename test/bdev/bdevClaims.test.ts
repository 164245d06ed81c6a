// The one claim mechanism of every bdev: who may claim, write and delete, checked against a table
// of expected answers written out here rather than derived from the code.
import { describe, expect, it } from 'vitest';
import { BdevClaims } from '../../src/bdev/bdevClaims.ts';
import { isStorageError } from '../../src/errors.ts';

function errorOf(work: () => unknown): { code: string; message: string } | undefined {
  try {
    work();
    return undefined;
  } catch (error) {
    if (!isStorageError(error)) throw error;
    return { code: error.errno, message: error.message };
  }
}

describe('BdevClaims', () => {
  it('lets one exclusive_write holder in and refuses every later claim with EPERM naming it', () => {
    // Goal: an lvstore on a bdev is its only claimer, as SPDK answers -EPERM for a claimed bdev.
    const claims = new BdevClaims(() => 'm0');
    claims.claim('exclusive_write', 'lvstore lvs0');
    expect(errorOf(() => claims.claim('exclusive_write', 'lvstore other'))).toMatchObject({ code: 'EPERM' });
    const shared = errorOf(() => claims.claim('read_many_write_none', 'esnap clones'));
    expect(shared?.code).toBe('EPERM');
    expect(shared?.message).toContain('bdev m0 is already claimed by lvstore lvs0');
    expect(claims.writer()).toBe('lvstore lvs0');
  });

  it('shares read_many_write_none between holders, and refuses an exclusive_write meanwhile', () => {
    const claims = new BdevClaims(() => 'snap');
    const first = claims.claim('read_many_write_none', 'clones of lvs1');
    claims.claim('read_many_write_none', 'clones of lvs2');
    expect(errorOf(() => claims.claim('exclusive_write', 'lvstore x'))?.code).toBe('EPERM');
    expect(claims.frozenBy()).toBe('clones of lvs1');
    first.release();
    expect(claims.frozenBy()).toBe('clones of lvs2');
  });

  it('refuses an exclusive_write claim with EBUSY while a consumer has the bdev open, and allows opens of a claimed bdev', () => {
    // Goal: no lvstore is created under an export's client; an export of a claimed bdev reads only.
    const claims = new BdevClaims(() => 'm1');
    const exported = claims.open('NBD export m1');
    const refused = errorOf(() => claims.claim('exclusive_write', 'lvstore lvs0'));
    expect(refused).toMatchObject({ code: 'EBUSY' });
    expect(refused?.message).toContain('in use by NBD export m1');
    exported.release();
    claims.claim('exclusive_write', 'lvstore lvs0');
    expect(errorOf(() => claims.open('NBD export m1'))).toBeUndefined();
  });

  it('lets only the writer write, and nobody while a read_many_write_none claim is held', () => {
    const claims = new BdevClaims(() => 'b');
    expect(errorOf(() => claims.assertWritable())).toBeUndefined();
    const lvstore = claims.claim('exclusive_write', 'lvstore lvs0');
    expect(errorOf(() => claims.assertWritable())?.code).toBe('EPERM');
    expect(errorOf(() => claims.assertWritable('NBD export b'))?.code).toBe('EPERM');
    expect(errorOf(() => claims.assertWritable('lvstore lvs0'))).toBeUndefined();
    lvstore.release();
    claims.claim('read_many_write_none', 'esnap clones');
    const frozen = errorOf(() => claims.assertWritable());
    expect(frozen?.code).toBe('EPERM');
    expect(frozen?.message).toContain('held read-only by esnap clones');
  });

  it('blocks deletion by every holder but the removable ones and the one excepted, naming them', () => {
    // Goal: one deletion check; an export blocks it, a copy (removable) is stopped by the delete instead.
    const claims = new BdevClaims(() => 'lvs/vol');
    expect(errorOf(() => claims.assertDeletable())).toBeUndefined();
    const copy = claims.open('copy 7', { removable: true });
    expect(errorOf(() => claims.assertDeletable())).toBeUndefined();
    const exported = claims.open('NBD export vol');
    const busy = errorOf(() => claims.assertDeletable());
    expect(busy?.code).toBe('EBUSY');
    expect(busy?.message).toContain('bdev lvs/vol is in use by NBD export vol');
    expect(busy?.message).not.toContain('copy 7');
    expect(errorOf(() => claims.assertDeletable('lvs/vol', exported))).toBeUndefined();
    exported.release();
    exported.release();
    copy.release();
    expect(claims.size).toBe(0);
    expect(claims.list()).toEqual([]);
  });
});
