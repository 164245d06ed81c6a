// Errors, completions and argument checks shared by the addons (durable_write.cc, zero_range.cc, crc64.cc;
// file_ring.cc, file_now.cc).
#pragma once

#include <node_api.h>

#include <cstddef>
#include <cstdint>

namespace lvnode {

/** An Error shaped like Node's fs errors: code 'EIO', errno -5, syscall 'fdatasync', message 'EIO: i/o error, fdatasync'. */
napi_value makeErrnoError(napi_env env, int error, const char* syscallName);

/**
 * Calls a job's completion callback from a napi_async_work completion. A throwing callback is the
 * caller's bug: Node reports it as an uncaught exception, as it does for an fs callback.
 */
void callCompletion(napi_env env, napi_value callback, size_t argc, const napi_value* argv);

/** After a failed call into JS: an exception it left pending is reported as uncaught (napi_fatal_exception). */
void reportPendingException(napi_env env);

/** A JS number that is a whole number in [0, max]. */
bool wholeNumberArgument(napi_env env, napi_value value, double max, double* out);

/** A file request's arguments: (fd, Uint8Array, offset in it, length inside it, file position). */
struct FileRange {
  int32_t fd;
  uint8_t* bytes;
  uint32_t length;
  uint64_t position;
};

/** Reads a FileRange from argv[0..4]; false (nothing thrown) when they are not valid. */
bool fileRangeArguments(napi_env env, const napi_value* argv, FileRange* out);

}  // namespace lvnode
