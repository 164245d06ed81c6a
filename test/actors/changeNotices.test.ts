import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChangeNotices, type ChangeNotice, clusterNoticeIntervalMs } from '../../src/actors/changeNotices.ts';

describe('change notices from durable commits', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('announces renames, re-parenting and merges at once, naming the lvol whose row changed', () => {
    const seen: ChangeNotice[] = [];
    const notices = new ChangeNotices((notice) => seen.push(notice));
    notices.committed('lvs-1', [{ type: 'lvol.rename', id: 'a', name: 'b' }]);
    notices.committed('lvs-1', [{ type: 'lvol.snapshot', id: 'origin', snapshotId: 'snap' }]);
    notices.committed('lvs-1', [{ type: 'lvol.merge', id: 'snap', cloneId: 'clone' }]);
    notices.committed('lvs-1', [{ type: 'lvstore.rename', name: 'x' }]);
    notices.committed('lvs-1', [{ type: 'lvol.delete', id: 'gone' }]);
    expect(seen).toEqual([
      { type: 'lvol_changed', uuid: 'a', lvstore: 'lvs-1', change: 'lvol.rename' },
      { type: 'lvol_changed', uuid: 'origin', lvstore: 'lvs-1', change: 'lvol.snapshot' },
      { type: 'lvol_changed', uuid: 'clone', lvstore: 'lvs-1', change: 'lvol.merge' },
      { type: 'lvstore_changed', uuid: 'lvs-1', change: 'lvstore.rename' },
    ]);
  });

  it('coalesces cluster allocations to one notice per lvol per interval', () => {
    vi.useFakeTimers();
    const seen: ChangeNotice[] = [];
    const notices = new ChangeNotices((notice) => seen.push(notice));
    for (let index = 0; index < 100; index++) {
      notices.committed('lvs-1', [{ type: 'cluster.allocate', id: index % 2 ? 'odd' : 'even', clusterIndex: index, physicalCluster: index }]);
    }
    expect(seen).toEqual([]);
    vi.advanceTimersByTime(clusterNoticeIntervalMs);
    expect(seen.map((notice) => notice.uuid).sort()).toEqual(['even', 'odd']);
    expect(seen.every((notice) => notice.change === 'clusters')).toBe(true);
    notices.committed('lvs-1', [{ type: 'cluster.release', id: 'odd', clusterIndices: [1] }]);
    notices.dispose();
    vi.advanceTimersByTime(clusterNoticeIntervalMs * 2);
    expect(seen).toHaveLength(2);
  });
});
