// GGUF block dequantization into a float32 or bfloat16 buffer: one threaded kernel, compiled
// once per instruction set from dequant_body.h and picked at run time (cpuid), so the build
// needs no -march=native and the module runs on any x86-64 (or other) CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dq {
static inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}
}  // namespace dq

namespace dq_generic {
using dq::f16;
#include "dequant_body.h"
}  // namespace dq_generic

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // clang ignores #pragma GCC target
#define DQ_X86 1
#include <immintrin.h>

// The x86 variants read the fp16 scales with F16C's one instruction (exact, as the portable one).
#define DQ_F16C                                    \
  static inline float f16(const uint8_t* p) {      \
    uint16_t h;                                    \
    std::memcpy(&h, p, 2);                         \
    return _cvtsh_ss(h);                           \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2")
namespace dq_avx2 {
DQ_F16C
#include "dequant_body.h"
}  // namespace dq_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2,prefer-vector-width=512")
namespace dq_avx512 {
DQ_F16C
#define DQ_EMIT_AVX512 1
#include "dequant_body.h"
#undef DQ_EMIT_AVX512
}  // namespace dq_avx512
#pragma GCC pop_options

// AVX-512 plus AVX512_BF16: the bf16 rounding is one instruction (vcvtne2ps2bf16) per 32 values.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi2,prefer-vector-width=512")
namespace dq_avx512bf16 {
DQ_F16C
#define DQ_EMIT_AVX512 1
#define DQ_EMIT_AVX512BF16 1
#include "dequant_body.h"
#undef DQ_EMIT_AVX512BF16
#undef DQ_EMIT_AVX512
}  // namespace dq_avx512bf16
#pragma GCC pop_options
#undef DQ_F16C
#endif

namespace {

// 0 = portable loops, 1 = AVX2, 2 = AVX-512 (F+BW+VL+DQ), 3 = AVX-512 + AVX512_BF16.
bool variant_supported(int64_t v) {
  if (v == 0) return true;
#ifdef DQ_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (v == 1) return avx2;
  if (v == 2) return avx512;
  if (v == 3) return avx512 && __builtin_cpu_supports("avx512bf16");
#endif
  return false;
}

int64_t best_variant() {
  for (int64_t v = 3; v > 0; --v)
    if (variant_supported(v)) return v;
  return 0;
}

// (values, bytes) per block of the ggml type ids this kernel handles.
bool block_of(int64_t qtype, int64_t& values, int64_t& bytes) {
  switch (qtype) {
    case 8: values = 32; bytes = 34; return true;
    case 2: values = 32; bytes = 18; return true;
    case 3: values = 32; bytes = 20; return true;
    case 6: values = 32; bytes = 22; return true;
    case 7: values = 32; bytes = 24; return true;
    case 10: values = 256; bytes = 84; return true;
    case 11: values = 256; bytes = 110; return true;
    case 12: values = 256; bytes = 144; return true;
    case 13: values = 256; bytes = 176; return true;
    case 14: values = 256; bytes = 210; return true;
    default: return false;
  }
}

at::Tensor dequantize_into(const at::Tensor& blocks, int64_t qtype, at::Tensor out, int64_t variant) {
  int64_t values = 0, bytes = 0;
  TORCH_CHECK(block_of(qtype, values, bytes), "diffquant lowbit: unsupported ggml type id ", qtype);
  TORCH_CHECK(blocks.device().is_cpu() && out.device().is_cpu(), "diffquant lowbit: CPU tensors only");
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.is_contiguous(), "blocks must be contiguous uint8");
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16, "out must be float32 or bfloat16");
  TORCH_CHECK(blocks.numel() % bytes == 0, "blocks: ", blocks.numel(), " bytes is not a whole number of ", bytes, "-byte blocks");
  const int64_t n_blocks = blocks.numel() / bytes;
  TORCH_CHECK(out.numel() >= n_blocks * values, "out holds ", out.numel(), " values, need ", n_blocks * values);
  if (variant < 0) variant = best_variant();
  TORCH_CHECK(variant_supported(variant), "diffquant lowbit: kernel variant ", variant, " not supported by this CPU");
  const uint8_t* src = blocks.data_ptr<uint8_t>();
  const bool f32 = out.scalar_type() == at::kFloat;
  float* dst32 = f32 ? out.data_ptr<float>() : nullptr;
  uint16_t* dst16 = f32 ? nullptr : reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  // ~32k values per task: enough work to amortise the task, small enough to balance threads.
  const int64_t grain = std::max<int64_t>(1, 32768 / values);
  at::parallel_for(0, n_blocks, grain, [&](int64_t b0, int64_t b1) {
#ifdef DQ_X86
    if (variant == 3) {
      f32 ? dq_avx512bf16::to_f32(qtype, src, dst32, b0, b1) : dq_avx512bf16::to_bf16(qtype, src, dst16, b0, b1);
      return;
    }
    if (variant == 2) {
      f32 ? dq_avx512::to_f32(qtype, src, dst32, b0, b1) : dq_avx512::to_bf16(qtype, src, dst16, b0, b1);
      return;
    }
    if (variant == 1) {
      f32 ? dq_avx2::to_f32(qtype, src, dst32, b0, b1) : dq_avx2::to_bf16(qtype, src, dst16, b0, b1);
      return;
    }
#endif
    f32 ? dq_generic::to_f32(qtype, src, dst32, b0, b1) : dq_generic::to_bf16(qtype, src, dst16, b0, b1);
  });
  return out;
}

// y (M x N float32) = x (M x K float32) @ w.T, w = the blocks as an N x K weight (bf16-rounded when
// bf16_weight), for M <= DQ_GEMV_MAX_ROWS: no weight buffer is written (see gemv in dequant_body.h).
at::Tensor gemv_into(const at::Tensor& blocks, int64_t qtype, const at::Tensor& x, at::Tensor y, bool bf16_weight,
                     int64_t variant) {
  int64_t values = 0, bytes = 0;
  TORCH_CHECK(block_of(qtype, values, bytes), "diffquant lowbit: unsupported ggml type id ", qtype);
  TORCH_CHECK(blocks.device().is_cpu() && x.device().is_cpu() && y.device().is_cpu(), "diffquant lowbit: CPU tensors only");
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.is_contiguous(), "blocks must be contiguous uint8");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D float32 tensor");
  TORCH_CHECK(y.scalar_type() == at::kFloat && y.dim() == 2 && y.is_contiguous(), "y must be a contiguous 2-D float32 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1);
  TORCH_CHECK(M >= 1 && M <= DQ_GEMV_MAX_ROWS, "gemv takes 1..", DQ_GEMV_MAX_ROWS, " rows, got ", M);
  TORCH_CHECK(y.size(0) == M, "y has ", y.size(0), " rows, x has ", M);
  TORCH_CHECK(K % values == 0, "in_features ", K, " is not a whole number of ", values, "-value blocks");
  TORCH_CHECK(blocks.numel() == N * (K / values) * bytes, "blocks: ", blocks.numel(), " bytes, need ",
              N * (K / values) * bytes, " for ", N, " x ", K);
  if (variant < 0) variant = best_variant();
  TORCH_CHECK(variant_supported(variant), "diffquant lowbit: kernel variant ", variant, " not supported by this CPU");
  const uint8_t* src = blocks.data_ptr<uint8_t>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Rows of ~32k weights per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / K);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
#ifdef DQ_X86
    if (variant == 3) return dq_avx512bf16::gemv_rows(bf16_weight, qtype, values, bytes, src, xp, M, K, yp, N, n0, n1);
    if (variant == 2) return dq_avx512::gemv_rows(bf16_weight, qtype, values, bytes, src, xp, M, K, yp, N, n0, n1);
    if (variant == 1) return dq_avx2::gemv_rows(bf16_weight, qtype, values, bytes, src, xp, M, K, yp, N, n0, n1);
#endif
    dq_generic::gemv_rows(bf16_weight, qtype, values, bytes, src, xp, M, K, yp, N, n0, n1);
  });
  return y;
}

bool supported(int64_t variant) { return variant_supported(variant); }
int64_t best() { return best_variant(); }

}  // namespace

TORCH_LIBRARY(diffquant_lowbit, m) {
  m.def("dequantize_into(Tensor blocks, int qtype, Tensor(a!) out, int variant=-1) -> Tensor(a!)");
  m.def("gemv_into(Tensor blocks, int qtype, Tensor x, Tensor(a!) y, bool bf16_weight, int variant=-1) -> Tensor(a!)");
  m.def("variant_supported(int variant) -> bool", &supported);
  m.def("best_variant() -> int", &best);
}

TORCH_LIBRARY_IMPL(diffquant_lowbit, CPU, m) {
  m.impl("dequantize_into", &dequantize_into);
  m.impl("gemv_into", &gemv_into);
}
