// CRC-64/GO-ISO kernels: slice-by-8 tables, and carry-less-multiply folding with PCLMULQDQ / VPCLMULQDQ.
//
// The folding kernels are compiled with per-function target attributes and chosen at run time, so one
// binary runs on any x86-64 (and on other architectures only the table kernel is built).
//
// Reflected-domain folding, in short: a 16-byte block loaded little-endian into a 128-bit register R
// has bit j = coefficient of x^(127-j). Writing the block's polynomial as A = H*x^64 + L, the low
// qword is rev64(H) and the high qword rev64(L). A carry-less multiply of two bit-reversed 64-bit
// operands gives the bit-reversed product shifted by one place, i.e. it represents a*b*x in this
// layout. So A*x^d (mod P, kept below 128 bits) is
//   clmul(R.lo, rev64(x^(d+63) mod P)) ^ clmul(R.hi, rev64(x^(d-1) mod P)),
// the x^-1 in each constant compensating the extra x. Constants are computed below, not hard-coded.
// The folded 128-bit remainder S is congruent to the message so far; running the table CRC over its
// 16 bytes from register 0 yields S*x^64 mod P, the CRC register, which then goes on over the tail.
#include "crc64_kernels.h"

#include <cstring>
#include <mutex>

// -DLVNODE_CRC_NO_SIMD builds what other architectures get: the table kernel alone.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(LVNODE_CRC_NO_SIMD)
#define LVNODE_CRC_X86 1
#include <immintrin.h>
// GCC 12's avx512fintrin.h seeds _mm512_extracti32x4_epi32 with _mm_undefined_si128(), which trips a
// false -Wmaybe-uninitialized wherever it is inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lvnode {
namespace {

constexpr uint64_t kPolyReflected = 0xD800000000000000ULL;  // x^64 + x^4 + x^3 + x + 1, reflected
constexpr uint64_t kPolyNormalLow = 0x1BULL;                // the same polynomial, normal form, x^64 implied

uint64_t gTable[8][256];

inline uint64_t load64le(const uint8_t* p) {
  uint64_t value;
  std::memcpy(&value, p, sizeof value);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  value = __builtin_bswap64(value);
#endif
  return value;
}

uint64_t rev64(uint64_t value) {
  uint64_t out = 0;
  for (int bit = 0; bit < 64; bit++) {
    out = (out << 1) | (value & 1);
    value >>= 1;
  }
  return out;
}

/** x^n mod P in normal form (bit k = coefficient of x^k). */
uint64_t xPowMod(unsigned n) {
  uint64_t value = 1;
  for (unsigned i = 0; i < n; i++) {
    const bool carry = (value >> 63) != 0;
    value <<= 1;
    if (carry) value ^= kPolyNormalLow;
  }
  return value;
}

struct FoldConstant {
  uint64_t lo;  // multiplies the low qword (the block's high-degree half)
  uint64_t hi;  // multiplies the high qword
};

FoldConstant foldConstant(unsigned distanceBits) {
  return FoldConstant{rev64(xPowMod(distanceBits + 63)), rev64(xPowMod(distanceBits - 1))};
}

// Distances used by the kernels, in bits.
FoldConstant gFold128, gFold256, gFold384, gFold512, gFold1024, gFold2048, gFold4096;
FoldConstant gFoldLane[8];  // gFoldLane[k] folds by k * 128 bits (k = 1..7); collapses 8 xmm lanes

std::once_flag gInitOnce;

void buildTablesAndConstants() {
  for (unsigned byte = 0; byte < 256; byte++) {
    uint64_t crc = byte;
    for (int bit = 0; bit < 8; bit++) crc = (crc & 1) ? (crc >> 1) ^ kPolyReflected : crc >> 1;
    gTable[0][byte] = crc;
  }
  for (int slice = 1; slice < 8; slice++) {
    for (unsigned byte = 0; byte < 256; byte++) {
      const uint64_t previous = gTable[slice - 1][byte];
      gTable[slice][byte] = (previous >> 8) ^ gTable[0][previous & 0xff];
    }
  }
  gFold128 = foldConstant(128);
  gFold256 = foldConstant(256);
  gFold384 = foldConstant(384);
  gFold512 = foldConstant(512);
  gFold1024 = foldConstant(1024);
  gFold2048 = foldConstant(2048);
  gFold4096 = foldConstant(4096);
  for (unsigned k = 1; k < 8; k++) gFoldLane[k] = foldConstant(128 * k);
}

uint64_t crcTable(uint64_t crc, const uint8_t* p, size_t n) {
  // Byte steps until 8-byte aligned, so the slice loop reads aligned words where that matters.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    crc = gTable[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    n--;
  }
  while (n >= 8) {
    crc ^= load64le(p);
    crc = gTable[7][crc & 0xff] ^ gTable[6][(crc >> 8) & 0xff] ^ gTable[5][(crc >> 16) & 0xff] ^
          gTable[4][(crc >> 24) & 0xff] ^ gTable[3][(crc >> 32) & 0xff] ^ gTable[2][(crc >> 40) & 0xff] ^
          gTable[1][(crc >> 48) & 0xff] ^ gTable[0][crc >> 56];
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    crc = gTable[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    n--;
  }
  return crc;
}

#ifdef LVNODE_CRC_X86

// Below this the table kernel is as fast and the 8-lane setup would not pay off.
constexpr size_t kPclmulMinBytes = 256;
// Below this the zmm kernel hands over to the xmm one (it needs at least one full 512-byte round).
constexpr size_t kVpclmulMinBytes = 1024;

#define LVNODE_TARGET_PCLMUL __attribute__((target("sse4.1,pclmul")))
#define LVNODE_TARGET_VPCLMUL __attribute__((target("avx512f,avx512vl,avx512bw,vpclmulqdq,pclmul,sse4.1")))

LVNODE_TARGET_PCLMUL inline __m128i xmmConstant(const FoldConstant& k) {
  return _mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo));
}

LVNODE_TARGET_PCLMUL inline __m128i fold128(__m128i a, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}

LVNODE_TARGET_PCLMUL inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

/** Folds the 16-byte blocks left over after the wide loop, then reduces to the CRC register. */
LVNODE_TARGET_PCLMUL uint64_t finishXmm(__m128i acc, const uint8_t* p, size_t n) {
  const __m128i k128 = xmmConstant(gFold128);
  while (n >= 16) {
    acc = _mm_xor_si128(fold128(acc, k128), load128(p));
    p += 16;
    n -= 16;
  }
  alignas(16) uint8_t remainder[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(remainder), acc);
  const uint64_t crc = crcTable(0, remainder, sizeof remainder);
  return crcTable(crc, p, n);
}

LVNODE_TARGET_PCLMUL uint64_t crcPclmul(uint64_t crc, const uint8_t* p, size_t n) {
  if (n < kPclmulMinBytes) return crcTable(crc, p, n);
  __m128i x0 = _mm_xor_si128(load128(p), _mm_cvtsi64_si128(static_cast<long long>(crc)));
  __m128i x1 = load128(p + 16), x2 = load128(p + 32), x3 = load128(p + 48);
  __m128i x4 = load128(p + 64), x5 = load128(p + 80), x6 = load128(p + 96), x7 = load128(p + 112);
  p += 128;
  n -= 128;
  const __m128i k1024 = xmmConstant(gFold1024);
  while (n >= 128) {
    x0 = _mm_xor_si128(fold128(x0, k1024), load128(p));
    x1 = _mm_xor_si128(fold128(x1, k1024), load128(p + 16));
    x2 = _mm_xor_si128(fold128(x2, k1024), load128(p + 32));
    x3 = _mm_xor_si128(fold128(x3, k1024), load128(p + 48));
    x4 = _mm_xor_si128(fold128(x4, k1024), load128(p + 64));
    x5 = _mm_xor_si128(fold128(x5, k1024), load128(p + 80));
    x6 = _mm_xor_si128(fold128(x6, k1024), load128(p + 96));
    x7 = _mm_xor_si128(fold128(x7, k1024), load128(p + 112));
    p += 128;
    n -= 128;
  }
  // Collapse: lane i is (7 - i) blocks before lane 7.
  __m128i acc = x7;
  acc = _mm_xor_si128(acc, fold128(x0, xmmConstant(gFoldLane[7])));
  acc = _mm_xor_si128(acc, fold128(x1, xmmConstant(gFoldLane[6])));
  acc = _mm_xor_si128(acc, fold128(x2, xmmConstant(gFoldLane[5])));
  acc = _mm_xor_si128(acc, fold128(x3, xmmConstant(gFoldLane[4])));
  acc = _mm_xor_si128(acc, fold128(x4, xmmConstant(gFoldLane[3])));
  acc = _mm_xor_si128(acc, fold128(x5, xmmConstant(gFoldLane[2])));
  acc = _mm_xor_si128(acc, fold128(x6, xmmConstant(gFoldLane[1])));
  return finishXmm(acc, p, n);
}

LVNODE_TARGET_VPCLMUL inline __m512i zmmConstant(const FoldConstant& k) {
  return _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo)));
}

/** Each of the four 128-bit blocks of `a` folded forward by the constant's distance, XORed with `b`. */
LVNODE_TARGET_VPCLMUL inline __m512i fold512(__m512i a, __m512i k, __m512i b) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00), _mm512_clmulepi64_epi128(a, k, 0x11), b, 0x96);
}

LVNODE_TARGET_VPCLMUL inline __m512i load512(const uint8_t* p) { return _mm512_loadu_si512(p); }

/** Reduces one zmm (four consecutive 16-byte blocks) and whatever follows to the CRC register. */
LVNODE_TARGET_VPCLMUL uint64_t finishZmm(__m512i acc, const uint8_t* p, size_t n) {
  const __m512i k512 = zmmConstant(gFold512);
  while (n >= 64) {
    acc = fold512(acc, k512, load512(p));
    p += 64;
    n -= 64;
  }
  __m128i x = _mm512_extracti32x4_epi32(acc, 3);
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(acc, 0), xmmConstant(gFold384)));
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(acc, 1), xmmConstant(gFold256)));
  x = _mm_xor_si128(x, fold128(_mm512_extracti32x4_epi32(acc, 2), xmmConstant(gFold128)));
  return finishXmm(x, p, n);
}

// Eight zmm accumulators, 512 bytes per round: on this Xeon (Emerald Rapids) that measured 58-70 GB/s
// on L1/L2-resident data against 47-54 GB/s with four (256 bytes per round, ISA-L's by16 layout), as
// more independent multiply-XOR chains hide the VPCLMULQDQ latency.
LVNODE_TARGET_VPCLMUL uint64_t crcVpclmul(uint64_t crc, const uint8_t* p, size_t n) {
  if (n < kVpclmulMinBytes) return crcPclmul(crc, p, n);
  __m512i z0 = _mm512_xor_si512(load512(p), _mm512_zextsi128_si512(_mm_cvtsi64_si128(static_cast<long long>(crc))));
  __m512i z1 = load512(p + 64), z2 = load512(p + 128), z3 = load512(p + 192);
  __m512i z4 = load512(p + 256), z5 = load512(p + 320), z6 = load512(p + 384), z7 = load512(p + 448);
  p += 512;
  n -= 512;
  const __m512i k4096 = zmmConstant(gFold4096);
  while (n >= 512) {
    z0 = fold512(z0, k4096, load512(p));
    z1 = fold512(z1, k4096, load512(p + 64));
    z2 = fold512(z2, k4096, load512(p + 128));
    z3 = fold512(z3, k4096, load512(p + 192));
    z4 = fold512(z4, k4096, load512(p + 256));
    z5 = fold512(z5, k4096, load512(p + 320));
    z6 = fold512(z6, k4096, load512(p + 384));
    z7 = fold512(z7, k4096, load512(p + 448));
    p += 512;
    n -= 512;
  }
  // Collapse pairwise: 8 -> 4 (distance 4 zmm = 2048 bits), 4 -> 2 (1024), 2 -> 1 (512).
  const __m512i k2048 = zmmConstant(gFold2048);
  z4 = fold512(z0, k2048, z4);
  z5 = fold512(z1, k2048, z5);
  z6 = fold512(z2, k2048, z6);
  z7 = fold512(z3, k2048, z7);
  const __m512i k1024 = zmmConstant(gFold1024);
  z6 = fold512(z4, k1024, z6);
  z7 = fold512(z5, k1024, z7);
  z7 = fold512(z6, zmmConstant(gFold512), z7);
  return finishZmm(z7, p, n);
}

bool cpuHasPclmul() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

bool cpuHasVpclmul() {
  __builtin_cpu_init();
  // libgcc checks XCR0 too, so these are false when the OS does not save zmm state.
  return cpuHasPclmul() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vpclmulqdq");
}

#endif  // LVNODE_CRC_X86

}  // namespace

void crc64InitKernels() { std::call_once(gInitOnce, buildTablesAndConstants); }

bool crc64KernelAvailable(CrcKernel kernel) {
  switch (kernel) {
    case CrcKernel::kTable:
      return true;
#ifdef LVNODE_CRC_X86
    case CrcKernel::kPclmulqdq:
      return cpuHasPclmul();
    case CrcKernel::kVpclmulqdq:
      return cpuHasVpclmul();
#endif
    default:
      return false;
  }
}

CrcKernel crc64BestKernel() {
  if (crc64KernelAvailable(CrcKernel::kVpclmulqdq)) return CrcKernel::kVpclmulqdq;
  if (crc64KernelAvailable(CrcKernel::kPclmulqdq)) return CrcKernel::kPclmulqdq;
  return CrcKernel::kTable;
}

const char* crc64KernelName(CrcKernel kernel) {
  switch (kernel) {
    case CrcKernel::kPclmulqdq:
      return "pclmulqdq";
    case CrcKernel::kVpclmulqdq:
      return "vpclmulqdq";
    case CrcKernel::kTable:
    default:
      return "table";
  }
}

bool crc64ParseKernel(const char* name, CrcKernel* out) {
  for (int index = 0; index < kCrcKernelCount; index++) {
    const CrcKernel kernel = static_cast<CrcKernel>(index);
    if (std::strcmp(name, crc64KernelName(kernel)) == 0) {
      *out = kernel;
      return true;
    }
  }
  return false;
}

CrcRegisterFn crc64KernelFn(CrcKernel kernel) {
  crc64InitKernels();
  switch (kernel) {
#ifdef LVNODE_CRC_X86
    case CrcKernel::kPclmulqdq:
      return crcPclmul;
    case CrcKernel::kVpclmulqdq:
      return crcVpclmul;
#endif
    case CrcKernel::kTable:
    default:
      return crcTable;
  }
}

}  // namespace lvnode
