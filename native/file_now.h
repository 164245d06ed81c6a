// fileReadNow / fileWriteNow (file_now.cc): one pread or pwrite on the calling thread.
#pragma once

#include <node_api.h>

namespace lvnode {

napi_value jsFileReadNow(napi_env env, napi_callback_info info);
napi_value jsFileWriteNow(napi_env env, napi_callback_info info);

}  // namespace lvnode
