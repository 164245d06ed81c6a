// CRC-64/GO-ISO kernels (SPDK spdk_crc64_iso_refl / ISA-L crc64_iso_refl): table, PCLMULQDQ, VPCLMULQDQ.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lvnode {

enum class CrcKernel { kTable = 0, kPclmulqdq = 1, kVpclmulqdq = 2 };
constexpr int kCrcKernelCount = 3;

// Every kernel takes and returns the raw (non-inverted) CRC register: callers invert seed and result,
// as ISA-L's crc64_iso_refl does (crc = ~seed; process; return ~crc).
using CrcRegisterFn = uint64_t (*)(uint64_t crc, const uint8_t* data, size_t length);

/** Builds the tables and fold constants once; safe to call more than once (thread-safe static init). */
void crc64InitKernels();

/** Whether this CPU (and its OS) can run `kernel`. The table kernel always can. */
bool crc64KernelAvailable(CrcKernel kernel);

/** The fastest kernel this CPU can run. */
CrcKernel crc64BestKernel();

const char* crc64KernelName(CrcKernel kernel);

/** Parses "table" / "pclmulqdq" / "vpclmulqdq"; false for anything else. */
bool crc64ParseKernel(const char* name, CrcKernel* out);

/** The register-level function of `kernel`; `kernel` must be available. */
CrcRegisterFn crc64KernelFn(CrcKernel kernel);

/** ISA-L convention: seed 0 starts a fresh CRC, a previous result as seed chains. */
inline uint64_t crc64Iso(CrcKernel kernel, uint64_t seed, const uint8_t* data, size_t length) {
  return ~crc64KernelFn(kernel)(~seed, data, length);
}

}  // namespace lvnode
