// TLS-PSK for the NBD listener (SPEC §7.1): the key file qemu-nbd, nbdkit, qemu and libnbd read, and
// the TLS context a connection is upgraded with after NBD_OPT_STARTTLS.
//
// The file holds psktool's lines, `identity:hexkey` (qemu's default identity is "qemu"). Any
// identity in it may connect, as with qemu-nbd's tls-creds-psk and nbdkit's --tls-psk.
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { type SecureContext, type TLSSocket, createSecureContext } from 'node:tls';
import { nbdPskFileBytesMax, nbdPskIdentityBytesMax, nbdPskKeyBytesMax, nbdPskKeyBytesMin } from '../../constants.ts';

/**
 * Cipher suites, server's order. GnuTLS (qemu, qemu-img, libnbd's nbdinfo and nbdcopy) negotiates
 * TLS 1.3 with these keys; OpenSSL takes a TLS 1.2-style PSK in TLS 1.3 only with a SHA-256 suite
 * (so no TLS_AES_256_GCM_SHA384), and uses (EC)DHE with it. TLS 1.2 clients get ECDHE-PSK, else
 * plain PSK with AES-GCM or ChaCha20. Node offers no PSK suite unless it is named here.
 */
const pskCiphers = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-CHACHA20-POLY1305',
  'PSK-AES128-GCM-SHA256',
].join(':');

/** A key file's contents: identity → key. */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** What a connection needs to run TLS after NBD_OPT_STARTTLS. */
export interface NbdTls {
  readonly keyFile: string;
  readonly secureContext: SecureContext;
  /** The key for an identity; an unknown one gets a random key, so it fails like a wrong key. */
  pskCallback(socket: TLSSocket, identity: string): Buffer;
}

/** Reads the key file; refuses one other users may read or change, or any malformed line. */
export async function readPskKeyFile(path: string): Promise<NbdTls> {
  const text = await readKeyFileText(path);
  return pskTls(path, parsePskKeys(text, path));
}

async function readKeyFileText(path: string): Promise<string> {
  const file = await open(path, 'r').catch((error: NodeJS.ErrnoException) => {
    throw new Error(`--nbd-tls-psk ${path}: ${error.code ?? error.message}`);
  });
  try {
    const info = await file.stat();
    if (!info.isFile()) throw new Error(`--nbd-tls-psk ${path}: not a regular file`);
    // A key that other users can read is no secret, and one they can change lets them in.
    if ((info.mode & 0o027) !== 0) {
      const mode = (info.mode & 0o777).toString(8).padStart(4, '0');
      throw new Error(`--nbd-tls-psk ${path}: mode ${mode} lets other users read or change the keys; chmod 600 ${path}`);
    }
    if (info.size > nbdPskFileBytesMax) throw new Error(`--nbd-tls-psk ${path}: larger than ${nbdPskFileBytesMax} bytes`);
    const buffer = Buffer.alloc(nbdPskFileBytesMax + 1);
    const { bytesRead } = await file.read(buffer, 0, buffer.length, 0);
    if (bytesRead > nbdPskFileBytesMax) throw new Error(`--nbd-tls-psk ${path}: larger than ${nbdPskFileBytesMax} bytes`);
    return buffer.toString('utf8', 0, bytesRead);
  } finally {
    await file.close();
  }
}

/**
 * psktool's format: one `identity:hexkey` per line; blank lines are skipped. Errors name the
 * line, never the key.
 */
export function parsePskKeys(text: string, path: string): PskKeys {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `--nbd-tls-psk ${path}, line ${index + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new Error(`${where}: not "identity:hexkey" (as psktool writes)`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (Buffer.byteLength(identity) > nbdPskIdentityBytesMax) throw new Error(`${where}: identity longer than ${nbdPskIdentityBytesMax} bytes`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`${where}: the key is not an even number of hex digits`);
    const key = Buffer.from(hex, 'hex');
    if (key.length < nbdPskKeyBytesMin) throw new Error(`${where}: a ${key.length * 8}-bit key is too short (at least ${nbdPskKeyBytesMin * 8} bits; psktool makes 256)`);
    if (key.length > nbdPskKeyBytesMax) throw new Error(`${where}: key longer than ${nbdPskKeyBytesMax} bytes`);
    if (keys.has(identity)) throw new Error(`${where}: identity ${JSON.stringify(identity)} appears twice`);
    keys.set(identity, key);
  }
  if (keys.size === 0) throw new Error(`--nbd-tls-psk ${path}: no keys (psktool -u qemu -p ${path} makes one)`);
  return keys;
}

export function pskTls(keyFile: string, keys: PskKeys): NbdTls {
  // TLS 1.2 at least (proto.md: implementations MUST support 1.2 and SHOULD NOT offer older ones).
  const secureContext = createSecureContext({ ciphers: pskCiphers, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.3', honorCipherOrder: true });
  // One random key for every unknown identity: such a handshake fails exactly as a wrong key
  // does, so a client cannot learn which identities exist.
  const decoy = randomBytes(32);
  return {
    keyFile,
    secureContext,
    pskCallback: (_socket, identity) => keys.get(identity) ?? decoy,
  };
}
