// Errors and completions shared by the addon's thread-pool jobs (see node_error.h).
#include "node_error.h"

#include <uv.h>

#include <string>

namespace lvnode {

napi_value makeErrnoError(napi_env env, int error, const char* syscallName) {
  // libuv's error numbers are negated errno on Unix, which is also what Node puts in err.errno.
  const char* code = uv_err_name(-error);
  std::string message = std::string(code) + ": " + uv_strerror(-error) + ", " + syscallName;
  napi_value codeValue = nullptr, messageValue = nullptr, errorObject = nullptr, errnoValue = nullptr, syscallValue = nullptr;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codeValue);
  napi_create_string_utf8(env, message.c_str(), NAPI_AUTO_LENGTH, &messageValue);
  napi_create_error(env, codeValue, messageValue, &errorObject);
  if (errorObject != nullptr) {
    napi_create_int32(env, -error, &errnoValue);
    napi_create_string_utf8(env, syscallName, NAPI_AUTO_LENGTH, &syscallValue);
    napi_set_named_property(env, errorObject, "errno", errnoValue);
    napi_set_named_property(env, errorObject, "syscall", syscallValue);
  }
  return errorObject;
}

void callCompletion(napi_env env, napi_value callback, size_t argc, const napi_value* argv) {
  if (callback == nullptr) return;
  napi_value global = nullptr, ignored = nullptr;
  napi_get_global(env, &global);
  if (napi_call_function(env, global, callback, argc, argv, &ignored) != napi_ok) reportPendingException(env);
}

void reportPendingException(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) return;
  napi_value exception;
  napi_get_and_clear_last_exception(env, &exception);
  napi_fatal_exception(env, exception);
}

}  // namespace lvnode
