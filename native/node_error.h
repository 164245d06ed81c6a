// Errors and completions shared by the addons' jobs (durable_write.cc, zero_range.cc, crc64.cc; file_ring.cc).
#pragma once

#include <node_api.h>

#include <cstddef>

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

}  // namespace lvnode
