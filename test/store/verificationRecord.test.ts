// Goal: a verification record clears only a verify's saved position; a stopped registration's
// position (which a restart resumes from) survives a copy's finding recorded as `corrupt`.
import { describe, expect, it } from 'vitest';
import { type LvstoreRecord, type SavedChecksumProgress, type VerificationRecord, applyChange, createLvolRecord } from '../../src/store/metadata.ts';

function storeWithSnapshot(): LvstoreRecord {
  const store: LvstoreRecord = { id: 's', name: 'lvs', clusterBytes: 1 << 20, blockBytes: 512, firstDataCluster: 1, clusterTotal: 64, clearMethod: 'unmap', lvols: new Map() };
  const lvol = createLvolRecord({ type: 'lvol.create', id: 'snap', name: 'snap', clusterCount: 4, thin: false, readOnly: true, snapshot: true, parentId: null, clearMethod: 'unmap', xattrs: {}, createdAtMs: 0, allocations: [] } as never);
  store.lvols.set(lvol.id, lvol);
  return store;
}

function progress(mode: SavedChecksumProgress['mode']): SavedChecksumProgress {
  return { runId: 1, mode, clustersTotal: 4, clustersDone: 2, bytesDone: 2 << 20, nextClusterIndex: 2, runningCrc: 5n, rangeCrcs: new Map(), startedAtMs: 0, activeMs: 1, resumedAtMs: 0, finishedAtMs: null } as SavedChecksumProgress;
}

function record(result: VerificationRecord['result']): VerificationRecord {
  return { verifiedAtMs: null, result, errorsOnly: false, clustersChecked: 1, clustersTotal: 4, badClusterCount: 1, badClusters: [], whole: null, registrationConflict: null } as unknown as VerificationRecord;
}

describe('checksum.verified and saved positions', () => {
  it('keeps a stopped registration position when a copy records a corrupt cluster', () => {
    const store = storeWithSnapshot();
    applyChange(store, { type: 'checksum.progress', id: 'snap', progress: progress('range') });
    applyChange(store, { type: 'checksum.verified', id: 'snap', verification: record('corrupt') });
    expect(store.lvols.get('snap')!.savedProgress?.mode).toBe('range');
  });

  it('clears a verify position once a verify finished, and keeps it while incomplete', () => {
    const store = storeWithSnapshot();
    applyChange(store, { type: 'checksum.progress', id: 'snap', progress: progress('verify') });
    applyChange(store, { type: 'checksum.verified', id: 'snap', verification: record('incomplete') });
    expect(store.lvols.get('snap')!.savedProgress?.mode).toBe('verify');
    applyChange(store, { type: 'checksum.verified', id: 'snap', verification: record('clean') });
    expect(store.lvols.get('snap')!.savedProgress).toBeNull();
  });
});
