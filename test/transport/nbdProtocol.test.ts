// Goal: the NBD codec encodes what proto.md specifies byte for byte, and decodes hostile input
// (lengths that lie, counts the data cannot hold, u64 offsets past 2^53) into a refusal, never a throw.
import { describe, expect, it } from 'vitest';
import {
  baseAllocation,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatus,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionError,
  encodeRequestHeader,
  encodeSimpleReply,
  encodeStructuredDone,
  encodeStructuredError,
  matchesBaseAllocation,
  option,
  optionReply,
  requestMagic,
} from '../../src/transport/nbd/protocol.ts';
import { seededRandom } from '../seededRandom.ts';
import { goData, metaContextData, optionRequest } from './nbdTestClient.ts';

const cookie = { cookieHigh: 0xdeadbeef, cookieLow: 0x01020304 };

describe('handshake encoding', () => {
  it('opens with NBDMAGIC, IHAVEOPT and the fixed-newstyle and no-zeroes flags', () => {
    expect(encodeGreeting().toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('refuses client flags it does not know, and reads the two it does', () => {
    expect(decodeClientFlags(Buffer.from([0, 0, 0, 3]))).toEqual({ ok: true, noZeroes: true, fixedNewstyle: true });
    expect(decodeClientFlags(Buffer.from([0, 0, 0, 1]))).toEqual({ ok: true, noZeroes: false, fixedNewstyle: true });
    expect(decodeClientFlags(Buffer.from([0x80, 0, 0, 1]))).toMatchObject({ ok: false });
  });

  it('reads an option header and refuses one without IHAVEOPT', () => {
    const header = optionRequest(option.go, Buffer.alloc(0), 0xffff_ffff);
    expect(decodeOptionHeader(header)).toEqual({ ok: true, header: { option: option.go, lengthBytes: 0xffff_ffff } });
    header[0] = 0;
    expect(decodeOptionHeader(header)).toMatchObject({ ok: false });
  });

  it('answers NBD_OPT_EXPORT_NAME with size, flags and 124 zeroes unless NO_ZEROES', () => {
    const padded = encodeExportNameReply(2 ** 40, 0x1234, false);
    expect(padded.length).toBe(134);
    expect(padded.readBigUInt64BE(0)).toBe(2n ** 40n);
    expect(padded.readUInt16BE(8)).toBe(0x1234);
    expect(padded.subarray(10).every((byte) => byte === 0)).toBe(true);
    expect(encodeExportNameReply(4096, 1, true).length).toBe(10);
  });

  it('writes INFO_EXPORT sizes up to 2^63 exactly and INFO_BLOCK_SIZE as three u32s', () => {
    const exportInfo = encodeInfoExport(option.go, 2 ** 63, 0x0101);
    expect(exportInfo.readBigUInt64BE(0)).toBe(0x0003e889045565a9n);
    expect(exportInfo.readUInt32BE(8)).toBe(option.go);
    expect(exportInfo.readUInt32BE(12)).toBe(optionReply.info);
    expect(exportInfo.readUInt32BE(16)).toBe(12);
    expect(exportInfo.readBigUInt64BE(22)).toBe(2n ** 63n);
    expect(exportInfo.readUInt16BE(30)).toBe(0x0101);
    const sizes = encodeInfoBlockSize(option.info, 512, 4096, 32 * 1024 * 1024);
    expect([sizes.readUInt16BE(20), sizes.readUInt32BE(22), sizes.readUInt32BE(26), sizes.readUInt32BE(30)]).toEqual([3, 512, 4096, 33554432]);
  });

  it('cuts an error message to the 4096-byte string limit without splitting a character', () => {
    const reply = encodeOptionError(option.list, optionReply.errInvalid, 'é'.repeat(3000));
    const length = reply.readUInt32BE(16);
    expect(length).toBe(4096);
    expect(reply.subarray(20).toString('utf8')).toBe('é'.repeat(2048));
    expect(reply.readUInt32BE(12)).toBe(0x8000_0003);
  });
});

describe('option data decoding', () => {
  it('decodes an INFO/GO request with its info types', () => {
    expect(decodeInfoRequest(goData('lvs0/vol', [3, 0]))).toEqual({ ok: true, request: { exportName: 'lvs0/vol', infoTypes: [3, 0] } });
    expect(decodeInfoRequest(goData('', []))).toEqual({ ok: true, request: { exportName: '', infoTypes: [] } });
  });

  it('refuses INFO/GO data whose lengths lie', () => {
    const huge = goData('x');
    huge.writeUInt32BE(0xffff_ffff, 0);
    expect(decodeInfoRequest(huge)).toMatchObject({ ok: false });
    const badCount = goData('x', [3]);
    badCount.writeUInt16BE(9, 5);
    expect(decodeInfoRequest(badCount)).toMatchObject({ ok: false });
    expect(decodeInfoRequest(Buffer.alloc(3))).toMatchObject({ ok: false });
    expect(decodeInfoRequest(goData('n'.repeat(4097), []))).toMatchObject({ ok: false, reason: expect.stringContaining('4096') });
  });

  it('decodes meta context queries and refuses a count the data cannot hold before looping', () => {
    expect(decodeMetaContextRequest(metaContextData('e', ['base:allocation', 'qemu:dirty-bitmap:x']))).toEqual({
      ok: true,
      request: { exportName: 'e', queries: ['base:allocation', 'qemu:dirty-bitmap:x'] },
    });
    const lyingCount = metaContextData('e', []);
    lyingCount.writeUInt32BE(0xffff_ffff, 5);
    expect(decodeMetaContextRequest(lyingCount)).toMatchObject({ ok: false, reason: expect.stringContaining('more queries') });
    const lyingQuery = metaContextData('e', ['base:allocation']);
    lyingQuery.writeUInt32BE(1000, 9);
    expect(decodeMetaContextRequest(lyingQuery)).toMatchObject({ ok: false });
    expect(decodeMetaContextRequest(Buffer.concat([metaContextData('e', []), Buffer.from([1])]))).toMatchObject({ ok: false });
  });

  it('selects base:allocation only by its name, and lists it for the base: wildcard or no query', () => {
    expect(matchesBaseAllocation([baseAllocation], false)).toBe(true);
    expect(matchesBaseAllocation(['base:'], false)).toBe(false);
    expect(matchesBaseAllocation(['base:'], true)).toBe(true);
    expect(matchesBaseAllocation([], true)).toBe(true);
    expect(matchesBaseAllocation([], false)).toBe(false);
    expect(matchesBaseAllocation(['qemu:dirty-bitmap:a'], true)).toBe(false);
  });

  it('never throws on random option data', () => {
    const random = seededRandom(0x6e6264);
    for (let round = 0; round < 5000; round++) {
      const data = Buffer.alloc(Math.floor(random() * 64));
      for (let index = 0; index < data.length; index++) data[index] = Math.floor(random() * 256);
      // Small lengths are likely in the length fields, so the decoders' inner paths run too.
      if (data.length >= 4 && random() < 0.5) data.writeUInt32BE(Math.floor(random() * data.length), 0);
      expect(() => decodeInfoRequest(data)).not.toThrow();
      expect(() => decodeMetaContextRequest(data)).not.toThrow();
    }
  });
});

describe('transmission encoding', () => {
  it('round-trips a request header, with a 4 GiB - 1 length', () => {
    const bytes = encodeRequestHeader({ type: 1, flags: 1, cookie: 0xdeadbeef01020304n, offsetBytes: 123 * 512, lengthBytes: 0xffff_ffff });
    expect(decodeRequestHeader(bytes)).toEqual({ flags: 1, type: 1, ...cookie, offsetBytes: 123 * 512, lengthBytes: 0xffff_ffff });
  });

  it('decodes offsets exactly up to 2^53 - 1 and as Infinity beyond (past every export)', () => {
    const at = (offset: bigint) => decodeRequestHeader(encodeRequestHeader({ type: 0, cookie: 1n, offsetBytes: offset, lengthBytes: 512 }))!.offsetBytes;
    expect(at(2n ** 53n - 1n)).toBe(Number.MAX_SAFE_INTEGER);
    expect(at(2n ** 53n)).toBe(Number.POSITIVE_INFINITY);
    expect(at(2n ** 64n - 1n)).toBe(Number.POSITIVE_INFINITY);
  });

  it('refuses a request without NBD_REQUEST_MAGIC', () => {
    const bytes = encodeRequestHeader({ type: 0, cookie: 1n, offsetBytes: 0, lengthBytes: 512 });
    expect(bytes.readUInt32BE(0)).toBe(requestMagic);
    bytes.writeUInt8(bytes.readUInt8(3) ^ 1, 3);
    expect(decodeRequestHeader(bytes)).toBeNull();
  });

  it('writes simple and structured replies with the cookie the client sent', () => {
    expect(encodeSimpleReply(22, cookie).toString('hex')).toBe('67446698' + '00000016' + 'deadbeef01020304');
    const done = encodeStructuredDone(cookie);
    expect(done.toString('hex')).toBe('668e33ef' + '0001' + '0000' + 'deadbeef01020304' + '00000000');
    const data = encodeOffsetDataHeader(cookie, 2 ** 40, 4096, true);
    expect(data.readUInt16BE(6)).toBe(1);
    expect(data.readUInt32BE(16)).toBe(4096 + 8);
    expect(data.readBigUInt64BE(20)).toBe(2n ** 40n);
    const hole = encodeOffsetHole(cookie, 8192, 1 << 20, false);
    expect([hole.readUInt16BE(4), hole.readUInt16BE(6), hole.readUInt32BE(16), hole.readUInt32BE(28)]).toEqual([0, 2, 12, 1 << 20]);
  });

  it('writes an error chunk with its message and a block status chunk with its descriptors', () => {
    const error = encodeStructuredError(cookie, 28, 'no space');
    expect([error.readUInt16BE(4), error.readUInt16BE(6), error.readUInt32BE(16), error.readUInt32BE(20), error.readUInt16BE(24)]).toEqual([1, 0x8001, 6 + 8, 28, 8]);
    expect(error.subarray(26).toString()).toBe('no space');
    const status = encodeBlockStatus(cookie, 1, [
      { lengthBytes: 4096, flags: 0 },
      { lengthBytes: 1 << 20, flags: 3 },
    ]);
    expect(status.readUInt16BE(6)).toBe(5);
    expect(status.readUInt32BE(16)).toBe(4 + 16);
    expect([status.readUInt32BE(20), status.readUInt32BE(24), status.readUInt32BE(28), status.readUInt32BE(32), status.readUInt32BE(36)]).toEqual([
      1,
      4096,
      0,
      1 << 20,
      3,
    ]);
  });
});
