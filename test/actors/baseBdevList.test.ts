// Goal (issue 19, item 3): the node and its saved bdev list never disagree. A base bdev is
// registered only once a list naming it is saved, and deleted only once a list without it is;
// concurrent creates and deletes each save a list that holds every other change that landed.
// (test/integration/fullDisk.process.test.ts proves the same on a real full file system.)
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpdkConfig } from '../../src/actors/node.ts';
import { StorageNode } from '../../src/actors/node.ts';
import { StorageError } from '../../src/errors.ts';
import { seededRuntime } from '../../src/runtime.ts';

const nodes: StorageNode[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const node of nodes.splice(0)) await node.shutdown();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

function savedNames(config: SpdkConfig | undefined): string[] {
  return (config?.subsystems ?? []).flatMap((subsystem) => subsystem.config.map((call) => String(call.params.name))).sort();
}

/** A node whose bdev list "file" is `saved`; `full` makes the next saves fail as a full file system does. */
function nodeWithList(options: { saveDelayMs?: number } = {}) {
  const state = { saved: undefined as SpdkConfig | undefined, full: false, saves: 0 };
  const node = new StorageNode(seededRuntime(19), {
    onBaseBdevsChanged: async (config) => {
      state.saves++;
      // A save takes a while, so concurrent changes overlap as they do on a real disk.
      await new Promise((resolve) => setTimeout(resolve, options.saveDelayMs ?? 0));
      if (state.full) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
      state.saved = config;
    },
  });
  nodes.push(node);
  return { node, state };
}

async function sparseFile(sizeBytes: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvnode-bdevlist-'));
  dirs.push(dir);
  const path = join(dir, 'file.img');
  await writeFile(path, '');
  await truncate(path, sizeBytes);
  return path;
}

function registeredNames(node: StorageNode): string[] {
  return [...node.registry.bdevs.keys()].sort();
}

describe('the saved bdev list', () => {
  it('refuses a create or delete it cannot save with ENOSPC (-28), registering and removing nothing', async () => {
    const { node, state } = nodeWithList();
    await node.createMallocBdev({ name: 'kept', numBlocks: 64, blockSize: 512 });
    const file = await sparseFile(1024 * 1024);
    state.full = true;

    for (const attempt of [
      () => node.createMallocBdev({ name: 'm_full', numBlocks: 64, blockSize: 512 }),
      () => node.createAioBdev({ name: 'a_full', filename: file, blockSize: 512, readOnly: false }),
      () => node.deleteBaseBdev('kept', 'malloc'),
    ]) {
      const error = await attempt().then(
        () => undefined,
        (failure: unknown) => failure,
      );
      expect(error).toBeInstanceOf(StorageError);
      expect((error as StorageError).errno).toBe('ENOSPC');
      expect((error as StorageError).wire).toBe('errno');
      expect(registeredNames(node)).toEqual(['kept']);
    }
    expect(savedNames(state.saved)).toEqual(['kept']);

    // The refused create let go of its file: attaching it once there is room works.
    state.full = false;
    await node.createAioBdev({ name: 'a_full', filename: file, blockSize: 512, readOnly: false });
    expect(registeredNames(node)).toEqual(['a_full', 'kept']);
    expect(savedNames(state.saved)).toEqual(['a_full', 'kept']);
  });

  it('holds every bdev of concurrent creates and deletes in the list saved last', async () => {
    const { node, state } = nodeWithList({ saveDelayMs: 2 });
    const names = Array.from({ length: 8 }, (_, index) => `m${index}`);
    await Promise.all(names.map((name) => node.createMallocBdev({ name, numBlocks: 64, blockSize: 512 })));
    expect(savedNames(state.saved)).toEqual(names);
    const gone = names.filter((_, index) => index % 2 === 0);
    const added = ['n0', 'n1', 'n2'];
    await Promise.all([
      ...gone.map((name) => node.deleteBaseBdev(name, 'malloc')),
      ...added.map((name) => node.createMallocBdev({ name, numBlocks: 64, blockSize: 512 })),
    ]);
    expect(savedNames(state.saved)).toEqual(registeredNames(node));
    expect(registeredNames(node)).toEqual([...names.filter((name) => !gone.includes(name)), ...added].sort());
  });
});
