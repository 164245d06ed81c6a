# Builds the lvnode_crc64 Node-API addon (see native/), lvnode_crc32c (NVMe/TCP digests, native/crc32c.cc),
# and lvnode_file_io (file reads and writes through io_uring, native/file_ring.cc; Linux only). No -march or -mavx512 flags here: the
# PCLMULQDQ/VPCLMULQDQ kernels carry per-function target attributes and are chosen at run time, so
# the binary runs on any x86-64; other architectures compile only the table kernel.
{
  "targets": [
    {
      "target_name": "lvnode_crc64",
      "sources": ["native/crc64.cc", "native/crc64_kernels.cc", "native/durable_write.cc", "native/node_error.cc", "native/zero_range.cc"],
      "defines": ["NAPI_VERSION=8", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "cflags_cc": ["-O3", "-std=c++17", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["-lpthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3"]
      }
    },
    {
      "target_name": "lvnode_crc32c",
      "sources": ["native/crc32c.cc"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-O3", "-std=c++17", "-Wall", "-Wextra"],
      "xcode_settings": { "CLANG_CXX_LANGUAGE_STANDARD": "c++17", "OTHER_CPLUSPLUSFLAGS": ["-O3"] }
    },
    {
      "target_name": "lvnode_file_io",
      "conditions": [["OS=='linux'", { "sources": ["native/file_ring.cc", "native/file_now.cc", "native/node_error.cc"] }, { "type": "none" }]],
      "defines": ["NAPI_VERSION=8", "_FILE_OFFSET_BITS=64"],
      "cflags_cc": ["-O3", "-std=c++17", "-Wall", "-Wextra"]
    }
  ]
}
