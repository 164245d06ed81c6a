// docs/rpc.md, rendered from the method table (the same JSON schemas rpc_get_schema serves), so
// the reference can never drift from the code: test/transport/rpcDocs.test.ts fails when the
// committed file differs from what this renders. Regenerate with `npm run docs:rpc`.
import { spdkFailureCode } from './errorMapping.ts';
import type { MethodTable } from './methodTable.ts';
import { describeMethods } from './methods.ts';

type Schema = Record<string, unknown>;

/** A short TypeScript-like type for a JSON schema: `string`, `{ name: string; size?: number }`, `T[]`. */
function typeText(schema: unknown, depth = 0): string {
  if (schema === true || schema === undefined || schema === null || typeof schema !== 'object') return 'any';
  const node = schema as Schema;
  if (Array.isArray(node.enum)) return node.enum.map((value) => JSON.stringify(value)).join(' | ');
  if ('const' in node) return JSON.stringify(node.const);
  for (const key of ['anyOf', 'oneOf'] as const) {
    if (Array.isArray(node[key])) return [...new Set((node[key] as unknown[]).map((item) => typeText(item, depth)))].join(' | ');
  }
  if (Array.isArray(node.allOf)) return (node.allOf as unknown[]).map((item) => typeText(item, depth)).join(' & ');
  const type = node.type;
  if (Array.isArray(type)) return type.join(' | ');
  if (type === 'array') return `${wrap(typeText(node.items, depth))}[]`;
  if (type === 'object') {
    const properties = (node.properties ?? {}) as Record<string, unknown>;
    const keys = Object.keys(properties);
    if (keys.length === 0) return node.additionalProperties && node.additionalProperties !== false ? `Record<string, ${typeText(node.additionalProperties, depth + 1)}>` : '{}';
    if (depth >= 2) return 'object';
    const required = new Set((node.required ?? []) as string[]);
    return `{ ${keys.map((key) => `${key}${required.has(key) ? '' : '?'}: ${typeText(properties[key], depth + 1)}`).join('; ')} }`;
  }
  if (type === 'integer') return 'integer';
  return typeof type === 'string' ? type : 'any';
}

function wrap(text: string): string {
  return text.includes('|') || text.includes('&') ? `(${text})` : text;
}

/** Bounds and formats worth knowing about a parameter. */
function constraints(schema: Schema): string {
  const parts: string[] = [];
  if (typeof schema.minLength === 'number' || typeof schema.maxLength === 'number') parts.push(`length ${schema.minLength ?? 0}..${schema.maxLength ?? '∞'}`);
  if (typeof schema.minimum === 'number' || typeof schema.maximum === 'number') parts.push(`${schema.minimum ?? '−∞'}..${schema.maximum ?? '∞'}`);
  if (typeof schema.minItems === 'number') parts.push(`at least ${schema.minItems} item(s)`);
  return parts.join(', ');
}

function cell(text: string): string {
  return text.replaceAll('|', '\\|').replaceAll('\n', ' ');
}

export function renderRpcDocs(table: MethodTable): string {
  const methods = describeMethods(table);
  const lines: string[] = [
    '# lvnode JSON-RPC methods',
    '',
    '<!-- Generated from the method table by `npm run docs:rpc` (src/transport/rpcDocs.ts). Do not edit by hand: test/transport/rpcDocs.test.ts fails when this file is stale. -->',
    '',
    'Every method below is served on both transports, by one dispatcher and one method table:',
    'the WebSocket (SPEC §3.1, `ws://127.0.0.1:5260/`) and SPDK\'s Unix socket (SPEC §3.2,',
    '`--rpc-socket PATH`). Parameters and results are the same; the error objects differ where',
    'SPDK\'s clients branch on SPDK\'s own codes. `rpc_get_schema {method}` serves the JSON schemas',
    'these tables are made from.',
    '',
    '## Errors on the two transports',
    '',
    '| situation | WebSocket (lvnode, SPEC §4) | SPDK Unix socket (SPDK\'s codes) |',
    '|---|---|---|',
    '| unparseable JSON | -32700 "Parse error"; the connection stays open | -32700 "Parse error" (id null), then the connection is closed |',
    '| not a request object, bad `jsonrpc`/`id` | -32600 "Invalid request" | -32600 "Invalid request" |',
    '| a batch (top-level array) | served (≤ 256 requests) | -32600 "Invalid request" |',
    '| unknown method | -32601 "Method not found" | -32601 "Method not found" |',
    '| params that do not decode (missing, wrong type, unknown key) | -32602 "Invalid params", `data.field` names the parameter | -32603 "spdk_json_decode_object failed" (`data` keeps the field) |',
    '| a lookup or check that fails at once (unknown name, name taken, read-only) | -errno + strerror, e.g. -19 "No such device", -17 "File exists" | the same |',
    '| an operation that fails while it runs | -32603 + strerror | -32602 + strerror for the methods marked so below (SPDK\'s asynchronous completions), else -32603 + strerror |',
    '| too many requests in flight on one connection | -32000 "Too many requests in flight" | none: the socket is not read until earlier requests finish |',
    '| request without `id` | no reply (JSON-RPC notification) | no reply on success; errors are answered (id null) |',
    '| request with `"id": null` | answered | no reply on success; errors are answered |',
    '',
    'Error objects carry lvnode\'s `data.detail` (what exactly went wrong) on both transports.',
    '',
    '## Methods',
    '',
    '| method | priority | SPDK socket failure code |',
    '|---|---|---|',
  ];
  for (const [name, method] of Object.entries(methods)) lines.push(`| [\`${name}\`](#${name}) | ${method.priority} | ${spdkFailureCode(name)} |`);
  for (const [name, method] of Object.entries(methods)) {
    lines.push('', `### ${name}`, '', method.description, '', `Priority: ${method.priority}.`, '');
    const params = method.params as Schema;
    const properties = (params.properties ?? {}) as Record<string, Schema>;
    const required = new Set((params.required ?? []) as string[]);
    if (Object.keys(properties).length === 0) lines.push('Params: none (`{}`, `null` or absent).');
    else {
      lines.push('| param | type | required | bounds |', '|---|---|---|---|');
      for (const [key, schema] of Object.entries(properties)) {
        lines.push(`| \`${key}\` | ${cell(typeText(schema))} | ${required.has(key) ? 'yes' : 'no'} | ${cell(constraints(schema))} |`);
      }
    }
    lines.push('', `Result: \`${typeText(method.result)}\``);
  }
  lines.push('');
  return lines.join('\n');
}
