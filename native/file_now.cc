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
#include <cstdint>

#include "node_error.h"

namespace lvnode {
namespace {

napi_value moveNow(napi_env env, napi_callback_info info, bool write) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  FileRange range;
  if (argc != 5 || !fileRangeArguments(env, argv, &range)) {
    napi_throw_type_error(env, nullptr, write ? "fileWriteNow(fd, Uint8Array, offset, length inside it, position)"
                                              : "fileReadNow(fd, Uint8Array, offset, length inside it, position)");
    return nullptr;
  }
  ssize_t moved;
  do {
    moved = write ? pwrite(range.fd, range.bytes, range.length, static_cast<off_t>(range.position))
                  : pread(range.fd, range.bytes, range.length, static_cast<off_t>(range.position));
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
