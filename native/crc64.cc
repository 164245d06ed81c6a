// Node-API addon lvnode_crc64: CRC-64/GO-ISO kernels for JS, low-priority threads that pread and CRC file ranges,
// flock, a durable write (native/durable_write.cc) and zeroing without data writes (native/zero_range.cc).
//
// The JS event loop only sees results: background jobs run FIFO on a small pool of std::threads set
// to SCHED_IDLE (or nice 19), and completions come back through one threadsafe function per env,
// referenced only while jobs are outstanding so that an idle addon never keeps the process alive.
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "crc64_kernels.h"
#include "durable_write.h"
#include "node_error.h"
#include "zero_range.h"

namespace {

using lvnode::CrcKernel;
using lvnode::makeErrnoError;

// File jobs read in pieces this size into a per-thread buffer, so each piece is still in cache when
// it is CRC'd. Buffer jobs CRC in slices this size too, to notice a shutdown between slices.
constexpr size_t kPieceBytes = 256 * 1024;
constexpr int kMaxThreads = 64;
constexpr int kDefaultThreads = 2;
constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1: offsets and lengths arrive as JS numbers

enum class Policy { kNormal = 0, kNice = 1, kIdle = 2 };

const char* policyName(Policy policy) {
  switch (policy) {
    case Policy::kIdle:
      return "idle";
    case Policy::kNice:
      return "nice";
    case Policy::kNormal:
    default:
      return "normal";
  }
}

bool parsePolicy(const std::string& name, Policy* out) {
  if (name == "idle") *out = Policy::kIdle;
  else if (name == "nice") *out = Policy::kNice;
  else if (name == "normal") *out = Policy::kNormal;
  else return false;
  return true;
}

/** Lowers the calling thread's priority as asked, falling back idle -> nice -> normal; returns what applied. */
Policy applyPolicy(Policy requested) {
#ifdef __linux__
  if (requested == Policy::kIdle) {
    sched_param param{};
    param.sched_priority = 0;
    // On Linux pid 0 means the calling thread, not the whole process.
    if (sched_setscheduler(0, SCHED_IDLE, &param) == 0) return Policy::kIdle;
    requested = Policy::kNice;
  }
  if (requested == Policy::kNice) {
    const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(tid), 19) == 0) return Policy::kNice;
  }
#else
  (void)requested;  // elsewhere PRIO_PROCESS would lower the whole process, so do nothing
#endif
  return Policy::kNormal;
}

struct Job {
  double id = 0;
  bool isFile = false;
  int fd = -1;
  int64_t offsetBytes = 0;
  int64_t lengthBytes = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;
  napi_ref callback = nullptr;
  napi_ref keepAlive = nullptr;  // the buffer of a buffer job, so GC cannot free it mid-CRC
  uint64_t crc = 0;
  int error = 0;  // errno of a failed pread
  std::atomic<bool> halted{false};  // set by halt() while running: give up at the next piece
};

struct Worker {
  std::thread thread;
  // The fields below are guarded by State::mutex.
  bool stop = false;
  bool ready = false;
  bool exited = false;
  Policy applied = Policy::kNormal;
};

struct State {
  CrcKernel kernel = CrcKernel::kTable;
  std::string kernelWarning;

  std::mutex mutex;
  std::condition_variable wake;     // workers: a job was queued, or stop was set
  std::condition_variable started;  // configure: a new worker has applied its policy
  std::deque<Job*> queue;
  std::vector<Job*> runningJobs;                  // taken by a worker, not yet in `done`
  std::deque<Job*> done;                          // finished, waiting for the JS thread
  std::vector<std::unique_ptr<Worker>> workers;   // the current pool
  std::vector<std::unique_ptr<Worker>> retiring;  // told to stop after their current job
  bool poolStarted = false;
  int configuredThreads = kDefaultThreads;
  Policy configuredPolicy = Policy::kIdle;
  Policy appliedPolicy = Policy::kIdle;
  int running = 0;
  uint64_t completed = 0;
  uint64_t bytes = 0;
  napi_threadsafe_function tsfn = nullptr;  // workers call it under `mutex`; null once shut down
  std::atomic<bool> shuttingDown{false};    // lets a long job give up at env teardown

  // JS-thread only.
  double nextId = 1;
  uint64_t outstanding = 0;  // submitted, neither delivered nor cancelled
  bool shutDown = false;
};

// ---------------------------------------------------------------------------------------------
// Small Node-API helpers. Every failure becomes a JS exception; nothing here aborts the process.

bool throwType(napi_env env, const char* message) {
  napi_throw_type_error(env, nullptr, message);
  return false;
}

bool throwRange(napi_env env, const char* message) {
  napi_throw_range_error(env, nullptr, message);
  return false;
}

#define NAPI_OK_OR_RETURN(env, call, ret)                                   \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      bool pending = false;                                                 \
      napi_is_exception_pending((env), &pending);                           \
      if (!pending) napi_throw_error((env), nullptr, "Node-API call failed: " #call); \
      return ret;                                                           \
    }                                                                       \
  } while (0)

State* stateOf(napi_env env) {
  void* data = nullptr;
  if (napi_get_instance_data(env, &data) != napi_ok) return nullptr;
  return static_cast<State*>(data);
}

bool getArgs(napi_env env, napi_callback_info info, size_t expected, napi_value* argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return throwType(env, "bad arguments");
  if (argc < expected) {
    char message[64];
    std::snprintf(message, sizeof message, "expected %zu arguments, got %zu", expected, argc);
    return throwType(env, message);
  }
  return true;
}

bool getSeed(napi_env env, napi_value value, uint64_t* out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_bigint) return throwType(env, "seed must be a bigint");
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env, value, out, &lossless) != napi_ok) return throwType(env, "seed must be a bigint");
  if (!lossless) return throwRange(env, "seed must be in 0 .. 2^64-1");
  return true;
}

/** The bytes of any TypedArray or DataView (not copied). */
bool getBytes(napi_env env, napi_value value, const uint8_t** data, size_t* size) {
  bool isTypedArray = false;
  bool isDataView = false;
  napi_is_typedarray(env, value, &isTypedArray);
  if (isTypedArray) {
    napi_typedarray_type type;
    size_t length = 0;
    void* base = nullptr;
    if (napi_get_typedarray_info(env, value, &type, &length, &base, nullptr, nullptr) != napi_ok) {
      return throwType(env, "data must be a Uint8Array");
    }
    size_t elementBytes = 1;
    switch (type) {
      case napi_int16_array:
      case napi_uint16_array:
        elementBytes = 2;
        break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array:
        elementBytes = 4;
        break;
      case napi_float64_array:
      case napi_bigint64_array:
      case napi_biguint64_array:
        elementBytes = 8;
        break;
      default:
        break;
    }
    *data = static_cast<const uint8_t*>(base);
    *size = length * elementBytes;
    return true;
  }
  napi_is_dataview(env, value, &isDataView);
  if (isDataView) {
    void* base = nullptr;
    size_t length = 0;
    if (napi_get_dataview_info(env, value, &length, &base, nullptr, nullptr) != napi_ok) {
      return throwType(env, "data must be a Uint8Array");
    }
    *data = static_cast<const uint8_t*>(base);
    *size = length;
    return true;
  }
  return throwType(env, "data must be a Uint8Array");
}

bool getString(napi_env env, napi_value value, const char* what, std::string* out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string) {
    std::string message = std::string(what) + " must be a string";
    return throwType(env, message.c_str());
  }
  char buffer[64];
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, buffer, sizeof buffer, &length) != napi_ok) {
    return throwType(env, "bad string");
  }
  out->assign(buffer, length);
  return true;
}

/** A non-negative integer JS number no larger than `max`. */
bool getInteger(napi_env env, napi_value value, const char* what, double max, double* out) {
  napi_valuetype type;
  std::string message;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    message = std::string(what) + " must be a number";
    return throwType(env, message.c_str());
  }
  double number = 0;
  napi_get_value_double(env, value, &number);
  if (!std::isfinite(number) || std::floor(number) != number || number < 0 || number > max) {
    char text[160];
    std::snprintf(text, sizeof text, "%s must be an integer in 0 .. %.0f", what, max);
    return throwRange(env, text);
  }
  *out = number;
  return true;
}

bool getFunction(napi_env env, napi_value value) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_function) return throwType(env, "done must be a function");
  return true;
}

napi_value makeBigint(napi_env env, uint64_t value) {
  napi_value result = nullptr;
  napi_create_bigint_uint64(env, value, &result);
  return result;
}

bool setNamed(napi_env env, napi_value object, const char* name, napi_value value) {
  return napi_set_named_property(env, object, name, value) == napi_ok;
}

napi_value makeString(napi_env env, const char* text) {
  napi_value result = nullptr;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result);
  return result;
}

napi_value makeNumber(napi_env env, double value) {
  napi_value result = nullptr;
  napi_create_double(env, value, &result);
  return result;
}

void logException(napi_env env, napi_value exception) {
  napi_value text = nullptr;
  napi_valuetype type = napi_undefined;
  napi_typeof(env, exception, &type);
  if (type == napi_object) {
    napi_value stack = nullptr;
    if (napi_get_named_property(env, exception, "stack", &stack) == napi_ok) {
      napi_valuetype stackType;
      napi_typeof(env, stack, &stackType);
      if (stackType == napi_string) text = stack;
    }
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
  }
  if (text == nullptr && napi_coerce_to_string(env, exception, &text) != napi_ok) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    text = nullptr;
  }
  std::string message = "(unprintable)";
  if (text != nullptr) {
    size_t length = 0;
    if (napi_get_value_string_utf8(env, text, nullptr, 0, &length) == napi_ok) {
      message.assign(length, '\0');
      napi_get_value_string_utf8(env, text, &message[0], length + 1, &length);
    }
  }
  std::fprintf(stderr, "lvnode_crc64: a background CRC callback threw (ignored): %s\n", message.c_str());
}

// ---------------------------------------------------------------------------------------------
// Background pool.

uint64_t runBufferJob(State* state, Job* job, int* error) {
  const lvnode::CrcRegisterFn fn = lvnode::crc64KernelFn(state->kernel);
  uint64_t crc = ~0ULL;
  for (size_t done = 0; done < job->size; done += kPieceBytes) {
    if (state->shuttingDown.load(std::memory_order_relaxed)) {
      *error = ECANCELED;
      return 0;
    }
    crc = fn(crc, job->data + done, std::min(kPieceBytes, job->size - done));
  }
  return ~crc;
}

uint64_t runFileJob(State* state, Job* job, uint8_t* scratch, int* error) {
  const lvnode::CrcRegisterFn fn = lvnode::crc64KernelFn(state->kernel);
  uint64_t crc = ~0ULL;
  bool endOfFile = false;
  bool scratchZeroed = false;  // past EOF every piece is zeros: clear the buffer once, not per piece
  for (int64_t done = 0; done < job->lengthBytes;) {
    if (state->shuttingDown.load(std::memory_order_relaxed) || job->halted.load(std::memory_order_relaxed)) {
      *error = ECANCELED;
      return 0;
    }
    const size_t piece = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(kPieceBytes), job->lengthBytes - done));
    size_t got = 0;
    while (!endOfFile && got < piece) {
      const ssize_t n = pread(job->fd, scratch + got, piece - got, static_cast<off_t>(job->offsetBytes + done + static_cast<int64_t>(got)));
      if (n < 0) {
        if (errno == EINTR) continue;
        *error = errno;
        return 0;
      }
      if (n == 0) {
        endOfFile = true;  // bytes past the end of the file count as zeros
        break;
      }
      got += static_cast<size_t>(n);
    }
    if (got < piece && !(scratchZeroed && got == 0)) {
      std::memset(scratch + got, 0, piece - got);
      scratchZeroed = got == 0;
    }
    crc = fn(crc, scratch, piece);
    done += static_cast<int64_t>(piece);
  }
  return ~crc;
}

void workerMain(State* state, Worker* self, Policy requested) {
#ifdef __linux__
  // Named, so `top -H`, `ps -L` and perf show the checksum readers apart from V8's and libuv's threads.
  pthread_setname_np(pthread_self(), "lvnode-crc");
#endif
  const Policy applied = applyPolicy(requested);
  std::unique_ptr<uint8_t[]> scratch;
  std::unique_lock<std::mutex> lock(state->mutex);
  self->applied = applied;
  self->ready = true;
  state->started.notify_all();
  for (;;) {
    state->wake.wait(lock, [&] { return self->stop || !state->queue.empty(); });
    if (self->stop) break;
    Job* job = state->queue.front();
    state->queue.pop_front();
    state->running++;
    state->runningJobs.push_back(job);
    lock.unlock();
    int error = 0;
    uint64_t crc = 0;
    if (job->isFile) {
      if (!scratch) scratch.reset(new (std::nothrow) uint8_t[kPieceBytes]);
      crc = scratch ? runFileJob(state, job, scratch.get(), &error) : (error = ENOMEM, 0);
    } else {
      crc = runBufferJob(state, job, &error);
    }
    job->crc = crc;
    job->error = error;
    lock.lock();
    state->running--;
    state->runningJobs.erase(std::find(state->runningJobs.begin(), state->runningJobs.end(), job));
    state->completed++;
    if (error == 0) state->bytes += job->isFile ? static_cast<uint64_t>(job->lengthBytes) : job->size;
    state->done.push_back(job);
    // Under the mutex, so shutdown cannot release the function between the check and the call.
    if (state->tsfn != nullptr) napi_call_threadsafe_function(state->tsfn, nullptr, napi_tsfn_nonblocking);
  }
  self->exited = true;
}

void deleteJob(napi_env env, Job* job) {
  if (env != nullptr) {
    if (job->callback != nullptr) napi_delete_reference(env, job->callback);
    if (job->keepAlive != nullptr) napi_delete_reference(env, job->keepAlive);
  }
  delete job;
}

/** One job fewer outstanding (JS thread): the last one lets the process exit again. */
void releaseOutstanding(napi_env env, State* state) {
  if (state->outstanding > 0 && --state->outstanding == 0 && state->tsfn != nullptr) {
    napi_unref_threadsafe_function(env, state->tsfn);
  }
}

void deliver(napi_env env, State* state, Job* job) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback = nullptr;
  napi_get_reference_value(env, job->callback, &callback);
  napi_value argv[2];
  if (job->error != 0) {
    argv[0] = makeErrnoError(env, job->error, "pread");
    argv[1] = makeBigint(env, 0);
  } else {
    napi_get_null(env, &argv[0]);
    argv[1] = makeBigint(env, job->crc);
  }
  deleteJob(env, job);
  // Before the call, so a callback that submits again sees consistent counts.
  releaseOutstanding(env, state);
  napi_value receiver;
  napi_get_undefined(env, &receiver);
  if (callback != nullptr) {
    napi_status status = napi_call_function(env, receiver, callback, 2, argv, nullptr);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (status != napi_ok || pending) {
      napi_value exception = nullptr;
      if (napi_get_and_clear_last_exception(env, &exception) == napi_ok && exception != nullptr) {
        napi_valuetype type;
        napi_typeof(env, exception, &type);
        if (type != napi_undefined || status == napi_pending_exception) logException(env, exception);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

void callJs(napi_env env, napi_value /*jsCallback*/, void* context, void* /*data*/) {
  if (env == nullptr) return;  // the function is being torn down; shutdown frees what is left
  State* state = static_cast<State*>(context);
  std::deque<Job*> batch;
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    batch.swap(state->done);
  }
  for (Job* job : batch) deliver(env, state, job);
}

/** Joins retired workers that have already left their loop (never blocks on a running job). */
void reapRetired(State* state, std::unique_lock<std::mutex>& lock) {
  std::vector<std::unique_ptr<Worker>> finished;
  for (auto it = state->retiring.begin(); it != state->retiring.end();) {
    if ((*it)->exited) {
      finished.push_back(std::move(*it));
      it = state->retiring.erase(it);
    } else {
      ++it;
    }
  }
  lock.unlock();
  for (auto& worker : finished) worker->thread.join();
  lock.lock();
}

/**
 * Replaces the pool: old workers finish their current job and exit (joined later, so the JS thread
 * never waits for a job), new ones start at the requested policy. Returns false with a JS exception
 * pending if no thread could be started.
 */
bool startPool(napi_env env, State* state, int threads, Policy policy) {
  std::unique_lock<std::mutex> lock(state->mutex);
  for (auto& worker : state->workers) {
    worker->stop = true;
    state->retiring.push_back(std::move(worker));
  }
  state->workers.clear();
  state->wake.notify_all();
  std::string failure;
  for (int index = 0; index < threads; index++) {
    auto worker = std::make_unique<Worker>();
    try {
      worker->thread = std::thread(workerMain, state, worker.get(), policy);
    } catch (const std::exception& error) {
      failure = error.what();
      break;
    }
    state->workers.push_back(std::move(worker));
  }
  state->started.wait(lock, [&] {
    return std::all_of(state->workers.begin(), state->workers.end(), [](const auto& worker) { return worker->ready; });
  });
  Policy applied = policy;
  for (const auto& worker : state->workers) applied = std::min(applied, worker->applied);
  state->appliedPolicy = applied;
  state->configuredThreads = static_cast<int>(state->workers.size());
  state->configuredPolicy = policy;
  state->poolStarted = !state->workers.empty();
  reapRetired(state, lock);
  if (state->workers.empty()) {
    std::string message = "lvnode_crc64: could not start a background thread: " + failure;
    napi_throw_error(env, nullptr, message.c_str());
    return false;
  }
  return true;
}

bool ensurePool(napi_env env, State* state) {
  if (state->poolStarted) return true;
  return startPool(env, state, state->configuredThreads, state->configuredPolicy);
}

/** Stops and joins every thread and frees every job; idempotent. `env` is null in a late finalizer. */
void shutdown(napi_env env, State* state) {
  if (state->shutDown) return;
  state->shutDown = true;
  state->shuttingDown.store(true);
  std::vector<std::unique_ptr<Worker>> all;
  std::deque<Job*> leftovers;
  napi_threadsafe_function tsfn = nullptr;
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    for (auto& worker : state->workers) {
      worker->stop = true;
      all.push_back(std::move(worker));
    }
    for (auto& worker : state->retiring) all.push_back(std::move(worker));
    state->workers.clear();
    state->retiring.clear();
    state->poolStarted = false;
    leftovers.swap(state->queue);
    state->wake.notify_all();
  }
  for (auto& worker : all) worker->thread.join();
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    for (Job* job : state->done) leftovers.push_back(job);
    state->done.clear();
    tsfn = state->tsfn;
    state->tsfn = nullptr;
  }
  for (Job* job : leftovers) deleteJob(env, job);
  if (tsfn != nullptr && env != nullptr) napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
}

// ---------------------------------------------------------------------------------------------
// Exported functions.

napi_value jsCrc64(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[2];
  uint64_t seed = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;
  if (state == nullptr || !getArgs(env, info, 2, argv) || !getSeed(env, argv[0], &seed) || !getBytes(env, argv[1], &data, &size)) {
    return nullptr;
  }
  return makeBigint(env, lvnode::crc64Iso(state->kernel, seed, data, size));
}

napi_value jsCrc64With(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  std::string name;
  uint64_t seed = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;
  if (!getArgs(env, info, 3, argv) || !getString(env, argv[0], "kernel", &name) || !getSeed(env, argv[1], &seed) ||
      !getBytes(env, argv[2], &data, &size)) {
    return nullptr;
  }
  CrcKernel kernel;
  if (!lvnode::crc64ParseKernel(name.c_str(), &kernel)) {
    throwRange(env, "kernel must be one of table, pclmulqdq, vpclmulqdq");
    return nullptr;
  }
  if (!lvnode::crc64KernelAvailable(kernel)) {
    std::string message = "CRC kernel " + name + " is not available on this CPU";
    throwRange(env, message.c_str());
    return nullptr;
  }
  return makeBigint(env, lvnode::crc64Iso(kernel, seed, data, size));
}

napi_value poolDescription(napi_env env, State* state) {
  napi_value result;
  NAPI_OK_OR_RETURN(env, napi_create_object(env, &result), nullptr);
  std::lock_guard<std::mutex> lock(state->mutex);
  setNamed(env, result, "threads", makeNumber(env, static_cast<double>(state->configuredThreads)));
  setNamed(env, result, "policy", makeString(env, policyName(state->poolStarted ? state->appliedPolicy : state->configuredPolicy)));
  return result;
}

napi_value jsConfigureBackground(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[2];
  double threads = 0;
  std::string name;
  Policy policy;
  if (state == nullptr || !getArgs(env, info, 2, argv) || !getInteger(env, argv[0], "threads", kMaxThreads, &threads) ||
      !getString(env, argv[1], "policy", &name)) {
    return nullptr;
  }
  if (threads < 1) {
    throwRange(env, "threads must be an integer in 1 .. 64");
    return nullptr;
  }
  if (!parsePolicy(name, &policy)) {
    throwRange(env, "policy must be one of idle, nice, normal");
    return nullptr;
  }
  if (state->shutDown) {
    napi_throw_error(env, nullptr, "lvnode_crc64 is shut down");
    return nullptr;
  }
  const bool same = state->poolStarted && state->configuredThreads == static_cast<int>(threads) && state->configuredPolicy == policy;
  if (!same && !startPool(env, state, static_cast<int>(threads), policy)) return nullptr;
  return poolDescription(env, state);
}

/** Queues `job` and returns its id; on failure frees it (with its references) and leaves an exception. */
napi_value submit(napi_env env, State* state, std::unique_ptr<Job> job, napi_value callback) {
  if (state->shutDown) {
    deleteJob(env, job.release());
    napi_throw_error(env, nullptr, "lvnode_crc64 is shut down");
    return nullptr;
  }
  if (!ensurePool(env, state) || napi_create_reference(env, callback, 1, &job->callback) != napi_ok) {
    deleteJob(env, job.release());
    return nullptr;
  }
  const double id = job->id = state->nextId++;
  if (state->outstanding++ == 0) napi_ref_threadsafe_function(env, state->tsfn);
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->queue.push_back(job.release());
  }
  state->wake.notify_one();
  return makeNumber(env, id);
}

napi_value jsSubmitFileCrc(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[4];
  double fd = 0, offsetBytes = 0, lengthBytes = 0;
  if (state == nullptr || !getArgs(env, info, 4, argv) || !getInteger(env, argv[0], "fd", 2147483647.0, &fd) ||
      !getInteger(env, argv[1], "offsetBytes", kMaxSafeInteger, &offsetBytes) ||
      !getInteger(env, argv[2], "lengthBytes", kMaxSafeInteger, &lengthBytes) || !getFunction(env, argv[3])) {
    return nullptr;
  }
  if (offsetBytes + lengthBytes > kMaxSafeInteger) {
    throwRange(env, "offsetBytes + lengthBytes must not exceed 2^53 - 1");
    return nullptr;
  }
  auto job = std::make_unique<Job>();
  job->isFile = true;
  job->fd = static_cast<int>(fd);
  job->offsetBytes = static_cast<int64_t>(offsetBytes);
  job->lengthBytes = static_cast<int64_t>(lengthBytes);
  return submit(env, state, std::move(job), argv[3]);
}

napi_value jsSubmitBufferCrc(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[2];
  const uint8_t* data = nullptr;
  size_t size = 0;
  if (state == nullptr || !getArgs(env, info, 2, argv) || !getBytes(env, argv[0], &data, &size) || !getFunction(env, argv[1])) {
    return nullptr;
  }
  auto job = std::make_unique<Job>();
  job->data = data;
  job->size = size;
  NAPI_OK_OR_RETURN(env, napi_create_reference(env, argv[0], 1, &job->keepAlive), nullptr);
  return submit(env, state, std::move(job), argv[1]);
}

napi_value jsCancel(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[1];
  double id = 0;
  if (state == nullptr || !getArgs(env, info, 1, argv) || !getInteger(env, argv[0], "jobId", kMaxSafeInteger, &id)) return nullptr;
  Job* found = nullptr;
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    auto it = std::find_if(state->queue.begin(), state->queue.end(), [&](Job* job) { return job->id == id; });
    if (it != state->queue.end()) {
      found = *it;
      state->queue.erase(it);
    }
  }
  if (found != nullptr) {
    deleteJob(env, found);
    releaseOutstanding(env, state);
  }
  napi_value result;
  napi_get_boolean(env, found != nullptr, &result);
  return result;
}

// Ends a running job early: a walk's read-ahead that nobody will record once the walk stopped. The
// worker sees the flag between 256 KiB pieces and delivers ECANCELED; a queued job is cancel()'s.
napi_value jsHalt(napi_env env, napi_callback_info info) {
  State* state = stateOf(env);
  napi_value argv[1];
  double id = 0;
  if (state == nullptr || !getArgs(env, info, 1, argv) || !getInteger(env, argv[0], "jobId", kMaxSafeInteger, &id)) return nullptr;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    for (Job* job : state->runningJobs) {
      if (job->id != id) continue;
      job->halted.store(true, std::memory_order_relaxed);
      found = true;
    }
  }
  napi_value result;
  napi_get_boolean(env, found, &result);
  return result;
}

// flock(fd, LOCK_EX | LOCK_NB): 0 when the lock is held now, else the errno (EWOULDBLOCK when
// another open file holds it). A BSD lock belongs to the open file description, so unlike fcntl
// locks it is not dropped when some other descriptor of the same file in this process closes.
// Node has no flock of its own; lvnode uses it to keep two nodes off one bdev file.
napi_value jsFlockExclusive(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double fd = 0;
  if (!getArgs(env, info, 1, argv) || !getInteger(env, argv[0], "fd", 2147483647.0, &fd)) return nullptr;
  int result = 0;
  while (flock(static_cast<int>(fd), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    result = errno;
    break;
  }
  return makeNumber(env, result);
}

napi_value jsBackgroundStats(napi_env env, napi_callback_info /*info*/) {
  State* state = stateOf(env);
  if (state == nullptr) return nullptr;
  napi_value result;
  NAPI_OK_OR_RETURN(env, napi_create_object(env, &result), nullptr);
  std::lock_guard<std::mutex> lock(state->mutex);
  setNamed(env, result, "threads", makeNumber(env, static_cast<double>(state->workers.size())));
  setNamed(env, result, "policy", makeString(env, policyName(state->poolStarted ? state->appliedPolicy : state->configuredPolicy)));
  setNamed(env, result, "queued", makeNumber(env, static_cast<double>(state->queue.size())));
  setNamed(env, result, "running", makeNumber(env, static_cast<double>(state->running)));
  setNamed(env, result, "completed", makeNumber(env, static_cast<double>(state->completed)));
  setNamed(env, result, "bytes", makeNumber(env, static_cast<double>(state->bytes)));
  return result;
}

}  // namespace

NAPI_MODULE_INIT() {
  lvnode::crc64InitKernels();
  auto* state = new State();
  state->kernel = lvnode::crc64BestKernel();
  // Forcing a kernel is for tests and benchmarks; a bad value keeps the best one and says so.
  if (const char* forced = std::getenv("LVNODE_CRC_KERNEL"); forced != nullptr && forced[0] != '\0') {
    CrcKernel kernel;
    if (!lvnode::crc64ParseKernel(forced, &kernel)) {
      state->kernelWarning = std::string("LVNODE_CRC_KERNEL=") + forced + " is not a kernel (table, pclmulqdq, vpclmulqdq)";
    } else if (!lvnode::crc64KernelAvailable(kernel)) {
      state->kernelWarning = std::string("LVNODE_CRC_KERNEL=") + forced + " is not available on this CPU";
    } else {
      state->kernel = kernel;
    }
  }

  napi_status status = napi_set_instance_data(
      env, state,
      [](napi_env finalizeEnv, void* data, void*) {
        State* finalized = static_cast<State*>(data);
        shutdown(finalizeEnv, finalized);
        delete finalized;
      },
      nullptr);
  if (status != napi_ok) {
    delete state;
    napi_throw_error(env, nullptr, "lvnode_crc64: napi_set_instance_data failed");
    return nullptr;
  }

  napi_value resourceName = makeString(env, "lvnode_crc64");
  NAPI_OK_OR_RETURN(env,
                    napi_create_threadsafe_function(env, nullptr, nullptr, resourceName, 0, 1, nullptr, nullptr, state, callJs, &state->tsfn),
                    nullptr);
  // Unreferenced until a job is outstanding: an idle addon must not keep the process alive.
  napi_unref_threadsafe_function(env, state->tsfn);
  // Registered after the function exists, so it runs before Node's own teardown of that function.
  struct HookData {
    napi_env env;
    State* state;
  };
  auto* hook = new HookData{env, state};
  NAPI_OK_OR_RETURN(env,
                    napi_add_env_cleanup_hook(
                        env,
                        [](void* data) {
                          auto* hookData = static_cast<HookData*>(data);
                          shutdown(hookData->env, hookData->state);
                          delete hookData;
                        },
                        hook),
                    nullptr);

  struct Method {
    const char* name;
    napi_callback callback;
  };
  const Method methods[] = {
      {"crc64", jsCrc64},
      {"crc64With", jsCrc64With},
      {"configureBackground", jsConfigureBackground},
      {"submitFileCrc", jsSubmitFileCrc},
      {"submitBufferCrc", jsSubmitBufferCrc},
      {"cancel", jsCancel},
      {"halt", jsHalt},
      {"backgroundStats", jsBackgroundStats},
      {"flockExclusive", jsFlockExclusive},
      {"writeDurable", lvnode::jsWriteDurable},
      {"zeroRange", lvnode::jsZeroRange},
  };
  for (const Method& method : methods) {
    napi_value fn;
    NAPI_OK_OR_RETURN(env, napi_create_function(env, method.name, NAPI_AUTO_LENGTH, method.callback, nullptr, &fn), nullptr);
    NAPI_OK_OR_RETURN(env, napi_set_named_property(env, exports, method.name, fn), nullptr);
  }
  setNamed(env, exports, "kernel", makeString(env, lvnode::crc64KernelName(state->kernel)));
  napi_value kernels;
  NAPI_OK_OR_RETURN(env, napi_create_array(env, &kernels), nullptr);
  uint32_t count = 0;
  // Fastest first, so kernels[0] is the default unless forced.
  for (CrcKernel kernel : {CrcKernel::kVpclmulqdq, CrcKernel::kPclmulqdq, CrcKernel::kTable}) {
    if (lvnode::crc64KernelAvailable(kernel)) napi_set_element(env, kernels, count++, makeString(env, lvnode::crc64KernelName(kernel)));
  }
  setNamed(env, exports, "kernels", kernels);
  if (!state->kernelWarning.empty()) setNamed(env, exports, "kernelWarning", makeString(env, state->kernelWarning.c_str()));
  return exports;
}
