// The one operating-error type of the node: an errno-style code with SPDK's strerror text.
// It is turned into a JSON-RPC error in exactly one place (src/transport/errorMapping.ts).

/** errno values used by SPDK's lvol RPCs (negated on the wire). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  ENOMEM: 12,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  EDOM: 33,
  ETIMEDOUT: 110,
  EALREADY: 114,
  ECANCELED: 125,
} as const;
export type ErrnoName = keyof typeof Errno;

export const strerror: Record<ErrnoName, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  ESRCH: 'No such process',
  EINTR: 'Interrupted system call',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  ENOMEM: 'Cannot allocate memory',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  EINVAL: 'Invalid argument',
  ENOSPC: 'No space left on device',
  EDOM: 'Numerical argument out of domain',
  ETIMEDOUT: 'Connection timed out',
  EALREADY: 'Operation already in progress',
  ECANCELED: 'Operation canceled',
};

/**
 * How the error appears on the wire. SPDK reports some failures with the negated errno as the
 * code (`errno`), and asynchronous completion failures as -32603 with the strerror text
 * (`internal`). Its nvmf RPCs answer -32602 or -32603 with a text of their own that clients match
 * (go-spdk-helper looks for "Transport type .* already exists"): `spdkInvalidParams` and
 * `spdkInternal` carry that text as the detail, which becomes the message. The thrower decides,
 * because SPDK decides per call site.
 */
export type WireCode = 'errno' | 'internal' | 'spdkInvalidParams' | 'spdkInternal';

export class StorageError extends Error {
  readonly errno: ErrnoName;
  readonly wire: WireCode;
  readonly detail: string | undefined;
  readonly data: Record<string, unknown> | undefined;

  constructor(
    errno: ErrnoName,
    options: { wire?: WireCode; detail?: string; data?: Record<string, unknown> } = {},
  ) {
    super(options.detail ? `${strerror[errno]}: ${options.detail}` : strerror[errno]);
    this.name = 'StorageError';
    this.errno = errno;
    this.wire = options.wire ?? 'errno';
    this.detail = options.detail;
    this.data = options.data;
  }
}

/** Shorthand for the common "throw a StorageError" call sites. */
export function fail(
  errno: ErrnoName,
  detail?: string,
  options: { wire?: WireCode; data?: Record<string, unknown> } = {},
): never {
  throw new StorageError(errno, { ...options, detail });
}

/**
 * A device or file-system error as the node reports it: ENOSPC is -28 "No space left on device"
 * (SPEC §4), anything else -32603 "Input/output error"; a StorageError passes through.
 */
export function fromDeviceError(error: unknown, detail: string): StorageError {
  if (error instanceof StorageError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const cause = error instanceof Error ? error.message : String(error);
  if (code === 'ENOSPC') return new StorageError('ENOSPC', { detail: `${detail}: ${cause}` });
  return new StorageError('EIO', { wire: 'internal', detail: `${detail}: ${cause}` });
}

export function isStorageError(error: unknown): error is StorageError {
  return error instanceof StorageError;
}
