// The JSON-RPC 2.0 dispatcher: validates requests, runs handlers from the method table, builds replies.
import { rpcBatchLengthMax } from '../constants.ts';
import { RpcFrameworkError, rpcError, toRpcError, toSpdkRpcError } from './errorMapping.ts';
import type { RpcErrorObject } from './errorMapping.ts';
import { SerializedJson, sliceSerializeItemsMin, stringifyJson, stringifyJsonInSlices } from './json64.ts';
import type { Connection, MethodTable, RpcMethod } from './methodTable.ts';

/** `bigint` ids come from json64 when a client uses an id beyond 2^53. */
export type JsonRpcId = string | number | bigint | null;

export interface JsonRpcSuccess {
  jsonrpc: '2.0';
  id: JsonRpcId;
  result: unknown;
}

export interface JsonRpcFailure {
  jsonrpc: '2.0';
  id: JsonRpcId;
  error: RpcErrorObject;
}

export type JsonRpcResponse = JsonRpcSuccess | JsonRpcFailure;

export interface DispatcherOptions {
  /** WebSocket accepts batches; the SPDK Unix socket answers them with -32600. */
  allowBatch: boolean;
  /**
   * `spdk`: SPDK's error codes and messages (errorMapping.ts `toSpdkRpcError`), and its reply
   * rules: a request without an id or with id null gets no success reply, but its errors are
   * answered. `lvnode` (default): SPEC §4's clearer errors, JSON-RPC 2.0's notification rule.
   */
  flavor?: 'lvnode' | 'spdk';
  /** Called once per request for a method of the table (unknown names are not reported). */
  onCall?: (method: string, latencyMs: number, ok: boolean) => void;
  /** Called as a request for a method of the table starts (the background scheduler yields to them). */
  onStart?: (method: RpcMethod) => void;
  /** Clock for `latencyMs`; performance.now by default. */
  nowMs?: () => number;
}

export interface Dispatcher {
  /** Handles one parsed message; resolves to the reply, or undefined when none is due. Never rejects. */
  handleMessage(message: unknown, connection: Connection): Promise<JsonRpcResponse | JsonRpcResponse[] | undefined>;
  /** The replies to `message` without running it (e.g. over the in-flight limit): `error` for each request that expects one. */
  reject(message: unknown, error: RpcErrorObject): JsonRpcResponse | JsonRpcResponse[] | undefined;
  /** How many requests `message` holds (a batch counts each element), for in-flight accounting. */
  requestCount(message: unknown): number;
}

type RequestObject = Record<string, unknown>;

/** A request reduced to what is needed to answer it: its id, or `notification` when it has none. */
interface ReplyTarget {
  notification: boolean;
  id: JsonRpcId;
}

function isPlainObject(value: unknown): value is RequestObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isValidId(id: unknown): id is JsonRpcId {
  return id === null || typeof id === 'string' || typeof id === 'bigint' || (typeof id === 'number' && Number.isFinite(id));
}

/**
 * Who to answer. Only a well-formed request without an `id` is a notification; a malformed one
 * is answered even without an `id`, with id null when its id is missing or of a forbidden type
 * (as in JSON-RPC 2.0's examples).
 */
function replyTarget(request: unknown): ReplyTarget {
  if (!isPlainObject(request)) return { notification: false, id: null };
  const hasId = Object.hasOwn(request, 'id');
  if (!hasId && isEnvelope(request)) return { notification: true, id: null };
  return { notification: false, id: hasId && isValidId(request.id) ? request.id : null };
}

/** An error reply, e.g. -32700 for a frame that did not parse (id null). */
export function errorResponse(id: JsonRpcId, error: RpcErrorObject): JsonRpcFailure {
  return { jsonrpc: '2.0', id, error };
}

function success(id: JsonRpcId, result: unknown): JsonRpcSuccess {
  // A handler that returns nothing still owes the client a `result` member.
  return { jsonrpc: '2.0', id, result: result === undefined ? null : result };
}

interface Envelope {
  method: string;
  params: unknown;
}

/** What is wrong with the envelope of `request`, or undefined when it is a well-formed request. */
function envelopeProblem(request: unknown): string | undefined {
  if (!isPlainObject(request)) return 'a request must be an object';
  if (request.jsonrpc !== '2.0') return 'jsonrpc must be "2.0"';
  if (Object.hasOwn(request, 'id') && !isValidId(request.id)) return 'id must be a string, a number or null';
  if (typeof request.method !== 'string') return 'method must be a string';
  return undefined;
}

function isEnvelope(request: unknown): request is Envelope {
  return envelopeProblem(request) === undefined;
}

/** SPDK clients send `null` for "no params"; anything but an object is refused. */
function paramsObject(params: unknown): RequestObject | undefined {
  if (params === undefined || params === null) return {};
  return isPlainObject(params) ? params : undefined;
}

export function createDispatcher(table: MethodTable, options: DispatcherOptions): Dispatcher {
  const nowMs = options.nowMs ?? (() => performance.now());
  const spdk = options.flavor === 'spdk';
  const mapError = (error: unknown, method?: string): RpcErrorObject => (spdk ? toSpdkRpcError(error, method) : toRpcError(error, method));
  const frameworkError = (kind: Parameters<typeof rpcError>[0], data?: Record<string, unknown>): RpcErrorObject =>
    mapError(new RpcFrameworkError(kind, data));

  function lookup(name: string): RpcMethod | undefined {
    // Own properties only, so "toString" or "__proto__" are unknown methods, not prototype members.
    return Object.hasOwn(table, name) ? table[name] : undefined;
  }

  function reportCall(name: string, startMs: number, ok: boolean): void {
    try {
      options.onCall?.(name, nowMs() - startMs, ok);
    } catch (error) {
      toRpcError(error, name); // logs it; a metrics bug must not cost the client its reply
    }
  }

  /** Validates and runs one method; throws what the client should see. */
  async function invoke(method: RpcMethod, rawParams: unknown, connection: Connection): Promise<unknown> {
    const params = paramsObject(rawParams);
    if (params === undefined) {
      throw RpcFrameworkError.invalidParams([{ path: '', message: 'params must be an object or null' }]);
    }
    const parsed = await method.params.safeParseAsync(params);
    if (!parsed.success) throw RpcFrameworkError.fromZodError(parsed.error);
    return method.handler(parsed.data, connection);
  }

  async function handleRequest(request: unknown, connection: Connection): Promise<JsonRpcResponse | undefined> {
    const target = replyTarget(request);
    // SPDK (jsonrpc_server.c): no id or a null id suppresses the success reply only.
    const silentOnSuccess = spdk ? target.notification || target.id === null : target.notification;
    const answer = (response: JsonRpcResponse): JsonRpcResponse | undefined => {
      if ('error' in response) return target.notification && !spdk ? undefined : response;
      return silentOnSuccess ? undefined : response;
    };
    if (!isEnvelope(request)) {
      return answer(errorResponse(target.id, frameworkError('invalidRequest', { detail: envelopeProblem(request) })));
    }
    const name = request.method;
    const method = lookup(name);
    if (method === undefined) return answer(errorResponse(target.id, frameworkError('methodNotFound')));
    const startMs = nowMs();
    try {
      options.onStart?.(method);
      const result = await invoke(method, request.params, connection);
      reportCall(name, startMs, true);
      return answer(success(target.id, await sliceLongResult(result)));
    } catch (error) {
      reportCall(name, startMs, false);
      return answer(errorResponse(target.id, mapError(error, name)));
    }
  }

  async function handleBatch(batch: readonly unknown[], connection: Connection): Promise<JsonRpcResponse[] | undefined> {
    const responses = await Promise.all(batch.map((request) => handleRequest(request, connection)));
    const replies = responses.filter((response): response is JsonRpcResponse => response !== undefined);
    return replies.length > 0 ? replies : undefined;
  }

  return {
    async handleMessage(message, connection) {
      try {
        if (!Array.isArray(message)) return await handleRequest(message, connection);
        const problem = batchProblem(message, options.allowBatch);
        // A refused batch is answered with one error object, not an array (JSON-RPC 2.0 §6).
        if (problem !== undefined) return errorResponse(null, frameworkError('invalidRequest', { detail: problem }));
        return await handleBatch(message, connection);
      } catch (error) {
        return errorResponse(null, toRpcError(error)); // unreachable unless this file has a bug
      }
    },
    reject(message, error) {
      if (!Array.isArray(message) || !batchAcceptable(message, options.allowBatch)) {
        const target = replyTarget(message);
        return target.notification ? undefined : errorResponse(target.id, error);
      }
      const replies = message
        .map(replyTarget)
        .filter((target) => !target.notification)
        .map((target) => errorResponse(target.id, error));
      return replies.length > 0 ? replies : undefined;
    },
    requestCount(message) {
      return Array.isArray(message) && batchAcceptable(message, options.allowBatch) ? message.length : 1;
    },
  };
}

function batchAcceptable(batch: readonly unknown[], allowBatch: boolean): boolean {
  return batchProblem(batch, allowBatch) === undefined;
}

function batchProblem(batch: readonly unknown[], allowBatch: boolean): string | undefined {
  if (!allowBatch) return 'batches are not supported on this transport';
  if (batch.length === 0) return 'a batch must not be empty';
  if (batch.length > rpcBatchLengthMax) return `a batch holds at most ${rpcBatchLengthMax} requests`;
  return undefined;
}

/**
 * Serializes a reply with exact 64-bit integers. A result that cannot be written (a cycle from a
 * handler bug) becomes -32603 for that request alone, so the client is still answered.
 */
export function serializeResponse(response: JsonRpcResponse | JsonRpcResponse[]): string {
  if (Array.isArray(response)) return `[${response.map(serializeOne).join(',')}]`;
  return serializeOne(response);
}

/**
 * A long array result (a listing of 100,000 lvols) is written to JSON now, in slices, so that
 * the reply's serialization does not hold the event loop; if that fails, the value stays as it
 * was and serializeOne reports the failure.
 */
async function sliceLongResult(result: unknown): Promise<unknown> {
  if (!Array.isArray(result) || result.length < sliceSerializeItemsMin) return result;
  try {
    return await stringifyJsonInSlices(result);
  } catch {
    return result;
  }
}

/** The envelope around a result written ahead (jsonrpc, id, result: the order stringifyJson writes). */
function envelopeHead(id: JsonRpcId): string {
  return `{"jsonrpc":"2.0","id":${stringifyJson(id)},"result":`;
}

/**
 * The reply as pieces whose concatenation is `serializeResponse(response)`: a long result written
 * in slices comes as its slices' pieces (each a few hundred KB), so a transport that sends them
 * one at a time never encodes the whole reply in one go; anything else is one piece.
 */
export function serializeResponseChunks(response: JsonRpcResponse | JsonRpcResponse[]): string[] {
  if (!Array.isArray(response) && 'result' in response && response.result instanceof SerializedJson) {
    return [envelopeHead(response.id), ...response.result.chunks, '}'];
  }
  return [serializeResponse(response)];
}

function serializeOne(response: JsonRpcResponse): string {
  try {
    if ('result' in response && response.result instanceof SerializedJson) return `${envelopeHead(response.id)}${response.result.text}}`;
    return stringifyJson(response);
  } catch (error) {
    return stringifyJson(errorResponse(response.id, toRpcError(error)));
  }
}
