// Goal: a TCP NBD listener with a TLS-PSK key file tells nothing and serves nothing before TLS (every
// option but STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME closes), lets
// in only a client holding a key of the file, and refuses to start at all on TCP without TLS unless
// told it is on a trusted network. Raw-socket client; real clients are in test/integration/nbdTls.test.ts.
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nbdPskKeyBytesMin } from '../../src/constants.ts';
import { command, encodeRequestHeader, option, optionReply } from '../../src/transport/nbd/protocol.ts';
import { type NbdAddress, resolveNbdListener } from '../../src/transport/nbd/server.ts';
import { parsePskKeys, readPskKeyFile } from '../../src/transport/nbd/tlsPsk.ts';
import { type TestNode, startTestNode } from '../integration/helpers.ts';
import { type PskKey, newPskKey, writePskFile } from '../integration/nbdTools.ts';
import { NbdTestClient, connectRaw, goData, metaContextData, optionRequest, readOptionReplies, readOptionReply, startHandshake, startTls } from './nbdTestClient.ts';

const mib = 1024 * 1024;
let dir: string;
let node: TestNode;
let address: NbdAddress;
let key: PskKey;
let otherKey: PskKey;
const secret = Buffer.alloc(mib, 0x5e);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lvnode-nbd-tls-'));
  key = newPskKey('qemu');
  otherKey = newPskKey('alice');
  const keyFile = join(dir, 'keys.psk');
  await writePskFile(keyFile, [key, otherKey]);
  node = await startTestNode({ diskBytes: 64 * mib, nbdListen: '127.0.0.1:0', nbdTlsPskFile: keyFile });
  address = node.running.nbdAddress!;
  const rpc = await node.connect();
  await rpc.call('bdev_malloc_create', { name: 'm', num_blocks: 8192, block_size: 512 });
  await node.running.node.registry.baseBdev('m').device.write(0, secret);
  await rpc.call('nbd_start_export', { bdev_name: 'm', export_name: 'secret' });
});

afterAll(async () => {
  await node?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('before TLS', () => {
  it('answers every option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD, naming no export', async () => {
    const { socket, reader } = await connectRaw(address);
    await startHandshake(socket, reader);
    const refused: Array<[number, Buffer]> = [
      [option.list, Buffer.alloc(0)],
      [option.info, goData('secret')],
      [option.go, goData('secret')],
      [option.structuredReply, Buffer.alloc(0)],
      [option.listMetaContext, metaContextData('secret', [])],
      [option.setMetaContext, metaContextData('secret', ['base:allocation'])],
      [4242, Buffer.from('unknown')],
      // Oversized data is read past, then refused the same way.
      [option.info, Buffer.alloc(64 * 1024)],
    ];
    for (const [type, data] of refused) {
      socket.write(optionRequest(type, data));
      const replies = await readOptionReplies(reader);
      expect(replies.map((reply) => reply.type)).toEqual([optionReply.errTlsReqd]);
      expect(replies[0]!.option).toBe(type);
      expect(replies[0]!.data.toString()).not.toContain('secret');
    }
    // A GO refused is no GO: a request now is garbage to a server still in the handshake.
    socket.write(optionRequest(option.abort));
    expect((await readOptionReply(reader)).type).toBe(optionReply.ack);
    await reader.closed;
  });

  it('closes on NBD_OPT_EXPORT_NAME (it cannot be refused) without sending the export', async () => {
    const { socket, reader } = await connectRaw(address);
    await startHandshake(socket, reader);
    socket.write(optionRequest(option.exportName, Buffer.from('secret')));
    socket.write(encodeRequestHeader({ type: command.read, cookie: 1n, offsetBytes: 0, lengthBytes: 4096 }));
    await expect(reader.read(10)).rejects.toThrow(/closed with 0 of 10 bytes/);
  });

  it('refuses STARTTLS with data, and closes when bytes follow STARTTLS before its reply', async () => {
    const withData = await connectRaw(address);
    await startHandshake(withData.socket, withData.reader);
    withData.socket.write(optionRequest(option.startTls, Buffer.from('x')));
    expect((await readOptionReply(withData.reader)).type).toBe(optionReply.errInvalid);
    withData.socket.destroy();

    // Plain text sent behind STARTTLS would never reach TLS: the client broke the protocol.
    const eager = await connectRaw(address);
    await startHandshake(eager.socket, eager.reader);
    eager.socket.write(Buffer.concat([optionRequest(option.startTls), optionRequest(option.list)]));
    await eager.reader.closed;
  });
});

describe('TLS-PSK', () => {
  it('serves a client holding a key of the file, for each identity in it; STARTTLS twice is refused', async () => {
    for (const credentials of [key, otherKey]) {
      const client = await NbdTestClient.open(address, 'secret', { tls: credentials, structured: true });
      const reply = await client.read(0, mib);
      expect(reply.error).toBe(0);
      expect(reply.data!.equals(secret)).toBe(true);
      client.close();
    }
    const { socket, reader } = await connectRaw(address);
    await startHandshake(socket, reader);
    const secure = await startTls(socket, reader, key);
    secure.socket.write(optionRequest(option.startTls));
    expect((await readOptionReply(secure.reader)).type).toBe(optionReply.errInvalid);
    secure.socket.write(optionRequest(option.list));
    const listed = await readOptionReplies(secure.reader);
    expect(listed.map((reply) => reply.type)).toEqual([optionReply.server, optionReply.ack]);
    secure.socket.destroy();
  });

  it('fails the TLS handshake for a wrong key and for an unknown identity, and serves on', async () => {
    for (const credentials of [newPskKey('qemu'), { identity: 'mallory', key: key.key }]) {
      const { socket, reader } = await connectRaw(address);
      await startHandshake(socket, reader);
      await expect(startTls(socket, reader, credentials)).rejects.toThrow();
      await reader.closed;
    }
    const client = await NbdTestClient.open(address, 'secret', { tls: key });
    expect((await client.read(0, 4096)).error).toBe(0);
    client.close();
  });
});

describe('who may listen how', () => {
  it('refuses TCP without TLS unless --nbd-insecure-tcp says so, and contradicting flags', async () => {
    await expect(resolveNbdListener({ listen: '127.0.0.1:0' })).rejects.toThrow(/is TCP, which every local user .* --nbd-tls-psk FILE .* --nbd-insecure-tcp/);
    const insecure = await resolveNbdListener({ listen: '127.0.0.1:0', insecureTcp: true });
    expect(insecure).toMatchObject({ insecureTcp: true, tls: undefined });
    const keyFile = join(dir, 'keys.psk');
    await expect(resolveNbdListener({ listen: '127.0.0.1:0', insecureTcp: true, tlsPskFile: keyFile })).rejects.toThrow(/contradict/);
    await expect(resolveNbdListener({ listen: join(dir, 'nbd.sock'), insecureTcp: true })).rejects.toThrow(/for a TCP --nbd-listen/);
    await expect(resolveNbdListener({ listen: undefined, tlsPskFile: keyFile })).rejects.toThrow(/need --nbd-listen/);
    await expect(resolveNbdListener({ listen: `/${'x'.repeat(120)}/nbd.sock` })).rejects.toThrow(/longer than 107 bytes/);
    expect(await resolveNbdListener({ listen: undefined })).toBeUndefined();
  });

  it('refuses a key file other users may read, and malformed keys, naming the line but not the key', async () => {
    const open = join(dir, 'open.psk');
    await writeFile(open, `qemu:${key.key.toString('hex')}\n`);
    await chmod(open, 0o644);
    await expect(readPskKeyFile(open)).rejects.toThrow(/mode 0644 lets other users read or change the keys; chmod 600/);
    await chmod(open, 0o600);
    expect((await readPskKeyFile(open)).keyFile).toBe(open);
    await expect(readPskKeyFile(join(dir, 'missing.psk'))).rejects.toThrow(/ENOENT/);

    const hex = key.key.toString('hex');
    expect([...parsePskKeys(`qemu:${hex}\n\nalice:${hex.toUpperCase()}\r\n`, 'f').keys()]).toEqual(['qemu', 'alice']);
    for (const [text, message] of [
      ['', /no keys/],
      [`${hex}\n`, /line 1: not "identity:hexkey"/],
      [`qemu:${hex}\nqemu:${hex}\n`, /line 2: identity "qemu" appears twice/],
      [`qemu:${hex.slice(1)}\n`, /even number of hex digits/],
      [`qemu:${'ab'.repeat(nbdPskKeyBytesMin - 1)}\n`, /too short/],
      [`${'u'.repeat(200)}:${hex}\n`, /identity longer than/],
    ] as const) {
      const thrown = (() => {
        try {
          parsePskKeys(text, 'f');
        } catch (error) {
          return String(error);
        }
        return 'no error';
      })();
      expect(thrown).toMatch(message);
      expect(thrown).not.toContain(hex.slice(2, 34));
    }
  });

  it('answers STARTTLS on a listener without TLS with NBD_REP_ERR_UNSUP (proto.md NOTLS mode)', async () => {
    const plain = await startTestNode({ diskBytes: 64 * mib, nbdListen: join(dir, 'plain.sock') });
    try {
      const { socket, reader } = await connectRaw(plain.running.nbdAddress!);
      await startHandshake(socket, reader);
      socket.write(optionRequest(option.startTls));
      expect((await readOptionReply(reader)).type).toBe(optionReply.errUnsup);
      socket.write(optionRequest(option.list));
      expect((await readOptionReplies(reader)).at(-1)!.type).toBe(optionReply.ack);
      socket.destroy();
    } finally {
      await plain.close();
    }
  });
});
