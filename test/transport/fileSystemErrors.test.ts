// Goal (issue 19, item 3): file-system ENOSPC is -28 "No space left on device" wherever it comes
// from, on both transports, even when a call site forgot to wrap it in a StorageError.
import { describe, expect, it } from 'vitest';
import { toRpcError, toSpdkRpcError } from '../../src/transport/errorMapping.ts';

function systemError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: failed, ${syscall}`), { code, syscall, errno: -28 });
}

describe('file-system errors at the RPC edge', () => {
  it('answers an unwrapped ENOSPC with -28 on WebSocket and on SPDK\'s socket', () => {
    const silence = process.stderr.write;
    process.stderr.write = () => true; // the stack of an unwrapped error is logged; not wanted here
    try {
      expect(toRpcError(systemError('ENOSPC', 'write'), 'node_set_background_options')).toMatchObject({ code: -28, message: 'No space left on device' });
      expect(toSpdkRpcError(systemError('ENOSPC', 'write'), 'bdev_malloc_create')).toMatchObject({ code: -28, message: 'No space left on device' });
      // Any other system call failure is an I/O error, with what failed in the detail.
      expect(toRpcError(systemError('EIO', 'fsync'))).toMatchObject({ code: -32603, message: 'Input/output error', data: { detail: expect.stringContaining('EIO') } });
      // A plain bug stays a bare internal error: nothing of it reaches the client.
      expect(toRpcError(new Error('a bug'))).toEqual({ code: -32603, message: 'Internal error' });
    } finally {
      process.stderr.write = silence;
    }
  });
});
