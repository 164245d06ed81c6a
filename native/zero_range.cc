// zeroRange(fd, offsetBytes, lengthBytes, done[, keepAllocated]): makes the range read as zeros without writing its
// bytes, in one job on libuv's thread pool (as writeDurable does), so clearing a 4 MiB cluster
// costs a metadata change instead of 4 MiB of writes.
//
//   regular file: fallocate(PUNCH_HOLE | KEEP_SIZE) frees the range's blocks (holes read as
//                 zeros); a file system that refuses it (EOPNOTSUPP, ENOSYS) gets
//                 fallocate(ZERO_RANGE | KEEP_SIZE), which marks the blocks unwritten.
//   block device: ioctl(BLKZEROOUT) (the device's write-zeroes, or the kernel writes zero pages);
//                 the range must be 512-byte aligned, else EINVAL.
// When neither applies, done gets the errno (EOPNOTSUPP, ENOSYS, ENOTTY, EINVAL) and the caller
// writes zeros instead (FileDevice.discard). done's second argument names what was used:
// 'punch-hole', 'zero-range' or 'blkzeroout'. With keepAllocated true a file gets ZERO_RANGE only:
// its blocks stay reserved (a later write cannot fail for space, nor pay to allocate again), and
// a file system without it answers EOPNOTSUPP (writing zeros keeps the allocation too).
//
// Durability: none of these is durable on return, exactly like a write. fdatasync of the same
// file afterwards makes it so, on the file systems lvnode runs on:
//   - fdatasync must flush "metadata needed to retrieve the data" (POSIX, fdatasync(2)); which
//     blocks back a range, and whether they are a hole or unwritten, is such metadata.
//   - ext4 says so explicitly: ext4_punch_hole and ext4_zero_range end with
//     ext4_update_inode_fsync_trans(handle, inode, 1), which sets the inode's datasync
//     transaction to theirs, and ext4_sync_file(datasync) waits for that transaction's commit.
//     jbd2 commits transactions in order, so a later fdatasync (the journal append) also covers
//     a punch made before it. The partial-block zeroing of an unaligned punch goes through the
//     page cache as data, which fdatasync writes back first.
//   - XFS logs the extent change as non-timestamp inode fields, so xfs_file_fsync(datasync)
//     forces the log up to it.
//   - BLKZEROOUT returns once the device completed the zeroing; fdatasync of a block device
//     sends the cache flush that makes completed writes durable. It also drops the range from
//     the block device's page cache first, so buffered reads see the zeros.
// So "zero a cluster, then write+fdatasync a journal record in the same file" never shows the
// cluster's old bytes after a crash that follows the fdatasync. Before that fdatasync, a crash may
// show either the old bytes or zeros.
#include "zero_range.h"

#include "node_error.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/falloc.h>
#include <linux/fs.h>
#endif

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace lvnode {
namespace {

constexpr double kMaxFd = 2147483647.0;
constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1: offsets and lengths arrive as JS numbers
constexpr int64_t kBlkZeroOutAlignBytes = 512;          // BLKZEROOUT refuses anything not on 512-byte sectors

struct ZeroRange {
  napi_async_work work = nullptr;
  napi_ref callback = nullptr;
  int fd = -1;
  int64_t offsetBytes = 0;
  int64_t lengthBytes = 0;
  bool keepAllocated = false;    // files: ZERO_RANGE only, never a hole
  const char* method = nullptr;  // what zeroed the range, on success
  int error = 0;
  const char* failedCall = nullptr;
};

/** A non-negative integer JS number in [min, max]: TypeError for a non-number, RangeError otherwise. */
bool integerArgument(napi_env env, napi_value value, const char* what, double min, double max, double* out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    std::string message = std::string(what) + " must be a number";
    napi_throw_type_error(env, nullptr, message.c_str());
    return false;
  }
  double number = 0;
  napi_get_value_double(env, value, &number);
  if (!std::isfinite(number) || std::floor(number) != number || number < min || number > max) {
    char text[160];
    std::snprintf(text, sizeof text, "%s must be an integer in %.0f .. %.0f", what, min, max);
    napi_throw_range_error(env, nullptr, text);
    return false;
  }
  *out = number;
  return true;
}

void fail(ZeroRange* job, int error, const char* call) {
  job->error = error;
  job->failedCall = call;
}

void zeroFile(ZeroRange* job) {
#ifdef __linux__
  const off_t offset = static_cast<off_t>(job->offsetBytes);
  const off_t length = static_cast<off_t>(job->lengthBytes);
  int result;
  if (!job->keepAllocated) {
    while ((result = fallocate(job->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) != 0 && errno == EINTR) {
    }
    if (result == 0) {
      job->method = "punch-hole";
      return;
    }
    if (errno != EOPNOTSUPP && errno != ENOSYS) return fail(job, errno, "fallocate");
  }
  while ((result = fallocate(job->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)) != 0 && errno == EINTR) {
  }
  if (result == 0) {
    job->method = "zero-range";
    return;
  }
  fail(job, errno, "fallocate");
#else
  fail(job, ENOTSUP, "fallocate");  // no fallocate modes here: the caller writes zeros
#endif
}

void zeroBlockDevice(ZeroRange* job) {
#if defined(__linux__) && defined(BLKZEROOUT)
  if (job->offsetBytes % kBlkZeroOutAlignBytes != 0 || job->lengthBytes % kBlkZeroOutAlignBytes != 0) {
    return fail(job, EINVAL, "ioctl(BLKZEROOUT)");
  }
  uint64_t range[2] = {static_cast<uint64_t>(job->offsetBytes), static_cast<uint64_t>(job->lengthBytes)};
  while (ioctl(job->fd, BLKZEROOUT, range) != 0) {
    if (errno == EINTR) continue;
    return fail(job, errno, "ioctl(BLKZEROOUT)");
  }
  job->method = "blkzeroout";
#else
  fail(job, ENOTTY, "ioctl(BLKZEROOUT)");
#endif
}

void execute(napi_env /*env*/, void* data) {
  auto* job = static_cast<ZeroRange*>(data);
  struct stat info;
  while (fstat(job->fd, &info) != 0) {
    if (errno == EINTR) continue;
    return fail(job, errno, "fstat");
  }
  if (S_ISBLK(info.st_mode)) return zeroBlockDevice(job);
  if (S_ISREG(info.st_mode)) return zeroFile(job);
  fail(job, EOPNOTSUPP, "fallocate");  // a pipe, socket or character device: nothing to punch
}

void complete(napi_env env, napi_status status, void* data) {
  auto* job = static_cast<ZeroRange*>(data);
  napi_value callback = nullptr, argv[2] = {nullptr, nullptr};
  napi_get_reference_value(env, job->callback, &callback);
  if (status == napi_cancelled || job->error != 0) {
    argv[0] = makeErrnoError(env, status == napi_cancelled ? ECANCELED : job->error, status == napi_cancelled ? "fallocate" : job->failedCall);
    napi_get_null(env, &argv[1]);
  } else {
    napi_get_null(env, &argv[0]);
    napi_create_string_utf8(env, job->method, NAPI_AUTO_LENGTH, &argv[1]);
  }
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  delete job;
  callCompletion(env, callback, 2, argv);
}

}  // namespace

napi_value jsZeroRange(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 4) {
    napi_throw_type_error(env, nullptr, "zeroRange(fd, offsetBytes, lengthBytes, done[, keepAllocated])");
    return nullptr;
  }
  bool keepAllocated = false;
  if (argc >= 5) {
    napi_valuetype flagType;
    if (napi_typeof(env, argv[4], &flagType) != napi_ok || (flagType != napi_boolean && flagType != napi_undefined)) {
      napi_throw_type_error(env, nullptr, "keepAllocated must be a boolean");
      return nullptr;
    }
    if (flagType == napi_boolean) napi_get_value_bool(env, argv[4], &keepAllocated);
  }
  double fd = 0, offsetBytes = 0, lengthBytes = 0;
  if (!integerArgument(env, argv[0], "fd", 0, kMaxFd, &fd) || !integerArgument(env, argv[1], "offsetBytes", 0, kMaxSafeInteger, &offsetBytes) ||
      !integerArgument(env, argv[2], "lengthBytes", 1, kMaxSafeInteger - offsetBytes, &lengthBytes)) {
    return nullptr;
  }
  napi_valuetype callbackType;
  if (napi_typeof(env, argv[3], &callbackType) != napi_ok || callbackType != napi_function) {
    napi_throw_type_error(env, nullptr, "done must be a function");
    return nullptr;
  }
  auto* job = new ZeroRange();
  job->fd = static_cast<int>(fd);
  job->offsetBytes = static_cast<int64_t>(offsetBytes);
  job->lengthBytes = static_cast<int64_t>(lengthBytes);
  job->keepAllocated = keepAllocated;
  napi_value resourceName = nullptr;
  napi_create_string_utf8(env, "lvnode.zeroRange", NAPI_AUTO_LENGTH, &resourceName);
  if (napi_create_reference(env, argv[3], 1, &job->callback) != napi_ok ||
      napi_create_async_work(env, nullptr, resourceName, execute, complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    if (job->callback != nullptr) napi_delete_reference(env, job->callback);
    if (job->work != nullptr) napi_delete_async_work(env, job->work);
    delete job;
    napi_throw_error(env, nullptr, "zeroRange: could not queue the job");
    return nullptr;
  }
  return nullptr;
}

}  // namespace lvnode
