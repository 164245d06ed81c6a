// writeDurable: pwrite then fdatasync in one libuv thread-pool job (see durable_write.cc).
#pragma once

#include <node_api.h>

namespace lvnode {

/** JS: writeDurable(fd, data, position, done(error | null)). */
napi_value jsWriteDurable(napi_env env, napi_callback_info info);

}  // namespace lvnode
