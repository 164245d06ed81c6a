// fileReadNow / fileWriteNow: one pread or pwrite on the calling thread (the event loop), for the
// files in memory (tmpfs) whose small requests the node does inline (src/device/fileIo.ts). There
// the copy is the whole request: fs.readSync costs ~230 ns a call more than its pread (argument
// checks, trace-event lookups, the sync request wrapper), about a tenth of a 4 KiB NVMe/TCP read's
// CPU; this is one N-API call around the syscall.
//
// JS: fileReadNow(fd, buffer, offsetInBuffer, length, position) -> bytes moved (0 at end of file)
//     fileWriteNow(fd, buffer, offsetInBuffer, length, position) -> bytes moved
// A failure throws an Error shaped like Node's fs errors (code 'EIO', errno -5, syscall 'read').
#include "file_now.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>

#include "node_error.h"

namespace lvnode {
namespace {

bool wholeNumber(napi_env env, napi_value value, double max, double* out) {
  double number = 0;
  if (napi_get_value_double(env, value, &number) != napi_ok) return false;
  if (!(number >= 0 && number <= max) || std::floor(number) != number) return false;
  *out = number;
  return true;
}

napi_value moveNow(napi_env env, napi_callback_info info, bool write) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int32_t fd = -1;
  double at = 0, length = 0, position = 0;
  void* data = nullptr;
  size_t byteLength = 0;
  napi_typedarray_type arrayType;
  bool valid = argc == 5 && napi_get_value_int32(env, argv[0], &fd) == napi_ok && fd >= 0 &&
               napi_get_typedarray_info(env, argv[1], &arrayType, &byteLength, &data, nullptr, nullptr) == napi_ok &&
               arrayType == napi_uint8_array && wholeNumber(env, argv[2], static_cast<double>(byteLength), &at) &&
               wholeNumber(env, argv[3], static_cast<double>(byteLength) - at, &length) && length <= 0x7fffffff &&
               wholeNumber(env, argv[4], 9007199254740991.0, &position);
  if (!valid) {
    napi_throw_type_error(env, nullptr, write ? "fileWriteNow(fd, Uint8Array, offset, length inside it, position)"
                                              : "fileReadNow(fd, Uint8Array, offset, length inside it, position)");
    return nullptr;
  }
  uint8_t* bytes = static_cast<uint8_t*>(data) + static_cast<size_t>(at);
  ssize_t moved;
  do {
    moved = write ? pwrite(fd, bytes, static_cast<size_t>(length), static_cast<off_t>(position))
                  : pread(fd, bytes, static_cast<size_t>(length), static_cast<off_t>(position));
  } while (moved < 0 && errno == EINTR);
  if (moved < 0) {
    napi_throw(env, makeErrnoError(env, errno, write ? "write" : "read"));
    return nullptr;
  }
  napi_value result;
  napi_create_int32(env, static_cast<int32_t>(moved), &result);
  return result;
}

}  // namespace

napi_value jsFileReadNow(napi_env env, napi_callback_info info) {
  return moveNow(env, info, false);
}

napi_value jsFileWriteNow(napi_env env, napi_callback_info info) {
  return moveNow(env, info, true);
}

}  // namespace lvnode
