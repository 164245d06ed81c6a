// Goal: docs/rpc.md is the method table, not a copy that drifts: it must equal what the table
// renders now, and every method's params and result in it come from rpc_get_schema's schemas.
import { readFile } from 'node:fs/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { StorageNode } from '../../src/actors/node.ts';
import { systemRuntime } from '../../src/runtime.ts';
import { createMethodTable, describeMethods } from '../../src/transport/methods.ts';
import { renderRpcDocs } from '../../src/transport/rpcDocs.ts';

const node = new StorageNode(systemRuntime);
afterAll(() => node.shutdown());

describe('docs/rpc.md', () => {
  it('is what the method table renders (run `npm run docs:rpc` after changing a method)', async () => {
    const committed = await readFile(new URL('../../docs/rpc.md', import.meta.url), 'utf8');
    expect(committed).toBe(renderRpcDocs(createMethodTable(node)));
  });

  it('documents every method with each parameter rpc_get_schema names', async () => {
    const committed = await readFile(new URL('../../docs/rpc.md', import.meta.url), 'utf8');
    for (const [name, method] of Object.entries(describeMethods(createMethodTable(node)))) {
      const section = committed.split(`\n### ${name}\n`)[1]?.split('\n### ')[0];
      expect(section, name).toBeDefined();
      for (const param of Object.keys(((method.params as { properties?: object }).properties ?? {}))) {
        expect(section, `${name} ${param}`).toContain(`| \`${param}\` |`);
      }
    }
  });
});
