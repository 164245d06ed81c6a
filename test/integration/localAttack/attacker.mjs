// Run as another local user (nobody) against a node that root started: tries every door of issue
// 20's attack and prints what each answered, as one JSON object on stdout. Node's built-in modules
// only (a hand-made WebSocket handshake and frame), so it runs wherever `node` does, without
// reading the repository (which may sit in a directory nobody cannot enter).
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { request } from 'node:http';
import { createConnection } from 'node:net';

const plan = JSON.parse(process.argv[2]);
const timeoutMs = 5000;

/** The JSON-RPC call an attacker wants: the node (root) opening root's file as a bdev. */
function lootCall(id) {
  return JSON.stringify({ jsonrpc: '2.0', id, method: 'bdev_aio_create', params: { name: `loot${id}`, filename: plan.secretPath } });
}

function maskedTextFrame(text) {
  const payload = Buffer.from(text);
  const mask = randomBytes(4);
  const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([header, mask, Buffer.from(payload.map((byte, index) => byte ^ mask[index % 4]))]);
}

/** The first complete unmasked frame's text in `bytes`, or undefined while incomplete. */
function firstFrameText(bytes) {
  if (bytes.length < 2) return undefined;
  let length = bytes[1] & 0x7f;
  let at = 2;
  if (length === 126) {
    if (bytes.length < 4) return undefined;
    length = bytes.readUInt16BE(2);
    at = 4;
  } else if (length === 127) {
    if (bytes.length < 10) return undefined;
    length = Number(bytes.readBigUInt64BE(2));
    at = 10;
  }
  return bytes.length < at + length ? undefined : bytes.subarray(at, at + length).toString('utf8');
}

/**
 * A WebSocket upgrade: the HTTP status (and token proof header) it was refused with, or — when
 * the node lets it in — the answer to the loot call sent over it.
 */
function upgrade(path, headers, id) {
  return new Promise((resolve) => {
    const req = request({
      host: plan.host,
      port: plan.port,
      path,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'), ...headers },
      timeout: timeoutMs,
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, body, proof: res.headers['lvnode-token-proof'] ?? null }));
    });
    req.on('upgrade', (res, socket, head) => {
      let received = head;
      const timer = setTimeout(() => (socket.destroy(), resolve({ status: res.statusCode, reply: null })), timeoutMs);
      socket.on('data', (chunk) => {
        received = Buffer.concat([received, chunk]);
        const text = firstFrameText(received);
        if (text === undefined) return;
        clearTimeout(timer);
        socket.destroy();
        resolve({ status: res.statusCode, reply: text });
      });
      socket.write(maskedTextFrame(lootCall(id)));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (error) => resolve({ error: error.code ?? error.message }));
    req.end();
  });
}

function http(method, path, body) {
  return new Promise((resolve) => {
    const req = request({ host: plan.host, port: plan.port, path, method, timeout: timeoutMs, headers: body ? { 'Content-Type': 'application/json' } : {} });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode, contentType: res.headers['content-type'] ?? null, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (error) => resolve({ error: error.code ?? error.message }));
    req.end(body);
  });
}

/** A Unix socket: the connect error, or what it answered to the loot call in SPDK's framing. */
function unixSocket(path, id) {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    let reply = '';
    const timer = setTimeout(() => (socket.destroy(), resolve({ connected: true, reply })), timeoutMs);
    socket.on('connect', () => socket.write(lootCall(id)));
    socket.setEncoding('utf8').on('data', (chunk) => {
      reply += chunk;
      if (!reply.includes('\n')) return;
      clearTimeout(timer);
      socket.destroy();
      resolve({ connected: true, reply });
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      resolve({ error: error.code ?? error.message });
    });
  });
}

async function readFile(path) {
  try {
    const handle = await open(path, 'r');
    try {
      const { bytesRead } = await handle.read(Buffer.alloc(64), 0, 64, 0);
      return { read: bytesRead };
    } finally {
      await handle.close();
    }
  } catch (error) {
    return { error: error.code ?? error.message };
  }
}

const results = { uid: process.getuid(), ws: {}, http: {}, files: {}, sockets: {} };
results.ws.noToken = await upgrade('/', {}, 1);
results.ws.wrongBearer = await upgrade('/', { Authorization: `Bearer ${plan.wrongToken}` }, 2);
results.ws.wrongQuery = await upgrade(`/?token=${encodeURIComponent(plan.wrongToken)}`, {}, 3);
results.ws.emptyBearer = await upgrade('/', { Authorization: 'Bearer ' }, 4);
results.ws.challengeOnly = await upgrade('/', { 'lvnode-token-challenge': randomBytes(32).toString('base64url') }, 5);
for (const path of ['/', '/index.html', '/config.json', '/rpc', '/api/bdevs', '/status', '/?token=x', '/data/lvnode.token']) {
  results.http[`GET ${path}`] = await http('GET', path);
}
results.http['POST /'] = await http('POST', '/', lootCall(6));
results.http['POST /rpc'] = await http('POST', '/rpc', lootCall(7));
for (const path of plan.files) results.files[path] = await readFile(path);
let id = 10;
for (const path of plan.sockets) results.sockets[path] = await unixSocket(path, id++);
process.stdout.write(`${JSON.stringify(results)}\n`);
