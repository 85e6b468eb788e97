// Block dequantizers for GGUF formats, included once per instruction set (see dequant.cpp):
// plain loops that the compiler vectorises for the ISA of the enclosing `#pragma GCC target`.
// Every value is computed with the same float32 operations, in the same order, as
// gguf.quants.dequantize (numpy, no FMA: the build uses -ffp-contract=off), then stored as
// float32 or rounded to bfloat16 (round-to-nearest-even, as c10::BFloat16).

// Store n float32 values t[] as float32 or as bfloat16 (round-to-nearest-even, NaN -> 0x7FC0).
static inline void put(float* o, const float* t, int n) {
  for (int i = 0; i < n; ++i) o[i] = t[i];
}

static inline void put(uint16_t* o, const float* t, int n) {
  for (int i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &t[i], 4);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    o[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : uint16_t(r);
  }
}

// The three affine forms of GGUF blocks, over n (a multiple of 16) quantized values q:
//   mul:    d * q          (q signed)
//   mulsub: d * q - m      (K-quants with mins)
//   muladd: d * q + m      (Q4_1, Q5_1)
#ifdef DQ_EMIT_AVX512
static inline __m512 dq_cvt_u8(const uint8_t* q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}
static inline __m512 dq_cvt_i8(const int8_t* q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}
static inline void dq_store(float* o, __m512 v) { _mm512_storeu_ps(o, v); }
static inline void dq_store2(float* o, __m512 lo, __m512 hi) {
  _mm512_storeu_ps(o, lo);
  _mm512_storeu_ps(o + 16, hi);
}
#ifdef DQ_EMIT_AVX512BF16
// One instruction rounds 16 (or 32) floats to bf16, round-to-nearest-even like c10::BFloat16.
// It treats float32 denormals as zero, which these products never are: every value is an integer
// times an fp16 scale (>= 2^-24) or a difference of two such, so 0 or >= 2^-24 in magnitude.
// NaN lanes are set to 0x7FC0 as c10 does (the instruction keeps the payload).
static inline void dq_store(uint16_t* o, __m512 v) {
  __m256i r = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  r = _mm256_mask_mov_epi16(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm256_set1_epi16(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), r);
}
static inline void dq_store2(uint16_t* o, __m512 lo, __m512 hi) {
  __m512i r = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));  // lanes 0-15 from lo
  const __mmask32 nan = _mm512_kunpackw(_mm512_cmp_ps_mask(hi, hi, _CMP_UNORD_Q), _mm512_cmp_ps_mask(lo, lo, _CMP_UNORD_Q));
  _mm512_storeu_si512(o, _mm512_mask_mov_epi16(r, nan, _mm512_set1_epi16(0x7FC0)));
}
#else
static inline void dq_store(uint16_t* o, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtepi32_epi16(r));
}
static inline void dq_store2(uint16_t* o, __m512 lo, __m512 hi) {
  dq_store(o, lo);
  dq_store(o + 16, hi);
}
#endif
// Pairs of 16 first (one 64-byte bf16 store in the BF16 variant), then a last 16 if n is odd in 16s.
template <class O> static inline void emit_mul(O* o, const int8_t* q, int n, float d) {
  const __m512 vd = _mm512_set1_ps(d);
  int i = 0;
  for (; i + 32 <= n; i += 32)
    dq_store2(o + i, _mm512_mul_ps(vd, dq_cvt_i8(q + i)), _mm512_mul_ps(vd, dq_cvt_i8(q + i + 16)));
  for (; i < n; i += 16) dq_store(o + i, _mm512_mul_ps(vd, dq_cvt_i8(q + i)));
}
template <class O> static inline void emit_mulsub(O* o, const uint8_t* q, int n, float d, float m) {
  const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
  int i = 0;
  for (; i + 32 <= n; i += 32)
    dq_store2(o + i, _mm512_sub_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i)), vm),
              _mm512_sub_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i + 16)), vm));
  for (; i < n; i += 16) dq_store(o + i, _mm512_sub_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i)), vm));
}
template <class O> static inline void emit_muladd(O* o, const uint8_t* q, int n, float d, float m) {
  const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
  int i = 0;
  for (; i + 32 <= n; i += 32)
    dq_store2(o + i, _mm512_add_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i)), vm),
              _mm512_add_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i + 16)), vm));
  for (; i < n; i += 16) dq_store(o + i, _mm512_add_ps(_mm512_mul_ps(vd, dq_cvt_u8(q + i)), vm));
}
#else
template <class O> static inline void emit_mul(O* o, const int8_t* q, int n, float d) {
  alignas(64) float t[16];
  for (int k = 0; k < n; k += 16) {
    for (int i = 0; i < 16; ++i) t[i] = d * float(q[k + i]);
    put(o + k, t, 16);
  }
}
template <class O> static inline void emit_mulsub(O* o, const uint8_t* q, int n, float d, float m) {
  alignas(64) float t[16];
  for (int k = 0; k < n; k += 16) {
    for (int i = 0; i < 16; ++i) t[i] = d * float(q[k + i]) - m;
    put(o + k, t, 16);
  }
}
template <class O> static inline void emit_muladd(O* o, const uint8_t* q, int n, float d, float m) {
  alignas(64) float t[16];
  for (int k = 0; k < n; k += 16) {
    for (int i = 0; i < 16; ++i) t[i] = d * float(q[k + i]) + m;
    put(o + k, t, 16);
  }
}
#endif

// Each block: unpack the quantized integers (byte loops the compiler vectorises), then one
// affine form per sub-block with its scale (and min) computed as numpy does.
template <class O> static inline void blk_q8_0(const uint8_t* b, O* o) {
  emit_mul(o, reinterpret_cast<const int8_t*>(b + 2), 32, f16(b));
}

template <class O> static inline void blk_q4_0(const uint8_t* b, O* o) {
  const uint8_t* qs = b + 2;
  alignas(64) int8_t q[32];
  for (int i = 0; i < 16; ++i) {
    q[i] = int8_t((qs[i] & 0xF) - 8);
    q[i + 16] = int8_t((qs[i] >> 4) - 8);
  }
  emit_mul(o, q, 32, f16(b));
}

template <class O> static inline void blk_q4_1(const uint8_t* b, O* o) {
  const uint8_t* qs = b + 4;
  alignas(64) uint8_t q[32];
  for (int i = 0; i < 16; ++i) {
    q[i] = qs[i] & 0xF;
    q[i + 16] = qs[i] >> 4;
  }
  emit_muladd(o, q, 32, f16(b), f16(b + 2));
}

template <class O> static inline void blk_q5_0(const uint8_t* b, O* o) {
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  alignas(64) int8_t q[32];
  for (int i = 0; i < 16; ++i) {
    q[i] = int8_t(int((qs[i] & 0xF) | (((qh >> i) & 1u) << 4)) - 16);
    q[i + 16] = int8_t(int((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4)) - 16);
  }
  emit_mul(o, q, 32, f16(b));
}

template <class O> static inline void blk_q5_1(const uint8_t* b, O* o) {
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  alignas(64) uint8_t q[32];
  for (int i = 0; i < 16; ++i) {
    q[i] = uint8_t((qs[i] & 0xF) | (((qh >> i) & 1u) << 4));
    q[i + 16] = uint8_t((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4));
  }
  emit_muladd(o, q, 32, f16(b), f16(b + 2));
}

// Q2_K: scales[16] qs[64] d dmin; value e: 2 bits at shift 2*((e/32)%4) of qs[(e/128)*32 + e%32].
template <class O> static inline void blk_q2_k(const uint8_t* b, O* o) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = f16(b + 80), dmin = f16(b + 82);
  alignas(64) uint8_t q[256];
  for (int h = 0; h < 2; ++h)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) q[h * 128 + s * 32 + l] = (qs[h * 32 + l] >> (2 * s)) & 3;
  for (int j = 0; j < 16; ++j)
    emit_mulsub(o + j * 16, q + j * 16, 16, d * float(sc[j] & 0xF), dmin * float(sc[j] >> 4));
}

// Q3_K: hmask[32] qs[64] scales[12] d; 6-bit signed scales per 16 values; high bit inverted.
template <class O> static inline void blk_q3_k(const uint8_t* b, O* o) {
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16(b + 108);
  alignas(64) int8_t q[256];
  for (int h = 0; h < 2; ++h)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l)
        q[h * 128 + s * 32 + l] = int8_t(((qs[h * 32 + l] >> (2 * s)) & 3) -
                                         ((((hm[l] >> (h * 4 + s)) & 1) ^ 1) << 2));
  for (int j = 0; j < 16; ++j) {
    const int low = (sc[j % 8] >> (4 * (j / 8))) & 0xF, high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    emit_mul(o + j * 16, q + j * 16, 16, d * float((low | (high << 4)) - 32));
  }
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K/Q5_K (ggml's get_scale_min_k4).
static inline void scale_min_k4(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

template <class O> static inline void blk_q4_k(const uint8_t* b, O* o) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  alignas(64) uint8_t q[256];
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      q[c * 64 + l] = qs[c * 32 + l] & 0xF;
      q[c * 64 + 32 + l] = qs[c * 32 + l] >> 4;
    }
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, sc, m);
    emit_mulsub(o + j * 32, q + j * 32, 32, d * float(sc), dmin * float(m));
  }
}

template <class O> static inline void blk_q5_k(const uint8_t* b, O* o) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  alignas(64) uint8_t q[256];
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      q[c * 64 + l] = (qs[c * 32 + l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4);
      q[c * 64 + 32 + l] = (qs[c * 32 + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
    }
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, sc, m);
    emit_mulsub(o + j * 32, q + j * 32, 32, d * float(sc), dmin * float(m));
  }
}

// Q6_K: ql[128] qh[64] scales[16] (int8) d; value h*128 + r: low nibble of ql[h*64 + r%64] at
// shift 4*(r/64), high two bits of qh[h*32 + r%32] at shift 2*(r/32).
template <class O> static inline void blk_q6_k(const uint8_t* b, O* o) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  alignas(64) int8_t q[256];
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t a = ql[h * 64 + l], c = ql[h * 64 + 32 + l], x = qh[h * 32 + l];
      int8_t* p = q + h * 128 + l;
      p[0] = int8_t(((a & 0xF) | ((x & 3) << 4)) - 32);
      p[32] = int8_t(((c & 0xF) | (((x >> 2) & 3) << 4)) - 32);
      p[64] = int8_t(((a >> 4) | (((x >> 4) & 3) << 4)) - 32);
      p[96] = int8_t(((c >> 4) | (((x >> 6) & 3) << 4)) - 32);
    }
  for (int j = 0; j < 16; ++j) emit_mul(o + j * 16, q + j * 16, 16, d * float(sc[j]));
}

template <class O> static void run(int64_t qtype, const uint8_t* src, O* dst, int64_t b0, int64_t b1) {
#define DQ_LOOP(FN, VALUES, BYTES) \
  for (int64_t k = b0; k < b1; ++k) FN<O>(src + k * (BYTES), dst + k * (VALUES)); \
  return;
  switch (qtype) {
    case 8: DQ_LOOP(blk_q8_0, 32, 34)
    case 2: DQ_LOOP(blk_q4_0, 32, 18)
    case 3: DQ_LOOP(blk_q4_1, 32, 20)
    case 6: DQ_LOOP(blk_q5_0, 32, 22)
    case 7: DQ_LOOP(blk_q5_1, 32, 24)
    case 10: DQ_LOOP(blk_q2_k, 256, 84)
    case 11: DQ_LOOP(blk_q3_k, 256, 110)
    case 12: DQ_LOOP(blk_q4_k, 256, 144)
    case 13: DQ_LOOP(blk_q5_k, 256, 176)
    case 14: DQ_LOOP(blk_q6_k, 256, 210)
    default: return;
  }
#undef DQ_LOOP
}

static void to_f32(int64_t qtype, const uint8_t* src, float* dst, int64_t b0, int64_t b1) {
  run<float>(qtype, src, dst, b0, b1);
}
static void to_bf16(int64_t qtype, const uint8_t* src, uint16_t* dst, int64_t b0, int64_t b1) {
  run<uint16_t>(qtype, src, dst, b0, b1);
}

// Few-token products without the weight buffer: y[m, n] = sum_k x[m, k] * w[n, k] for rows n in
// [n0, n1), M <= DQ_GEMV_MAX_ROWS tokens. Each block is dequantized into an L1 buffer (rounded to
// bf16 when the compute dtype is bf16, so the weight values are the GEMM path's), then multiplied
// in float32 with 16 accumulators per token, summed in a fixed order: the result does not depend
// on the thread count, but it is not bit-identical to oneDNN's GEMM (another summation order).
#define DQ_GEMV_MAX_ROWS 8
template <bool BF16W>
static void gemv(int64_t qtype, int64_t values, int64_t bytes, const uint8_t* src, const float* x, int64_t M,
                 int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
  alignas(64) uint16_t w16[256];
  alignas(64) float wf[256];
  alignas(64) float acc[DQ_GEMV_MAX_ROWS][16];
  const int64_t per_row = K / values;
  const int64_t chunk = 256 / values;  // blocks per step: 256 values (one K-quant super-block, 8 Q8_0 blocks)
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = src + n * per_row * bytes;
    for (int64_t m = 0; m < M; ++m)
      for (int l = 0; l < 16; ++l) acc[m][l] = 0.0f;
    for (int64_t j = 0; j < per_row; j += chunk) {
      const int64_t nb = std::min<int64_t>(chunk, per_row - j), nv = nb * values;
      if (BF16W) {
        run<uint16_t>(qtype, row + j * bytes, w16, 0, nb);
        for (int64_t i = 0; i < nv; ++i) {
          const uint32_t u = uint32_t(w16[i]) << 16;
          std::memcpy(&wf[i], &u, 4);
        }
      } else {
        run<float>(qtype, row + j * bytes, wf, 0, nb);
      }
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K + j * values;
        for (int64_t i = 0; i < nv; i += 16)
          for (int l = 0; l < 16; ++l) acc[m][l] += wf[i + l] * xm[i + l];
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int l = 0; l < 16; ++l) s += acc[m][l];
      y[m * N + n] = s;
    }
  }
}

static void gemv_rows(bool bf16w, int64_t qtype, int64_t values, int64_t bytes, const uint8_t* src, const float* x,
                      int64_t M, int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
  bf16w ? gemv<true>(qtype, values, bytes, src, x, M, K, y, N, n0, n1)
        : gemv<false>(qtype, values, bytes, src, x, M, K, y, N, n0, n1);
}
