// The one place where errors become JSON-RPC error objects (SPEC §4).
import type { z } from 'zod';
import { Errno, fromDeviceError, isStorageError, strerror } from '../errors.ts';
import type { StorageError } from '../errors.ts';

export interface RpcErrorObject {
  code: number;
  message: string;
  data?: Record<string, unknown>;
}

/** JSON-RPC 2.0's reserved codes, plus lvnode's one code in the implementation-defined range. */
export const rpcErrorCode = {
  parseError: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internal: -32603,
  // A connection sent more requests than its in-flight limit; it may retry once replies arrive.
  tooManyRequests: -32000,
} as const;
export type RpcErrorCodeName = keyof typeof rpcErrorCode;

const rpcErrorMessage: Record<RpcErrorCodeName, string> = {
  parseError: 'Parse error',
  invalidRequest: 'Invalid request',
  methodNotFound: 'Method not found',
  invalidParams: 'Invalid params',
  internal: 'Internal error',
  tooManyRequests: 'Too many requests in flight',
};

/** One failing params field: `path` is dotted (`''` for params as a whole). */
export interface ParamsIssue {
  path: string;
  message: string;
}

/** An error of the JSON-RPC framework itself (as opposed to an operation's StorageError). */
export class RpcFrameworkError extends Error {
  readonly code: number;
  readonly data: Record<string, unknown> | undefined;

  constructor(kind: RpcErrorCodeName, data?: Record<string, unknown>) {
    super(rpcErrorMessage[kind]);
    this.name = 'RpcFrameworkError';
    this.code = rpcErrorCode[kind];
    this.data = data;
  }

  /** -32602 from a list of issues; `data.field` names the first failing field. */
  static invalidParams(issues: readonly ParamsIssue[]): RpcFrameworkError {
    const field = issues[0]?.path;
    return new RpcFrameworkError('invalidParams', field ? { issues, field } : { issues });
  }

  /** -32602 from a failed zod parse of the params. */
  static fromZodError(error: z.ZodError): RpcFrameworkError {
    return RpcFrameworkError.invalidParams(error.issues.flatMap(zodIssueToParamsIssues));
  }
}

function dottedPath(path: readonly PropertyKey[]): string {
  return path.map((segment) => String(segment)).join('.');
}

/** Unknown keys are reported at the key itself, so `field` names the offending parameter. */
function zodIssueToParamsIssues(issue: z.core.$ZodIssue): ParamsIssue[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ path: dottedPath([...issue.path, key]), message: 'unknown parameter' }));
  }
  return [{ path: dottedPath(issue.path), message: issue.message }];
}

function storageErrorToRpcError(error: StorageError): RpcErrorObject {
  // SPDK's own message text (nvmf RPCs) is the message itself, as SPDK sends it.
  if ((error.wire === 'spdkInvalidParams' || error.wire === 'spdkInternal') && error.detail !== undefined) {
    const code = error.wire === 'spdkInvalidParams' ? rpcErrorCode.invalidParams : rpcErrorCode.internal;
    return error.data === undefined ? { code, message: error.detail } : { code, message: error.detail, data: error.data };
  }
  const code = error.wire === 'errno' ? -Errno[error.errno] : rpcErrorCode.internal;
  const data = { ...error.data, ...(error.detail === undefined ? {} : { detail: error.detail }) };
  const message = strerror[error.errno];
  return Object.keys(data).length > 0 ? { code, message, data } : { code, message };
}

/**
 * Maps anything thrown while handling a request to a JSON-RPC error object. Errors that are
 * neither a StorageError nor an RpcFrameworkError are bugs: they are logged to stderr with
 * their stack and answered with a bare -32603, so no internals reach the client.
 */
export function toRpcError(error: unknown, method?: string): RpcErrorObject {
  if (isStorageError(error)) return storageErrorToRpcError(error);
  if (isFileSystemError(error)) {
    // A file-system error that reached the edge unwrapped: still a bug worth its stack, but the
    // client hears what happened (ENOSPC is -28 wherever it comes from, SPEC §4), not "Internal error".
    logUnhandledError(error, method);
    return storageErrorToRpcError(fromDeviceError(error, 'file system'));
  }
  if (error instanceof RpcFrameworkError) {
    const { code, message, data } = error;
    return data === undefined ? { code, message } : { code, message, data };
  }
  logUnhandledError(error, method);
  return { code: rpcErrorCode.internal, message: rpcErrorMessage.internal };
}

/** A framework error object without going through an exception. */
export function rpcError(kind: RpcErrorCodeName, data?: Record<string, unknown>): RpcErrorObject {
  return toRpcError(new RpcFrameworkError(kind, data));
}

/** A Node.js system call failure (`fs`, `net`): it carries an errno name (`ENOSPC`) and the call. */
function isFileSystemError(error: unknown): error is NodeJS.ErrnoException {
  return error instanceof Error && typeof (error as NodeJS.ErrnoException).code === 'string' && typeof (error as NodeJS.ErrnoException).syscall === 'string';
}

function logUnhandledError(error: unknown, method: string | undefined): void {
  const stack = error instanceof Error ? (error.stack ?? String(error)) : safeString(error);
  const line = { level: 'error', msg: 'unhandled error in handler', method: method ?? null, error: stack };
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

function safeString(value: unknown): string {
  try {
    return String(value);
  } catch {
    return Object.prototype.toString.call(value); // e.g. an object whose toString throws
  }
}

// ---- SPDK's flavor, for its own Unix socket (SPEC §3.2, reference §6.2) ----

/**
 * Methods whose operation failures SPDK reports as -32602 + strerror (its asynchronous
 * completion callbacks); the others report them as -32603 + strerror.
 */
const spdkFailureAsInvalidParams = new Set([
  'bdev_lvol_create_lvstore',
  'bdev_lvol_delete_lvstore',
  'bdev_lvol_rename_lvstore',
  'bdev_lvol_grow_lvstore',
  'bdev_lvol_create',
  'bdev_lvol_snapshot',
  'bdev_lvol_clone',
  'bdev_lvol_clone_bdev',
  'bdev_lvol_rename',
  'bdev_lvol_set_xattr',
  'bdev_lvol_resize',
  'bdev_lvol_inflate',
  'bdev_lvol_decouple_parent',
  'bdev_lvol_detach_parent',
  'bdev_lvol_set_parent',
  'bdev_lvol_set_parent_bdev',
  'bdev_lvol_get_fragmap',
]);

/** The code an operation failure has on SPDK's socket for `method` (docs/rpc.md lists it). */
export function spdkFailureCode(method: string): number {
  return spdkFailureAsInvalidParams.has(method) ? rpcErrorCode.invalidParams : rpcErrorCode.internal;
}

/**
 * Params that fail lvnode's decoding, on SPDK's socket, for the methods whose SPDK handler does not
 * answer -32603 "spdk_json_decode_object failed": every nvmf_* method answers -32602 "Invalid
 * parameters" (lib/nvmf/nvmf_rpc.c); bdev_nvme_reset_controller -32602 "Invalid argument"
 * (bdev_nvme_rpc.c, controller_op); the log_* setters decode any string and then refuse an
 * unknown level or flag with -32602 (lib/event/log_rpc.c), which is what lvnode's enum refuses
 * (a value of the wrong type gets it too: SPDK's -32603 there is not told apart).
 */
function spdkDecodeFailure(method: string | undefined): { code: number; message: string } {
  const invalid = (message: string) => ({ code: rpcErrorCode.invalidParams, message });
  if (method === undefined) return { code: rpcErrorCode.internal, message: 'spdk_json_decode_object failed' };
  if (method.startsWith('nvmf_')) return invalid('Invalid parameters');
  if (method === 'bdev_nvme_reset_controller') return invalid(strerror.EINVAL);
  if (method === 'log_set_level' || method === 'log_set_print_level') return invalid('invalid log level');
  if (method === 'log_set_flag' || method === 'log_clear_flag') return invalid('invalid log flag');
  return { code: rpcErrorCode.internal, message: 'spdk_json_decode_object failed' };
}

/**
 * bdev_nvme's answers for an unknown controller where they are not -19 "No such device": the fork's
 * get_controllers sends EINVAL unnegated with its own text, health_info -32603 "Device not found".
 */
const spdkUnknownController: Record<string, (detail: string) => { code: number; message: string }> = {
  bdev_nvme_get_controllers: (detail) => ({ code: Errno.EINVAL, message: detail }),
  bdev_nvme_get_controller_health_info: () => ({ code: rpcErrorCode.internal, message: 'Device not found' }),
};

const spdkFrameworkMessage: Partial<Record<number, string>> = {
  [rpcErrorCode.invalidParams]: 'Invalid parameters',
};

/**
 * The error object SPDK's own clients expect (go-spdk-helper branches on these codes):
 * - params that do not decode: -32603 "spdk_json_decode_object failed" (SPDK's strict decoder),
 *   or what the few handlers that answer otherwise send (spdkDecodeFailure);
 * - an errno the thrower marked synchronous (`wire: 'errno'`): -errno + strerror, as WebSocket;
 * - an operation failure (`wire: 'internal'`): -32602 + strerror for the methods SPDK answers so,
 *   else -32603 + strerror;
 * - bdev_lvol_get_snapshot_checksum: -19 "No such device" for every failure, as Longhorn's fork;
 * - bdev_lvol_create_lvstore on a bdev that holds an lvstore (`data.lvstore`): -1 "Operation not
 *   permitted", what spdk_tgt answers for a claimed bdev.
 * `data` (lvnode's detail) is kept: SPDK's clients read code and message only.
 */
export function toSpdkRpcError(error: unknown, method?: string): RpcErrorObject {
  const mapped = toRpcError(error, method);
  if (error instanceof RpcFrameworkError && error.code === rpcErrorCode.invalidParams) {
    return { ...mapped, ...spdkDecodeFailure(method) };
  }
  if (error instanceof RpcFrameworkError) {
    const message = spdkFrameworkMessage[error.code];
    return message === undefined ? mapped : { ...mapped, message };
  }
  if (method === 'bdev_lvol_get_snapshot_checksum' && isStorageError(error)) {
    // Longhorn's fork answers -19 "No such device" for every failure of this call, and
    // go-spdk-helper's lvol listing tolerates only -19: an aborted walk's -125 (lvnode's WebSocket
    // answer) failed whole listings and left a Longhorn revert half done. `data` keeps the state.
    return { ...mapped, code: -Errno.ENODEV, message: strerror.ENODEV };
  }
  if (isStorageError(error) && error.errno === 'ENODEV' && method !== undefined && Object.hasOwn(spdkUnknownController, method)) {
    // An unknown NVMe controller, answered as bdev_nvme_rpc.c does per method (the WebSocket keeps -19).
    return { ...mapped, ...spdkUnknownController[method]!(error.detail ?? strerror.ENODEV) };
  }
  if (method === 'bdev_lvol_create_lvstore' && isStorageError(error) && error.data?.lvstore !== undefined) {
    // The bdev holds an lvstore (loaded, clashing, damaged, or found on the device): SPDK would
    // have claimed it at examine, and spdk_tgt answers create_lvstore on a claimed bdev so.
    return { ...mapped, code: -Errno.EPERM, message: strerror.EPERM };
  }
  if (isStorageError(error) && error.wire === 'internal' && method !== undefined && spdkFailureAsInvalidParams.has(method)) {
    return { ...mapped, code: rpcErrorCode.invalidParams };
  }
  return mapped;
}
