// CRC32C (Castagnoli) for NVMe/TCP header and data digests: the SSE4.2 crc32 instruction where the
// CPU has it (per-function target attribute, chosen at run time, as crc64_kernels.cc does), else
// slice-by-8 tables. Its own small Node-API module (lvnode_crc32c), loaded by
// src/transport/nvmf/crc32c.ts, which falls back to TypeScript tables when it is absent.
#include <node_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#if (defined(__x86_64__) || defined(__i386__)) && !defined(LVNODE_CRC_NO_SIMD)
#define LVNODE_CRC32C_X86 1
#include <cpuid.h>
#include <nmmintrin.h>
#endif

namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;
uint32_t gTable[8][256];

void initTables() {
  for (uint32_t byte = 0; byte < 256; byte++) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; bit++) crc = (crc & 1) ? (crc >> 1) ^ kPolyReflected : crc >> 1;
    gTable[0][byte] = crc;
  }
  for (uint32_t byte = 0; byte < 256; byte++) {
    uint32_t crc = gTable[0][byte];
    for (int slice = 1; slice < 8; slice++) {
      crc = (crc >> 8) ^ gTable[0][crc & 0xFF];
      gTable[slice][byte] = crc;
    }
  }
}

/** `state` is the raw register (already inverted). */
uint32_t crc32cTable(uint32_t state, const uint8_t* data, size_t length) {
  while (length >= 8) {
    uint32_t low;
    uint32_t high;
    std::memcpy(&low, data, 4);
    std::memcpy(&high, data + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    low = __builtin_bswap32(low);
    high = __builtin_bswap32(high);
#endif
    low ^= state;
    state = gTable[7][low & 0xFF] ^ gTable[6][(low >> 8) & 0xFF] ^ gTable[5][(low >> 16) & 0xFF] ^ gTable[4][low >> 24] ^
            gTable[3][high & 0xFF] ^ gTable[2][(high >> 8) & 0xFF] ^ gTable[1][(high >> 16) & 0xFF] ^ gTable[0][high >> 24];
    data += 8;
    length -= 8;
  }
  while (length-- > 0) state = gTable[0][(state ^ *data++) & 0xFF] ^ (state >> 8);
  return state;
}

#ifdef LVNODE_CRC32C_X86
__attribute__((target("sse4.2"))) uint32_t crc32cSse42(uint32_t state, const uint8_t* data, size_t length) {
#if defined(__x86_64__)
  uint64_t wide = state;
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    wide = _mm_crc32_u64(wide, word);
    data += 8;
    length -= 8;
  }
  state = static_cast<uint32_t>(wide);
#endif
  while (length >= 4) {
    uint32_t word;
    std::memcpy(&word, data, 4);
    state = _mm_crc32_u32(state, word);
    data += 4;
    length -= 4;
  }
  while (length-- > 0) state = _mm_crc32_u8(state, *data++);
  return state;
}

bool cpuHasSse42() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & bit_SSE4_2) != 0;
}
#endif

using Kernel = uint32_t (*)(uint32_t, const uint8_t*, size_t);
Kernel gKernel = crc32cTable;
const char* gKernelName = "table";

/** crc32c(data: Uint8Array, crc: number): number — CRC32C of `data` continuing from the finished value `crc`. */
napi_value jsCrc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1) {
    napi_throw_type_error(env, nullptr, "crc32c(data, crc)");
    return nullptr;
  }
  bool isTyped = false;
  napi_is_typedarray(env, argv[0], &isTyped);
  if (!isTyped) {
    napi_throw_type_error(env, nullptr, "crc32c: data must be a Uint8Array");
    return nullptr;
  }
  napi_typedarray_type type;
  size_t length = 0;
  void* bytes = nullptr;
  napi_value arrayBuffer;
  size_t byteOffset = 0;
  if (napi_get_typedarray_info(env, argv[0], &type, &length, &bytes, &arrayBuffer, &byteOffset) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, nullptr, "crc32c: data must be a Uint8Array");
    return nullptr;
  }
  uint32_t crc = 0;
  if (argc >= 2) napi_get_value_uint32(env, argv[1], &crc);
  const uint32_t state = gKernel(~crc, static_cast<const uint8_t*>(bytes), length);
  napi_value result;
  napi_create_uint32(env, ~state, &result);
  return result;
}

}  // namespace

NAPI_MODULE_INIT() {
  initTables();
#ifdef LVNODE_CRC32C_X86
  if (cpuHasSse42()) {
    gKernel = crc32cSse42;
    gKernelName = "sse4.2";
  }
#endif
  napi_value fn;
  if (napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, jsCrc32c, nullptr, &fn) != napi_ok) return nullptr;
  napi_set_named_property(env, exports, "crc32c", fn);
  napi_value name;
  napi_create_string_utf8(env, gKernelName, NAPI_AUTO_LENGTH, &name);
  napi_set_named_property(env, exports, "crc32cKernel", name);
  return exports;
}
