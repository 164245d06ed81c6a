// fileRing: file reads and writes through one io_uring per Node environment, completed on the event
// loop. Node's fs.read/fs.write hand every request to a libuv pool thread and back (two thread
// switches and an event-loop wakeup per 4 KiB); here requests are staged in memory, submitted in
// one io_uring_enter per event-loop turn (from a uv_check handle after the poll phase and a
// uv_prepare handle before the loop blocks), and their completions reaped in batches: right after
// submitting (a read of the page cache completes inside io_uring_enter) and whenever the ring's
// eventfd, polled by libuv, says more arrived (requests the kernel finished on its own workers).
// Each batch is one call into JS with (token, result) pairs in a shared Int32Array.
//
// Raw syscalls and <linux/io_uring.h> only (no liburing). Where io_uring_setup is refused (an old
// kernel, seccomp) fileRingOpen throws and JS keeps using Node's thread pool (src/device/fileIo.ts).
//
// Its own addon (lvnode_file_io): it keeps its ring in the environment's instance data, which
// lvnode_crc64 uses for its own state.
//
// JS: fileRingOpen(entries, onComplete(count), results: Int32Array) once; then
//     fileRingRead(fd, buffer, offsetInBuffer, length, position, token)
//     fileRingWrite(fd, buffer, offsetInBuffer, length, position, token)
// The caller keeps `buffer` alive until the token's completion (res = bytes, or -errno).
// Also fileReadNow/fileWriteNow (file_now.cc): one pread/pwrite at once, for files in memory.
#include <node_api.h>
#include <linux/io_uring.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "file_now.h"
#include "node_error.h"

namespace lvnode {
namespace {

int ioUringSetup(unsigned entries, io_uring_params* params) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, params));
}

int ioUringEnter(int fd, unsigned toSubmit) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, toSubmit, 0, 0, nullptr, 0));
}

int ioUringRegister(int fd, unsigned opcode, void* arg, unsigned count) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, opcode, arg, count));
}

unsigned loadAcquire(const unsigned* at) {
  return reinterpret_cast<const std::atomic<unsigned>*>(at)->load(std::memory_order_acquire);
}

void storeRelease(unsigned* at, unsigned value) {
  reinterpret_cast<std::atomic<unsigned>*>(at)->store(value, std::memory_order_release);
}

struct Staged {
  uint8_t opcode;
  int fd;
  uint64_t address;
  uint32_t length;
  uint64_t position;
  uint32_t token;
};

struct Ring {
  napi_env env = nullptr;
  int ringFd = -1;
  int eventFd = -1;
  unsigned sqEntries = 0;
  unsigned cqEntries = 0;
  unsigned* sqHead = nullptr;
  unsigned* sqTail = nullptr;
  unsigned sqMask = 0;
  io_uring_sqe* sqes = nullptr;
  unsigned* cqHead = nullptr;
  unsigned* cqTail = nullptr;
  unsigned cqMask = 0;
  io_uring_cqe* cqes = nullptr;
  void* sqMap = MAP_FAILED;
  size_t sqMapBytes = 0;
  void* cqMap = MAP_FAILED;
  size_t cqMapBytes = 0;
  void* sqeMap = MAP_FAILED;
  size_t sqeMapBytes = 0;
  // Requests not yet handed to the kernel, oldest first (stagedHead: the first not yet submitted).
  std::vector<Staged> staged;
  size_t stagedHead = 0;
  // Submitted and not yet reaped: kept at most cqEntries, so the completion queue never overflows.
  unsigned inFlight = 0;
  bool referenced = false;
  bool draining = false;
  uv_poll_t poll{};
  uv_check_t check{};
  uv_prepare_t prepare{};
  // Started only while the kernel refused a submission (EAGAIN): keeps the loop from blocking.
  uv_idle_t retry{};
  bool retrying = false;
  napi_ref callback = nullptr;
  napi_ref resultsRef = nullptr;
  napi_ref resource = nullptr;
  napi_async_context asyncContext = nullptr;
  int32_t* results = nullptr;  // pairs (token, res)
  size_t resultPairs = 0;
  int openHandles = 0;
};

void unmapRing(Ring* ring) {
  if (ring->sqeMap != MAP_FAILED) munmap(ring->sqeMap, ring->sqeMapBytes);
  if (ring->cqMap != MAP_FAILED && ring->cqMap != ring->sqMap) munmap(ring->cqMap, ring->cqMapBytes);
  if (ring->sqMap != MAP_FAILED) munmap(ring->sqMap, ring->sqMapBytes);
  if (ring->eventFd >= 0) close(ring->eventFd);
  if (ring->ringFd >= 0) close(ring->ringFd);
  ring->sqMap = ring->cqMap = ring->sqeMap = MAP_FAILED;
  ring->eventFd = ring->ringFd = -1;
}

/** Sets up the ring and its eventfd; answers 0 or an errno (the ring is unmapped again on failure). */
int setupRing(Ring* ring, unsigned entries) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
  params.cq_entries = entries * 4;
  int fd = ioUringSetup(entries, &params);
  if (fd < 0) return errno;
  ring->ringFd = fd;
  if (!(params.features & IORING_FEAT_SINGLE_MMAP) || !(params.features & IORING_FEAT_NODROP)) {
    unmapRing(ring);
    return ENOSYS;  // kernels before 5.5: not worth a second code path
  }
  ring->sqEntries = params.sq_entries;
  ring->cqEntries = params.cq_entries;
  ring->sqMapBytes = params.sq_off.array + params.sq_entries * sizeof(unsigned);
  ring->cqMapBytes = params.cq_off.cqes + params.cq_entries * sizeof(io_uring_cqe);
  if (ring->cqMapBytes > ring->sqMapBytes) ring->sqMapBytes = ring->cqMapBytes;
  ring->sqMap = mmap(nullptr, ring->sqMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (ring->sqMap == MAP_FAILED) {
    int error = errno;
    unmapRing(ring);
    return error;
  }
  ring->cqMap = ring->sqMap;
  ring->sqeMapBytes = params.sq_entries * sizeof(io_uring_sqe);
  ring->sqeMap = mmap(nullptr, ring->sqeMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (ring->sqeMap == MAP_FAILED) {
    int error = errno;
    unmapRing(ring);
    return error;
  }
  auto* sq = static_cast<uint8_t*>(ring->sqMap);
  ring->sqHead = reinterpret_cast<unsigned*>(sq + params.sq_off.head);
  ring->sqTail = reinterpret_cast<unsigned*>(sq + params.sq_off.tail);
  ring->sqMask = *reinterpret_cast<unsigned*>(sq + params.sq_off.ring_mask);
  // SQE slot i is always array entry i: set the indirection once.
  auto* array = reinterpret_cast<unsigned*>(sq + params.sq_off.array);
  for (unsigned index = 0; index < params.sq_entries; index++) array[index] = index;
  ring->sqes = static_cast<io_uring_sqe*>(ring->sqeMap);
  auto* cq = static_cast<uint8_t*>(ring->cqMap);
  ring->cqHead = reinterpret_cast<unsigned*>(cq + params.cq_off.head);
  ring->cqTail = reinterpret_cast<unsigned*>(cq + params.cq_off.tail);
  ring->cqMask = *reinterpret_cast<unsigned*>(cq + params.cq_off.ring_mask);
  ring->cqes = reinterpret_cast<io_uring_cqe*>(cq + params.cq_off.cqes);
  ring->eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ring->eventFd < 0 || ioUringRegister(fd, IORING_REGISTER_EVENTFD, &ring->eventFd, 1) < 0) {
    int error = errno;
    unmapRing(ring);
    return error;
  }
  return 0;
}

/** The loop may not exit while requests are staged or in flight; an idle ring keeps nothing alive. */
void updateReference(Ring* ring) {
  bool busy = ring->inFlight > 0 || ring->stagedHead < ring->staged.size();
  if (busy == ring->referenced) return;
  ring->referenced = busy;
  if (busy) uv_ref(reinterpret_cast<uv_handle_t*>(&ring->poll));
  else uv_unref(reinterpret_cast<uv_handle_t*>(&ring->poll));
}

/** Keeps the loop from blocking in its poll phase once (the next prepare retries what is left). */
void keepLoopAwake(Ring* ring) {
  if (ring->retrying) return;
  ring->retrying = true;
  uv_idle_start(&ring->retry, [](uv_idle_t* handle) {
    static_cast<Ring*>(handle->data)->retrying = false;
    uv_idle_stop(handle);
  });
}

bool completionsWaiting(Ring* ring) {
  return *ring->cqHead != loadAcquire(ring->cqTail);
}

bool work(Ring* ring) {
  return ring->stagedHead < ring->staged.size() || completionsWaiting(ring);
}

/** Hands staged requests to the kernel, as many as the queues have room for; answers how many. */
unsigned submitStaged(Ring* ring) {
  unsigned total = 0;
  while (ring->stagedHead < ring->staged.size()) {
    unsigned head = loadAcquire(ring->sqHead);
    unsigned tail = *ring->sqTail;
    unsigned room = ring->sqEntries - (tail - head);
    unsigned allowed = ring->cqEntries - ring->inFlight;
    size_t waiting = ring->staged.size() - ring->stagedHead;
    unsigned count = static_cast<unsigned>(std::min<size_t>(waiting, std::min(room, allowed)));
    if (count == 0) break;
    for (unsigned index = 0; index < count; index++) {
      const Staged& request = ring->staged[ring->stagedHead + index];
      io_uring_sqe* sqe = &ring->sqes[(tail + index) & ring->sqMask];
      std::memset(sqe, 0, sizeof(*sqe));
      sqe->opcode = request.opcode;
      sqe->fd = request.fd;
      sqe->addr = request.address;
      sqe->len = request.length;
      sqe->off = request.position;
      sqe->user_data = request.token;
    }
    storeRelease(ring->sqTail, tail + count);
    int submitted;
    do {
      submitted = ioUringEnter(ring->ringFd, count);
    } while (submitted < 0 && errno == EINTR);
    if (submitted < 0) {
      // EAGAIN/EBUSY: the kernel is short of memory or has completions to post first; the SQEs
      // stay in the ring and the next turn (or the eventfd) tries again. Anything else means the
      // ring itself is broken, which the stats cannot fix: stop rather than lose requests.
      if (errno == EAGAIN || errno == EBUSY) {
        storeRelease(ring->sqTail, tail);
        keepLoopAwake(ring);
        break;
      }
      napi_fatal_error("lvnode fileRing", NAPI_AUTO_LENGTH, "io_uring_enter failed", NAPI_AUTO_LENGTH);
    }
    // Whatever the kernel did not take back out of the ring is given back to the staged list.
    unsigned taken = static_cast<unsigned>(submitted);
    storeRelease(ring->sqTail, tail + taken);
    ring->inFlight += taken;
    ring->stagedHead += taken;
    total += taken;
    if (taken < count) break;
  }
  if (ring->stagedHead == ring->staged.size()) {
    ring->staged.clear();
    ring->stagedHead = 0;
  }
  return total;
}

/** Resets the eventfd's counter (it is non-blocking: nothing to read is fine). */
void clearEventFd(Ring* ring) {
  uint64_t value;
  while (read(ring->eventFd, &value, sizeof(value)) < 0 && errno == EINTR) {
  }
}

/** Moves up to resultPairs completions into the results array; answers how many. */
size_t reap(Ring* ring) {
  unsigned head = *ring->cqHead;
  unsigned tail = loadAcquire(ring->cqTail);
  size_t count = 0;
  while (head != tail && count < ring->resultPairs) {
    const io_uring_cqe& cqe = ring->cqes[head & ring->cqMask];
    ring->results[count * 2] = static_cast<int32_t>(cqe.user_data);
    ring->results[count * 2 + 1] = cqe.res;
    count++;
    head++;
  }
  storeRelease(ring->cqHead, head);
  ring->inFlight -= static_cast<unsigned>(count);
  return count;
}

void callJs(Ring* ring, size_t count) {
  napi_env env = ring->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, resource, countValue, ignored;
  napi_get_reference_value(env, ring->callback, &callback);
  napi_get_reference_value(env, ring->resource, &resource);
  napi_create_uint32(env, static_cast<uint32_t>(count), &countValue);
  // make_callback, not call_function: promise reactions and nextTicks run before it returns, as
  // after any of Node's own I/O callbacks.
  if (napi_make_callback(env, ring->asyncContext, resource, callback, 1, &countValue, &ignored) != napi_ok) lvnode::reportPendingException(env);
  napi_close_handle_scope(env, scope);
}

/**
 * Submits what is staged and hands JS every completion there is, until neither is left: JS
 * answering completions stages new requests (their continuations), and those must not wait for
 * the next wakeup when the loop is about to block.
 */
void drive(Ring* ring) {
  if (ring->draining) return;  // a completion callback that ends up here again: the outer loop continues
  ring->draining = true;
  bool raised = false;
  for (int round = 0; round < 64; round++) {
    if (submitStaged(ring) > 0) raised = true;
    size_t count = reap(ring);
    if (count == 0) {
      if (!raised) break;
      // Requests that completed inside io_uring_enter raised the eventfd too, and were reaped
      // here: reset it rather than wake the loop once more for nothing, then look again (a
      // completion posted before the reset is in the queue by now; one posted after raises it).
      clearEventFd(ring);
      raised = false;
      continue;
    }
    callJs(ring, count);
  }
  ring->draining = false;
  // Completions left after the bounded rounds already raised the eventfd: do not wait for it again.
  if (completionsWaiting(ring)) keepLoopAwake(ring);
  updateReference(ring);
}

void onEventFd(uv_poll_t* handle, int /*status*/, int /*events*/) {
  auto* ring = static_cast<Ring*>(handle->data);
  clearEventFd(ring);
  drive(ring);
}

void onCheck(uv_check_t* handle) {
  auto* ring = static_cast<Ring*>(handle->data);
  if (work(ring)) drive(ring);
}

void onPrepare(uv_prepare_t* handle) {
  auto* ring = static_cast<Ring*>(handle->data);
  if (work(ring)) drive(ring);
}

void onHandleClosed(uv_handle_t* handle) {
  auto* ring = static_cast<Ring*>(handle->data);
  if (--ring->openHandles == 0) {
    unmapRing(ring);
    delete ring;
  }
}

/** The environment is going away: stop the handles; the ring is freed once libuv closed them. */
void cleanup(void* data) {
  auto* ring = static_cast<Ring*>(data);
  if (ring->asyncContext != nullptr) napi_async_destroy(ring->env, ring->asyncContext);
  if (ring->callback != nullptr) napi_delete_reference(ring->env, ring->callback);
  if (ring->resultsRef != nullptr) napi_delete_reference(ring->env, ring->resultsRef);
  if (ring->resource != nullptr) napi_delete_reference(ring->env, ring->resource);
  ring->openHandles = 4;
  uv_close(reinterpret_cast<uv_handle_t*>(&ring->retry), onHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&ring->poll), onHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&ring->check), onHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&ring->prepare), onHandleClosed);
}

napi_value throwError(napi_env env, const char* code, const std::string& message) {
  napi_throw_error(env, code, message.c_str());
  return nullptr;
}

Ring* currentRing(napi_env env) {
  void* data = nullptr;
  napi_get_instance_data(env, &data);
  return static_cast<Ring*>(data);
}

// The addon's other modules keep their instance data elsewhere: the ring is the only user here.
napi_value jsFileRingOpen(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (currentRing(env) != nullptr) return throwError(env, "EEXIST", "fileRingOpen: this environment has its ring already");
  uint32_t entries = 0;
  napi_valuetype type;
  if (argc < 3 || napi_get_value_uint32(env, argv[0], &entries) != napi_ok || entries < 1 || entries > 4096) {
    napi_throw_type_error(env, nullptr, "fileRingOpen(entries 1..4096, onComplete, results)");
    return nullptr;
  }
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, nullptr, "fileRingOpen: onComplete must be a function");
    return nullptr;
  }
  napi_typedarray_type arrayType;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, argv[2], &arrayType, &length, &data, nullptr, nullptr) != napi_ok || arrayType != napi_int32_array || length < 2) {
    napi_throw_type_error(env, nullptr, "fileRingOpen: results must be an Int32Array of at least 2 entries");
    return nullptr;
  }
  auto* ring = new Ring();
  ring->env = env;
  int error = setupRing(ring, entries);
  if (error != 0) {
    delete ring;
    return throwError(env, uv_err_name(-error), std::string("io_uring_setup: ") + std::strerror(error));
  }
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  uv_poll_init(loop, &ring->poll, ring->eventFd);
  uv_check_init(loop, &ring->check);
  uv_prepare_init(loop, &ring->prepare);
  uv_idle_init(loop, &ring->retry);
  ring->poll.data = ring->check.data = ring->prepare.data = ring->retry.data = ring;
  uv_poll_start(&ring->poll, UV_READABLE, onEventFd);
  uv_check_start(&ring->check, onCheck);
  uv_prepare_start(&ring->prepare, onPrepare);
  uv_unref(reinterpret_cast<uv_handle_t*>(&ring->poll));
  uv_unref(reinterpret_cast<uv_handle_t*>(&ring->check));
  uv_unref(reinterpret_cast<uv_handle_t*>(&ring->prepare));
  uv_unref(reinterpret_cast<uv_handle_t*>(&ring->retry));
  ring->results = static_cast<int32_t*>(data);
  ring->resultPairs = length / 2;
  napi_create_reference(env, argv[1], 1, &ring->callback);
  napi_create_reference(env, argv[2], 1, &ring->resultsRef);
  napi_value resource, name;
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &ring->resource);
  napi_create_string_utf8(env, "lvnode:fileRing", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &ring->asyncContext);
  napi_set_instance_data(env, ring, nullptr, nullptr);
  napi_add_env_cleanup_hook(env, cleanup, ring);
  napi_value entriesValue;
  napi_create_uint32(env, ring->sqEntries, &entriesValue);
  return entriesValue;
}

napi_value stage(napi_env env, napi_callback_info info, uint8_t opcode) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Ring* ring = currentRing(env);
  if (ring == nullptr) return throwError(env, "ENOTCONN", "fileRing: fileRingOpen was not called");
  FileRange range;
  double token = 0;
  if (argc != 6 || !fileRangeArguments(env, argv, &range) || !wholeNumberArgument(env, argv[5], 0x7fffffff, &token)) {
    napi_throw_type_error(env, nullptr, "fileRing: (fd, Uint8Array, offset, length inside it, position, token)");
    return nullptr;
  }
  ring->staged.push_back(Staged{opcode, range.fd, reinterpret_cast<uint64_t>(range.bytes), range.length, range.position, static_cast<uint32_t>(token)});
  updateReference(ring);
  return nullptr;
}

napi_value jsFileRingRead(napi_env env, napi_callback_info info) {
  return stage(env, info, IORING_OP_READ);
}

napi_value jsFileRingWrite(napi_env env, napi_callback_info info) {
  return stage(env, info, IORING_OP_WRITE);
}

}  // namespace
}  // namespace lvnode

NAPI_MODULE_INIT() {
  const napi_property_descriptor properties[] = {
      {"fileRingOpen", nullptr, lvnode::jsFileRingOpen, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fileRingRead", nullptr, lvnode::jsFileRingRead, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fileRingWrite", nullptr, lvnode::jsFileRingWrite, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fileReadNow", nullptr, lvnode::jsFileReadNow, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fileWriteNow", nullptr, lvnode::jsFileWriteNow, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}
