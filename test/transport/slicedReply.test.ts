// Goal (issue 11, SPEC §10): a long array result is written to JSON in slices with turns of the
// event loop between them, and the reply text is exactly what writing it in one go gives.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createDispatcher, serializeResponse, serializeResponseChunks } from '../../src/transport/jsonRpc.ts';
import { JsonArrayWriter, SerializedJson, sliceSerializeItemsMin, stringifyJson, stringifyJsonInSlices } from '../../src/transport/json64.ts';
import { defineMethod } from '../../src/transport/methodTable.ts';
import { countEventLoopTurns } from '../eventLoopTurns.ts';

const connection = { id: 0, notify: () => false, onClose: () => {} };

function rows(count: number): unknown[] {
  return Array.from({ length: count }, (_, index) => ({
    name: `lvol "${index}"\n`,
    big: (1n << 63n) + BigInt(index),
    nested: { list: [index, null, true], empty: {} },
    gone: undefined,
  }));
}

describe('replies written in slices', () => {
  it('gives the same text as one stringify, and lets the event loop turn between elements', async () => {
    const array = [...rows(50), undefined, () => 1];
    const turns = countEventLoopTurns();
    // sliceMs 0: a turn after every element.
    const written = await stringifyJsonInSlices(array, 0);
    const turnsWhileWriting = turns.stop();
    expect(written).toBeInstanceOf(SerializedJson);
    expect(written.text).toBe(stringifyJson(array));
    // Slices of any size give the same text; so does an empty array.
    expect((await stringifyJsonInSlices(array, 1000)).text).toBe(stringifyJson(array));
    expect((await stringifyJsonInSlices([], 0)).text).toBe('[]');
    expect(turnsWhileWriting).toBeGreaterThanOrEqual(array.length - 1);
  });

  it('writes element by element into a few large chunks (kept out of the young generation), the same text as one stringify', () => {
    const array = rows(3000);
    const writer = new JsonArrayWriter();
    for (const item of array) writer.add(item);
    const written = writer.finish();
    expect(written.text).toBe(stringifyJson(array));
    expect(written.chunks.length).toBeGreaterThan(2);
    // Every chunk but the closing bracket and the last is at least 256 K characters.
    for (const chunk of written.chunks.slice(0, -2)) expect(chunk.length).toBeGreaterThanOrEqual(256 * 1024);
    expect(new JsonArrayWriter().finish().text).toBe('[]');
  });

  it('answers a long array result with the envelope and text of a reply written in one go', async () => {
    const result = rows(sliceSerializeItemsMin + 3);
    const table = {
      long: defineMethod({ description: 'long', priority: 'foreground', params: z.object({}), result: z.array(z.unknown()), handler: () => result }),
    };
    const dispatcher = createDispatcher(table, { allowBatch: true });
    for (const id of [7, 'x"y', 2n ** 60n, null]) {
      const reply = await dispatcher.handleMessage({ jsonrpc: '2.0', id, method: 'long', params: {} }, connection);
      expect(serializeResponse(reply!)).toBe(stringifyJson({ jsonrpc: '2.0', id, result }));
      expect(serializeResponseChunks(reply!).join('')).toBe(stringifyJson({ jsonrpc: '2.0', id, result }));
    }
    const batch = await dispatcher.handleMessage(
      [
        { jsonrpc: '2.0', id: 1, method: 'long', params: {} },
        { jsonrpc: '2.0', id: 2, method: 'nope' },
      ],
      connection,
    );
    const parsed = JSON.parse(serializeResponse(batch!)) as Array<{ id: number; result?: unknown[]; error?: unknown }>;
    expect(parsed[0]!.result).toHaveLength(result.length);
    expect(parsed[1]!.error).toBeDefined();
  });
});
