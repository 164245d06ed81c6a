// The client core shared by the CLI and the browser dashboard.
import { describe, expect, it } from 'vitest';
import { RpcCallError, RpcCalls } from '../../src/transport/rpcCalls.ts';

describe('RpcCalls', () => {
  it('matches replies to calls by id, out of order, and reads 64-bit integers exactly', async () => {
    const sent: string[] = [];
    const calls = new RpcCalls((text) => sent.push(text));
    const first = calls.call('a');
    const second = calls.call('b', { n: 2n ** 63n });
    expect(JSON.parse(sent[0]!)).toEqual({ jsonrpc: '2.0', id: 1, method: 'a', params: {} });
    expect(sent[1]).toContain('"n":9223372036854775808');
    calls.receive('{"jsonrpc":"2.0","id":2,"result":{"checksum":18446744073709551615}}');
    calls.receive('{"jsonrpc":"2.0","id":1,"error":{"code":-19,"message":"No such device","data":{"detail":"lvol lvs0/x does not exist"}}}');
    expect(await second).toEqual({ checksum: 18446744073709551615n });
    const error = await first.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(RpcCallError);
    expect((error as RpcCallError).code).toBe(-19);
    expect((error as RpcCallError).text).toBe('No such device: lvol lvs0/x does not exist');
  });

  it('routes notifications, ignores garbage, and fails waiting calls when the channel closes', async () => {
    const calls = new RpcCalls(() => {});
    const seen: unknown[] = [];
    const remove = calls.on('notify', (params) => seen.push(params));
    calls.receive('{"jsonrpc":"2.0","method":"notify","params":{"type":"lvol_created"}}');
    calls.receive('not json');
    calls.receive('null');
    calls.receive('{"jsonrpc":"2.0","id":99,"result":true}');
    remove();
    calls.receive('{"jsonrpc":"2.0","method":"notify","params":{"type":"lvol_deleted"}}');
    expect(seen).toEqual([{ type: 'lvol_created' }]);
    const waiting = calls.call('slow');
    calls.closed(new Error('connection closed'));
    await expect(waiting).rejects.toThrow('connection closed');
  });

  it('fails a call whose frame could not be sent', async () => {
    const calls = new RpcCalls((_text, failed) => failed(new Error('socket not open')));
    await expect(calls.call('x')).rejects.toThrow('socket not open');
  });
});
