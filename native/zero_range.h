// zeroRange: makes a range of a file or block device read as zeros without writing data, in one
// libuv thread-pool job (see zero_range.cc).
#pragma once

#include <node_api.h>

namespace lvnode {

/** JS: zeroRange(fd, offsetBytes, lengthBytes, done(error | null, method | null)[, keepAllocated]). */
napi_value jsZeroRange(napi_env env, napi_callback_info info);

}  // namespace lvnode
