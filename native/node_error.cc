// Errors, completions and argument checks shared by the addons (see node_error.h).
#include "node_error.h"

#include <uv.h>

#include <cmath>
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

bool wholeNumberArgument(napi_env env, napi_value value, double max, double* out) {
  double number = 0;
  if (napi_get_value_double(env, value, &number) != napi_ok) return false;
  if (!(number >= 0 && number <= max) || std::floor(number) != number) return false;
  *out = number;
  return true;
}

bool fileRangeArguments(napi_env env, const napi_value* argv, FileRange* out) {
  int32_t fd = -1;
  double at = 0, length = 0, position = 0;
  void* data = nullptr;
  size_t byteLength = 0;
  napi_typedarray_type arrayType;
  bool valid = napi_get_value_int32(env, argv[0], &fd) == napi_ok && fd >= 0 &&
               napi_get_typedarray_info(env, argv[1], &arrayType, &byteLength, &data, nullptr, nullptr) == napi_ok &&
               arrayType == napi_uint8_array && wholeNumberArgument(env, argv[2], static_cast<double>(byteLength), &at) &&
               wholeNumberArgument(env, argv[3], static_cast<double>(byteLength) - at, &length) && length <= 0x7fffffff &&
               wholeNumberArgument(env, argv[4], 9007199254740991.0, &position);
  if (!valid) return false;
  *out = FileRange{fd, static_cast<uint8_t*>(data) + static_cast<size_t>(at), static_cast<uint32_t>(length), static_cast<uint64_t>(position)};
  return true;
}

}  // namespace lvnode
