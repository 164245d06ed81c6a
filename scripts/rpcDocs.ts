// Writes docs/rpc.md from the method table: `npm run docs:rpc`.
import { writeFile } from 'node:fs/promises';
import { StorageNode } from '../src/actors/node.ts';
import { systemRuntime } from '../src/runtime.ts';
import { createMethodTable } from '../src/transport/methods.ts';
import { renderRpcDocs } from '../src/transport/rpcDocs.ts';

const node = new StorageNode(systemRuntime);
const path = new URL('../docs/rpc.md', import.meta.url);
await writeFile(path, renderRpcDocs(createMethodTable(node)));
await node.shutdown();
process.stdout.write(`wrote ${path.pathname}\n`);
