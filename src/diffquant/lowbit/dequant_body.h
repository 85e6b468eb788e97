// Block dequantizers for GGUF formats, included once per instruction set (see dequant.cpp):
// plain loops that the compiler vectorises for the ISA of the enclosing `#pragma GCC target`.
// Every value is computed with the same float32 operations, in the same order, as
// gguf.quants.dequantize (numpy, no FMA: the build uses -ffp-contract=off), then stored as
// float32 or rounded to bfloat16 (round-to-nearest-even, as c10::BFloat16).

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

template <class O> static inline void blk_q8_0(const uint8_t* b, O* o) {
  const float d = f16(b);
  const int8_t* x = reinterpret_cast<const int8_t*>(b + 2);
  alignas(64) float t[32];
  for (int i = 0; i < 32; ++i) t[i] = float(x[i]) * d;
  put(o, t, 32);
}

template <class O> static inline void blk_q4_0(const uint8_t* b, O* o) {
  const float d = f16(b);
  const uint8_t* qs = b + 2;
  alignas(64) float t[32];
  for (int i = 0; i < 16; ++i) {
    t[i] = d * float(int(qs[i] & 0xF) - 8);
    t[i + 16] = d * float(int(qs[i] >> 4) - 8);
  }
  put(o, t, 32);
}

template <class O> static inline void blk_q4_1(const uint8_t* b, O* o) {
  const float d = f16(b), m = f16(b + 2);
  const uint8_t* qs = b + 4;
  alignas(64) float t[32];
  for (int i = 0; i < 16; ++i) {
    t[i] = d * float(qs[i] & 0xF) + m;
    t[i + 16] = d * float(qs[i] >> 4) + m;
  }
  put(o, t, 32);
}

template <class O> static inline void blk_q5_0(const uint8_t* b, O* o) {
  const float d = f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  alignas(64) float t[32];
  for (int i = 0; i < 16; ++i) {
    t[i] = d * float(int((qs[i] & 0xF) | (((qh >> i) & 1u) << 4)) - 16);
    t[i + 16] = d * float(int((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4)) - 16);
  }
  put(o, t, 32);
}

template <class O> static inline void blk_q5_1(const uint8_t* b, O* o) {
  const float d = f16(b), m = f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  alignas(64) float t[32];
  for (int i = 0; i < 16; ++i) {
    t[i] = d * float((qs[i] & 0xF) | (((qh >> i) & 1u) << 4)) + m;
    t[i + 16] = d * float((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4)) + m;
  }
  put(o, t, 32);
}

// Q2_K: scales[16] qs[64] d dmin; value e: 2 bits at shift 2*((e/32)%4) of qs[(e/128)*32 + e%32].
template <class O> static inline void blk_q2_k(const uint8_t* b, O* o) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = f16(b + 80), dmin = f16(b + 82);
  alignas(64) float t[256];
  for (int j = 0; j < 16; ++j) {
    const float dl = d * float(sc[j] & 0xF), ml = dmin * float(sc[j] >> 4);
    const uint8_t* q = qs + (j / 8) * 32 + (j % 2) * 16;
    const int shift = 2 * ((j / 2) % 4);
    for (int i = 0; i < 16; ++i) t[j * 16 + i] = dl * float((q[i] >> shift) & 3) - ml;
  }
  put(o, t, 256);
}

// Q3_K: hmask[32] qs[64] scales[12] d; 6-bit signed scales per 16 values; high bit inverted.
template <class O> static inline void blk_q3_k(const uint8_t* b, O* o) {
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16(b + 108);
  alignas(64) float t[256];
  for (int j = 0; j < 16; ++j) {
    const int low = (sc[j % 8] >> (4 * (j / 8))) & 0xF, high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    const float dl = d * float((low | (high << 4)) - 32);
    const uint8_t* q = qs + (j / 8) * 32 + (j % 2) * 16;
    const uint8_t* h = hm + (j % 2) * 16;
    const int shift = 2 * ((j / 2) % 4), hbit = j / 2;
    for (int i = 0; i < 16; ++i) {
      const int v = int((q[i] >> shift) & 3) - int((((h[i] >> hbit) & 1) ^ 1) << 2);
      t[j * 16 + i] = dl * float(v);
    }
  }
  put(o, t, 256);
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
  alignas(64) float t[256];
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, sc, m);
    const float dd = d * float(sc), dm = dmin * float(m);
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int i = 0; i < 32; ++i) t[j * 32 + i] = dd * float((q[i] >> shift) & 0xF) - dm;
  }
  put(o, t, 256);
}

template <class O> static inline void blk_q5_k(const uint8_t* b, O* o) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  alignas(64) float t[256];
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, sc, m);
    const float dd = d * float(sc), dm = dmin * float(m);
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int i = 0; i < 32; ++i)
      t[j * 32 + i] = dd * float(((q[i] >> shift) & 0xF) | (((qh[i] >> j) & 1) << 4)) - dm;
  }
  put(o, t, 256);
}

template <class O> static inline void blk_q6_k(const uint8_t* b, O* o) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  alignas(64) float t[256];
  for (int j = 0; j < 16; ++j) {  // 16 values each; e = j*16 + i
    const float dd = d * float(sc[j]);
    const int h = j / 8, r = (j % 8) * 16;  // half of the block, offset inside it
    const uint8_t* lo = ql + h * 64 + r % 64;
    const uint8_t* hi = qh + h * 32 + r % 32;
    const int lshift = 4 * (r / 64), hshift = 2 * (r / 32);
    for (int i = 0; i < 16; ++i) {
      const int v = int(((lo[i] >> lshift) & 0xF) | (((hi[i] >> hshift) & 3) << 4)) - 32;
      t[j * 16 + i] = dd * float(v);
    }
  }
  put(o, t, 256);
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
