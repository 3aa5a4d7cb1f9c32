// The Gaussian Nadaraya–Watson estimator of kaf.estimators, fused for the CPU.
//
// Built at first use by kaf/_fused.py (a plain shared library loaded with ctypes: no torch
// headers, so it compiles in a few seconds) and used by kaf.estimators.nadaraya_watson for
// float32/float64 CPU tensors. The eager path in kaf/estimators.py computes the same numbers
// with several passes over an (k, n, m) tensor of weights; here each query's weights live in
// registers only: one pass forms the weights and every row sum the forward and the
// gradients need (a query far from every reference point gets two more, see kNoShift), and
// the backward recomputes the weights in one more pass. Memory is O(k (n + m)), whatever n
// and m and however many pairs are left out.
//
// Layout: a (k, n) query indices, b (k, m) reference indices, y (k, m) targets, h (k)
// bandwidths, all contiguous. With scaled gaps d_ij = (b_j - a_i) / (sqrt2 h), weights
// w_ij = exp(-d_ij^2 - L_i) where L_i = log sum_j exp(-d_ij^2) (left-out pairs have weight 0),
// o_i = sum_j w_ij y_j, and (y centred per unit, yc = y - mean y):
//   rows1_i = sum_j w_ij d_ij (yc_j - oc_i)        (the row sum behind d/da)
//   rows0_i = sum_j w_ij d_ij^2 (yc_j - oc_i)      (the row sum behind d/dh)
// The differences b_j - a_i are formed before scaling, so nearby pairs keep their accuracy
// however large the indices (see kaf.estimators._gaussian_weights).
//
// The loops are written once, on GCC/Clang vector types as wide as the build's instruction
// set allows (64 bytes with AVX-512, 32 with AVX, else 16: SSE2 on every x86-64, NEON on
// every aarch64), so the compiler never has to discover the vectorisation by itself (for the
// plain loops of earlier versions it did not: the AVX2 build ran them one lane at a time).
// The library is compiled with -ffp-contract=off: the multiply-adds that may round once are
// written out (fmadd), so the forward and the backward form each weight's exponent with the
// same roundings whatever the compiler.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(_M_X64)
#include <immintrin.h>
#define KAF_HAVE_MXCSR 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

// The version of the C interface below (the Args fields and the entry points); kaf/_fused.py
// reads this line from the source and refuses a library that reports another number.
#define KAF_NW_ABI 5

#if defined(__AVX512F__)
#define KAF_VECTOR_BYTES 64
#elif defined(__AVX__)
#define KAF_VECTOR_BYTES 32
#else
#define KAF_VECTOR_BYTES 16
#endif

namespace {

// Products of weights far below the largest one (e^-87 and less) with gaps and targets are
// subnormal numbers, which x86 cores handle tens of times more slowly. Results that would
// be subnormal are flushed to zero inside the kernel (FTZ; subnormal inputs are still read
// as they are). check_tame() sends the inputs where a flushed result could matter (a tiny
// bandwidth or tiny targets) to the overflow-safe path instead. The caller's floating-point
// state is restored on return.
class FlushDenormals {
 public:
#ifdef KAF_HAVE_MXCSR
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8000); }  // FTZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#else
  FlushDenormals() {}  // elsewhere (aarch64: subnormals in hardware) the state is left as it is
#endif
};

// ------------------------------------------------------------------ vectors

template <typename T>
struct Traits;
template <>
struct Traits<float> {
  using I = int32_t;
  static constexpr float lo_limit = -87.0f;  // exp below this is < 1.7e-38: flushed to 0
  static constexpr float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  static constexpr int bias = 127, mantissa = 23;
};
template <>
struct Traits<double> {
  using I = int64_t;
  static constexpr double lo_limit = -708.0;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int bias = 1023, mantissa = 52;
};

// V: W lanes of T; M: lane masks of the same width (all bits set: the lane is live)
template <typename T>
struct Vec {
  static constexpr int W = KAF_VECTOR_BYTES / sizeof(T);
  typedef T V __attribute__((vector_size(KAF_VECTOR_BYTES)));
  typedef typename Traits<T>::I I;
  typedef I M __attribute__((vector_size(KAF_VECTOR_BYTES)));
};
template <typename T>
using V_ = typename Vec<T>::V;
template <typename T>
using M_ = typename Vec<T>::M;

template <typename T>
inline V_<T> splat(T x) {
  return V_<T>{} + x;
}

// a * b + c, rounded once where the instruction set has fused multiply-add
template <typename V>
inline V fmadd(V a, V b, V c) {
#if KAF_VECTOR_BYTES == 64
  if constexpr (sizeof(a[0]) == 4) return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  else return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif KAF_VECTOR_BYTES == 32 && defined(__FMA__)
  if constexpr (sizeof(a[0]) == 4) return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  else return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif defined(__aarch64__)
  if constexpr (sizeof(a[0]) == 4) return (V)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
  else return (V)vfmaq_f64((float64x2_t)c, (float64x2_t)a, (float64x2_t)b);
#else
  return a * b + c;
#endif
}

template <typename T>
inline V_<T> select(M_<T> live, V_<T> a, V_<T> b) {
  return live ? a : b;
}

template <typename T>
inline V_<T> vmax(V_<T> a, V_<T> b) {
  return a > b ? a : b;
}

template <typename T>
inline T hsum(V_<T> v) {
  T s = 0;
  for (int l = 0; l < Vec<T>::W; ++l) s += v[l];
  return s;
}

template <typename T>
inline T hmax(V_<T> v) {
  T s = v[0];
  for (int l = 1; l < Vec<T>::W; ++l) s = v[l] > s ? v[l] : s;
  return s;
}

// exp(x) for x <= 0: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a Taylor polynomial of
// r (error below one ulp of the result), and 2^n built in the exponent bits from the integer
// that the rounding trick leaves in the low mantissa bits. Below lo_limit (also -inf) the
// lane's arithmetic is meaningless (even NaN, at full speed) and its bits are cleared: 0.
inline V_<float> exp_nonpos(V_<float> x) {
  using V = V_<float>;
  using M = M_<float>;
  const M under = x < splat(Traits<float>::lo_limit);
  const V k = fmadd(x, splat(1.44269504088896341f), splat(Traits<float>::magic));
  const V fn = k - Traits<float>::magic;
  V r = fmadd(fn, splat(-0.693145751953125f), x);
  r = fmadd(fn, splat(-1.42860682030941723212e-6f), r);
  V p = splat(1.98412698e-4f);
  p = fmadd(p, r, splat(1.38888889e-3f));
  p = fmadd(p, r, splat(8.33333333e-3f));
  p = fmadd(p, r, splat(4.16666667e-2f));
  p = fmadd(p, r, splat(1.66666667e-1f));
  p = fmadd(p, r, splat(0.5f));
  p = fmadd(p, r, splat(1.0f));
  p = fmadd(p, r, splat(1.0f));
  const M scale = ((M)k + Traits<float>::bias) << Traits<float>::mantissa;
  return (V)(~under & (M)(p * (V)scale));
}

inline V_<double> exp_nonpos(V_<double> x) {
  using V = V_<double>;
  using M = M_<double>;
  const M under = x < splat(Traits<double>::lo_limit);
  const V k = fmadd(x, splat(1.4426950408889634074), splat(Traits<double>::magic));
  const V fn = k - Traits<double>::magic;
  V r = fmadd(fn, splat(-6.93147180369123816490e-01), x);
  r = fmadd(fn, splat(-1.90821492927058770002e-10), r);
  V p = splat(1.0 / 479001600.0);  // 1/12!
  for (double c : {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                   1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0})
    p = fmadd(p, r, splat(c));
  const M scale = ((M)k + (int64_t)Traits<double>::bias) << Traits<double>::mantissa;
  return (V)(~under & (M)(p * (V)scale));
}

// The lanes of one step of sweep(): j the first column, count the columns it covers (W but in
// the last, partial step), live the lanes that count (meaningful only with Masked).
template <typename T, bool Tail, bool Masked>
struct Step {
  int64_t j;
  int count;
  M_<T> live;

  V_<T> load(const T* p) const {  // the partial step reads a zero-padded copy: nothing past the end
    V_<T> v{};
    std::memcpy(&v, p + j, (Tail ? count : Vec<T>::W) * sizeof(T));
    return v;
  }
  void store(T* p, V_<T> v) const { std::memcpy(p + j, &v, (Tail ? count : Vec<T>::W) * sizeof(T)); }
  V_<T> keep(V_<T> v) const { return Masked ? (V_<T>)(live & (M_<T>)v) : v; }  // 0 in dead lanes
  V_<T> keep(V_<T> v, T dead) const { return Masked ? select<T>(live, v, splat(dead)) : v; }
};

// body(step) over the columns [lo, hi) one vector at a time, column jex (if inside) left out:
// the step holding it and the last, partial one are masked, every other step is plain.
template <typename T, typename F>
inline void sweep(int64_t lo, int64_t hi, int64_t jex, F body) {
  using M = M_<T>;
  using I = typename Vec<T>::I;
  constexpr int W = Vec<T>::W;
  M iota;
  for (int l = 0; l < W; ++l) iota[l] = (I)l;
  int64_t j = lo;
  if (jex >= lo && jex < hi) {  // plain steps up to the one holding jex, which is masked
    const int64_t stop = jex - (jex - lo) % W;
    for (; j < stop; j += W) body(Step<T, false, false>{j, W, M{}});
    if (j + W <= hi) {
      body(Step<T, false, true>{j, W, (M)(iota != (M{} + (I)(jex - j)))});
      j += W;
    }
  }
  for (; j + W <= hi; j += W) body(Step<T, false, false>{j, W, M{}});
  if (j < hi) {
    M live = iota < (M{} + (I)(hi - j));
    if ((uint64_t)(jex - j) < (uint64_t)W) live &= iota != (M{} + (I)(jex - j));
    body(Step<T, true, true>{j, (int)(hi - j), live});
  }
}

template <typename T>
struct Limits;
template <>
struct Limits<float> {
  // inputs beyond these are left to the overflow-safe float64 path of kaf.estimators
  static constexpr double range = 65536.0;  // sum over units of (max - min) / (sqrt2 h) < 2^16
  static constexpr double target = 281474976710656.0;  // |y| < 2^48
  // 1/(sqrt2 h) < 2^60: the bandwidth gradient forms squared scaled gaps, and 1/(2 h^2) must
  // stay finite in float32 (at 2^64 it is inf, and a zero gap times it is NaN)
  static constexpr double inv = 1152921504606846976.0;
  static constexpr double tiny = 8.673617379884035e-19;  // max |y| >= 2^-60 (or all 0)
};
template <>
struct Limits<double> {
  static constexpr double range = 3.402823669209385e38;  // 2^128
  static constexpr double target = 3.940200619639448e115;  // 2^384
  static constexpr double inv = 6.668014432879854e270;  // 2^900
  static constexpr double tiny = 1.499696813895631e-271;  // 2^-900
};

// Run work(lo, hi, t) over [0, total) on up to `threads` threads (t: 0, 1, ... one per thread).
// With OpenMP this is the OpenMP runtime torch itself runs on (kaf/_fused.py loads the library
// after torch, so the one libgomp already in the process serves both): the kernel's threads
// are torch's own, instead of threads that compete with torch's spinning workers.
template <typename F>
void parallel(int64_t total, int threads, F work) {
  if (threads <= 1 || total <= 1) {
    FlushDenormals guard;
    work(0, total, 0);
    return;
  }
  threads = (int)std::min<int64_t>(threads, total);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals guard;
    const int64_t team = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t step = (total + team - 1) / team, lo = std::min(total, t * step), hi = std::min(total, lo + step);
    if (lo < hi) work(lo, hi, (int)t);
  }
#else
  auto body = [&work](int64_t lo, int64_t hi, int t) {
    FlushDenormals guard;
    work(lo, hi, t);
  };
  std::vector<std::thread> pool;
  int64_t step = (total + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    int64_t lo = t * step, hi = std::min(total, lo + step);
    if (lo < hi) pool.emplace_back(body, lo, hi, t);
  }
  body(0, std::min(total, step), 0);
  for (auto& th : pool) th.join();
#endif
}

// Threads only pay off above this many (query, reference, unit) entries.
constexpr int64_t kParallelMin = int64_t(1) << 17;

inline int use_threads(int64_t work, int threads) { return work >= kParallelMin ? threads : 1; }

// 0: tame; 1: a non-finite value, h <= 0, indices/targets large enough for the sums below to
// overflow, or a bandwidth/targets small enough for flushed subnormal results to matter (the
// caller takes its overflow-safe path).
template <typename T>
int check_tame(int64_t k, int64_t n, int64_t m, const T* a, const T* b, const T* y, const T* h, bool same) {
  double total = 0.0;
  for (int64_t c = 0; c < k; ++c) {
    double hc = (double)h[c];
    if (!(hc > 0.0) || !std::isfinite(hc) || !(1.0 / (std::sqrt(2.0) * hc) < Limits<T>::inv)) return 1;
    T lo = std::numeric_limits<T>::infinity(), hi = -lo;
    bool finite = true;
    const T* ac = a + c * n;
    const T* bc = b + c * m;
    const T* yc = y + c * m;
    T ymax = 0;
    if (!same) {
      for (int64_t i = 0; i < n; ++i) {
        T v = ac[i];
        finite &= std::isfinite(v);
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      T v = bc[j], t = yc[j];
      finite &= std::isfinite(v) & std::isfinite(t);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      ymax = std::max(ymax, std::fabs(t));
    }
    if (!finite || !((double)ymax < Limits<T>::target) || (ymax != 0 && (double)ymax < Limits<T>::tiny)) return 1;
    total += ((double)hi - (double)lo) / (std::sqrt(2.0) * hc);
  }
  return total < Limits<T>::range ? 0 : 1;
}

// Leave-one-out pairs as runs of columns: query i leaves out the columns [runs[2r], runs[2r+1])
// for r in [index[2i], index[2i+1]) (ascending, disjoint), those whose id equals its own.
// Queries with one id share one list of runs, so the lists take O(n + m) memory however many
// pairs are left out. The loops below run over the segments between the runs, so their inner
// loops carry no comparison at all; a query with a unique id in a set of distinct ids leaves
// out one column, which sweep() masks instead of splitting the row.
struct Excluded {
  const int64_t* index = nullptr;  // (n, 2), or nullptr: nothing left out
  const int64_t* runs = nullptr;   // (R, 2)
};

// The one column row i leaves out (-1: none), or -2 when it leaves out more (then the loops
// run over segments()).
inline int64_t single(const Excluded& ex, int64_t i) {
  if (!ex.index) return -1;
  const int64_t r0 = ex.index[2 * i], r1 = ex.index[2 * i + 1];
  if (r1 == r0) return -1;
  return r1 - r0 == 1 && ex.runs[2 * r0 + 1] - ex.runs[2 * r0] == 1 ? ex.runs[2 * r0] : -2;
}

// f(lo, hi, jex) over the pieces of row i to sweep: the whole row with the one column left
// out, or the segments between the runs left out.
template <typename F>
inline void pieces(const Excluded& ex, int64_t i, int64_t m, F f) {
  const int64_t jex = single(ex, i);
  if (jex >= -1) {
    f(int64_t(0), m, jex);
    return;
  }
  int64_t lo = 0;
  for (int64_t r = ex.index[2 * i]; r < ex.index[2 * i + 1]; ++r) {
    if (ex.runs[2 * r] > lo) f(lo, ex.runs[2 * r], int64_t(-1));
    lo = ex.runs[2 * r + 1];
  }
  if (m > lo) f(lo, m, int64_t(-1));
}

// the number of columns row i keeps
inline int64_t kept(const Excluded& ex, int64_t i, int64_t m) {
  if (!ex.index) return m;
  for (int64_t r = ex.index[2 * i]; r < ex.index[2 * i + 1]; ++r) m -= ex.runs[2 * r + 1] - ex.runs[2 * r];
  return m;
}

// Fills index (n, 2) and runs (at most m runs: capacity 2m); returns the number of runs.
int64_t build_excluded(int64_t n, int64_t m, const int64_t* qids, const int64_t* rids, int64_t* index,
                       int64_t* runs) {
  // the reference ids in ascending order (often they already are: calc sets, batches that are
  // their own reference set after a sort); ties keep their column order
  const int64_t* keys = rids;
  std::vector<int64_t> order, sorted;
  if (!std::is_sorted(rids, rids + m)) {
    order.resize(m);
    for (int64_t j = 0; j < m; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(), [rids](int64_t x, int64_t y) { return rids[x] < rids[y]; });
    sorted.resize(m);
    for (int64_t j = 0; j < m; ++j) sorted[j] = rids[order[j]];
    keys = sorted.data();
  }
  // each id's columns, ascending (a stable sort keeps tied ids in column order), as runs of
  // consecutive columns; first[e], last[e]: the runs of the id whose columns start at keys[e]
  std::vector<int64_t> first(m), last(m);
  int64_t total = 0;
  for (int64_t e0 = 0, e1; e0 < m; e0 = e1) {
    first[e0] = total;
    for (e1 = e0; e1 < m && keys[e1] == keys[e0]; ++e1) {
      const int64_t col = order.empty() ? e1 : order[e1];
      if (e1 > e0 && runs[2 * total - 1] == col)
        runs[2 * total - 1] = col + 1;
      else
        runs[2 * total] = col, runs[2 * total + 1] = col + 1, ++total;
    }
    last[e0] = total;
  }
  // each query's id among the keys: by one merge when both id sets ascend, else by binary search
  const bool merge = order.empty() && std::is_sorted(qids, qids + n);
  int64_t e = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (merge)
      while (e < m && keys[e] < qids[i]) ++e;
    else
      e = std::lower_bound(keys, keys + m, qids[i]) - keys;
    const bool found = e < m && keys[e] == qids[i];
    index[2 * i] = found ? first[e] : 0;
    index[2 * i + 1] = found ? last[e] : 0;
  }
  return total;
}

// Sums over one query row: S = sum w, Sy = sum w yc, and with AB (index or bandwidth
// gradients wanted) Sd = sum w d and Sd2 = sum w d^2, from which the backward centres the
// gaps (see backward_piece).
template <typename T>
struct Sums {
  T S = 0, Sy = 0, Sd = 0, Sd2 = 0;
};

// A weight's exponent, -d^2 - shift, always with these two roundings (-d^2 first, as the
// eager path and the maximum have it, then the shift; with shift 0 the second is exact): the
// forward's passes and the backward form the same numbers, and the largest gives exactly 0.
template <typename V>
inline V exponent(V d, V shift) {
  return fmadd(-d, d, V{}) - shift;
}

// The row sums of one piece of a row, weights e^{-d^2 - shift}.
template <typename T, bool AB>
inline void row_sums(const T* bc, const T* yc, int64_t lo, int64_t hi, int64_t jex, T ai, T s, T shift,
                     Sums<T>& out) {
  using V = V_<T>;
  const V va = splat(ai), vs = splat(s), vshift = splat(shift);
  V S{}, Sy{}, Sd{}, Sd2{};
  sweep<T>(lo, hi, jex, [&](auto step) {
    const V d = (step.load(bc) - va) * vs;
    const V w = step.keep(exp_nonpos(exponent(d, vshift)));
    S += w;
    Sy = fmadd(w, step.load(yc), Sy);
    if constexpr (AB) {
      const V wd = w * d;
      Sd += wd;
      Sd2 = fmadd(wd, d, Sd2);
    }
  });
  out.S += hsum<T>(S), out.Sy += hsum<T>(Sy);
  if constexpr (AB) out.Sd += hsum<T>(Sd), out.Sd2 += hsum<T>(Sd2);
}

// the largest kept log-weight -d^2 of one piece of a row (the backward's far rows)
template <typename T>
inline T row_max(const T* bc, int64_t lo, int64_t hi, int64_t jex, T ai, T s, T mx) {
  using V = V_<T>;
  const V va = splat(ai), vs = splat(s);
  V vmx = splat(mx);
  sweep<T>(lo, hi, jex, [&](auto step) {
    const V d = (step.load(bc) - va) * vs;
    vmx = vmax<T>(vmx, step.keep(exponent(d, V{}), -std::numeric_limits<T>::infinity()));
  });
  return hmax<T>(vmx);
}

// Softmax weights need a shift only to keep the largest weight from underflowing: when a
// row's unshifted weights sum to at least e^kNoShift, they are used as they are (one pass);
// the weights they flush to zero (e^{-87} and less) are then below e^{-57} of the sum, beyond
// float64 precision. A row whose sum is smaller (a query far from every reference point) is
// summed again, shifted by its largest log-weight (shifted_sums), and its stored
// log-normaliser is kept below kNoShift: the backward tells the two kinds of row apart by it
// alone, and forms a far row's shift and sums again with the same function.
constexpr double kNoShift = -30.0;

// a far row's shift (its largest kept -d^2) and its row sums shifted by it
template <typename T, bool AB>
inline T shifted_sums(const Excluded& ex, int64_t i, int64_t m, const T* bc, const T* yc, T ai, T s, Sums<T>& sums) {
  T mx = -std::numeric_limits<T>::infinity();
  pieces(ex, i, m, [&](int64_t j0, int64_t j1, int64_t jex) { mx = row_max<T>(bc, j0, j1, jex, ai, s, mx); });
  sums = Sums<T>();
  pieces(ex, i, m, [&](int64_t j0, int64_t j1, int64_t jex) { row_sums<T, AB>(bc, yc, j0, j1, jex, ai, s, mx, sums); });
  return mx;
}

template <typename T, bool AB>
void forward_rows(int64_t lo, int64_t hi, int64_t n, int64_t m, int64_t kn, const T* a, const T* b, const T* ycen,
                  const Excluded& ex, const T* inv, const T* centre, T* out, T* oc, T* lnorm, T* dmean) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t task = lo; task < hi; ++task) {
    const int64_t c = task / n, i = task % n;
    const T* bc = b + c * m;
    const T* yc = ycen + c * m;
    const T ai = a[task], s = inv[c];
    Sums<T> sums;
    pieces(ex, i, m, [&](int64_t j0, int64_t j1, int64_t jex) {
      row_sums<T, AB>(bc, yc, j0, j1, jex, ai, s, T(0), sums);
    });
    T L = std::log(sums.S);
    if (!(L >= T(kNoShift))) {  // far from every reference point: again, shifted by the maximum
      const T mx = shifted_sums<T, AB>(ex, i, m, bc, yc, ai, s, sums);
      L = std::min(mx + std::log(sums.S), std::nextafter(T(kNoShift), ninf));
    }
    const T o = sums.Sy / sums.S;
    oc[task] = o;
    out[task] = o + centre[c];
    lnorm[task] = L;
    if (AB) {  // the weighted means of d and of d^2, (2, k, n)
      dmean[task] = sums.Sd / sums.S;
      dmean[kn + task] = sums.Sd2 / sums.S;
    }
  }
}

template <typename T>
int forward(int64_t k, int64_t n, int64_t m, const T* a, const T* b, const T* y, const T* h, Excluded ex, int same,
            T* out, T* oc, T* lnorm, T* dmean, T* ycen, int threads, int64_t* bad) {
  if (check_tame(k, n, m, a, b, y, h, same != 0)) return 1;
  if (ex.index) {  // a query that loses every reference point
    for (int64_t i = 0; i < n; ++i)
      if (kept(ex, i, m) <= 0) {
        *bad = i;
        return 2;
      }
  }
  std::vector<T> centre(k), inv(k);
  for (int64_t c = 0; c < k; ++c) {
    double s = 0.0;
    for (int64_t j = 0; j < m; ++j) s += (double)y[c * m + j];
    centre[c] = (T)(s / (double)m);
    for (int64_t j = 0; j < m; ++j) ycen[c * m + j] = y[c * m + j] - centre[c];
    inv[c] = (T)(1.0 / (std::sqrt(2.0) * (double)h[c]));
  }
  parallel(k * n, use_threads(k * n * m, threads), [&](int64_t lo, int64_t hi, int) {
    if (dmean)
      forward_rows<T, true>(lo, hi, n, m, k * n, a, b, ycen, ex, inv.data(), centre.data(), out, oc, lnorm, dmean);
    else
      forward_rows<T, false>(lo, hi, n, m, k * n, a, b, ycen, ex, inv.data(), centre.data(), out, oc, lnorm, dmean);
  });
  return 0;
}

// One piece of a query row in the backward: the weights e^{-d^2 - shift}, recomputed as the
// forward formed them (scale times them is w_ij), give the row sums behind d/da and d/dh and
// (times gs = g_i scale) the columns of grad_b (before the factor -2/(sqrt2 h)) and of grad_y.
// The row sums are
//   r1 = sum_j w (d_j - dbar)(yc_j - o),  r0 = sum_j w (d_j^2 - d2bar)(yc_j - o),
// equal to sum_j w d (yc_j - o) and sum_j w d^2 (yc_j - o) because sum_j w (yc_j - o) = 0; with
// the weighted means dbar, d2bar of the forward subtracted, a query far from the reference
// points (every d large, nearly equal) does not lose its gradient to cancellation.
template <typename T, bool B, bool Y>
inline void backward_piece(const T* bc, const T* yc, int64_t lo, int64_t hi, int64_t jex, T ai, T s, T shift, T o,
                           T dbar, T d2bar, T gs, T* cb, T* cy, T& r1_out, T& r0_out) {
  using V = V_<T>;
  const V va = splat(ai), vs = splat(s), vshift = splat(shift), vo = splat(o), vdbar = splat(dbar), vd2bar = splat(-d2bar), vg = splat(gs);
  V r1{}, r0{};
  sweep<T>(lo, hi, jex, [&](auto step) {
    const V d = (step.load(bc) - va) * vs;
    const V w = step.keep(exp_nonpos(exponent(d, vshift)));
    const V u = w * (step.load(yc) - vo);
    r1 = fmadd(u, d - vdbar, r1);
    r0 = fmadd(u, fmadd(d, d, vd2bar), r0);
    if constexpr (Y) step.store(cy, fmadd(vg, w, step.load(cy)));
    if constexpr (B) step.store(cb, fmadd(vg * u, d, step.load(cb)));
  });
  r1_out += hsum<T>(r1);
  r0_out += hsum<T>(r0);
}

template <typename T>
void backward(int64_t k, int64_t n, int64_t m, const T* a, const T* b, const T* ycen, const T* h, Excluded ex,
              const T* oc, const T* lnorm, const T* dmean, const T* g, T* grad_a, T* grad_b, T* grad_y, T* grad_h,
              int threads) {
  std::vector<T> inv(k);
  for (int64_t c = 0; c < k; ++c) inv[c] = (T)(1.0 / (std::sqrt(2.0) * (double)h[c]));
  const bool cols_needed = grad_b || grad_y;
  const int nt = std::max(1, use_threads(k * n * m, threads));
  // per thread: columns of grad_b and grad_y; per query: g_i times the two row sums
  std::vector<T> cols(cols_needed ? (size_t)nt * 2 * k * m : 0, T(0));
  std::vector<T> rows((size_t)2 * k * n, T(0));
  parallel(k * n, nt, [&](int64_t lo, int64_t hi, int t) {
    T* cb = cols_needed ? cols.data() + (size_t)t * 2 * k * m : nullptr;
    T* cy = cols_needed ? cb + k * m : nullptr;
    for (int64_t task = lo; task < hi; ++task) {
      const T gi = g[task];
      if (gi == T(0)) continue;  // the row adds nothing to any gradient
      const int64_t c = task / n, i = task % n;
      const T* bc = b + c * m;
      const T* yc = ycen + c * m;
      const T ai = a[task], s = inv[c], L = lnorm[task], o = oc[task];
      // The forward's weights: e^{-d^2} / e^L for a row it did not shift. For a row it shifted,
      // L (about -d^2 of the nearest point) holds too few digits to rebuild them (at
      // d^2 = 4e9 its last float32 digit is 256), so its shift and normaliser are formed
      // again, by the forward's own loops.
      T shift = 0, scale;
      if (L >= T(kNoShift)) {
        scale = (T)std::exp(-(double)L);
      } else {
        Sums<T> sums;
        shift = shifted_sums<T, false>(ex, i, m, bc, yc, ai, s, sums);
        scale = T(1) / sums.S;
      }
      const T gs = gi * scale;
      const T dbar = dmean ? dmean[task] : T(0), d2bar = dmean ? dmean[k * n + task] : T(0);
      T r1 = 0, r0 = 0;
      T* cbc = cols_needed ? cb + c * m : nullptr;
      T* cyc = cols_needed ? cy + c * m : nullptr;
      pieces(ex, i, m, [&](int64_t j0, int64_t j1, int64_t jex) {
        if (grad_b && grad_y)
          backward_piece<T, true, true>(bc, yc, j0, j1, jex, ai, s, shift, o, dbar, d2bar, gs, cbc, cyc, r1, r0);
        else if (grad_b)
          backward_piece<T, true, false>(bc, yc, j0, j1, jex, ai, s, shift, o, dbar, d2bar, gs, cbc, cyc, r1, r0);
        else if (grad_y)
          backward_piece<T, false, true>(bc, yc, j0, j1, jex, ai, s, shift, o, dbar, d2bar, gs, cbc, cyc, r1, r0);
        else
          backward_piece<T, false, false>(bc, yc, j0, j1, jex, ai, s, shift, o, dbar, d2bar, gs, cbc, cyc, r1, r0);
      });
      rows[task] = gs * r1;
      rows[k * n + task] = gs * r0;
    }
  });
  if (grad_a)
    for (int64_t task = 0; task < k * n; ++task) grad_a[task] = 2 * inv[task / n] * rows[task];
  if (grad_h)
    for (int64_t c = 0; c < k; ++c) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += (double)rows[k * n + c * n + i];
      grad_h[c] = (T)(2.0 * s / (double)h[c]);
    }
  if (!cols_needed) return;
  for (int64_t c = 0; c < k; ++c) {
    const T f = -2 * inv[c];
    for (int64_t j = 0; j < m; ++j) {
      T sb = 0, sy = 0;
      for (int t = 0; t < nt; ++t) {
        sb += cols[(size_t)t * 2 * k * m + c * m + j];
        sy += cols[(size_t)t * 2 * k * m + k * m + c * m + j];
      }
      if (grad_b) grad_b[c * m + j] = f * sb;
      if (grad_y) grad_y[c * m + j] = sy;
    }
  }
}

}  // namespace

// ------------------------------------------------------------------ the C interface
//
// Every entry point takes one Args by pointer. Its fields are listed once, here: the struct
// is built from this list, and so is the text kaf_nw_args() returns, from which kaf/_fused.py
// builds its ctypes.Structure (a field added or moved here reaches Python by itself).
// Pointers to floating-point data point to float (dtype 0) or double (dtype 1).
#define KAF_NW_ARGS(X)                                                                                      \
  X(int64_t, k) X(int64_t, n) X(int64_t, m) X(int32_t, dtype) X(int32_t, same) X(int32_t, threads)          \
  X(const void*, a) X(const void*, b) X(const void*, y) X(const void*, h) X(const int64_t*, query_ids)      \
  X(const int64_t*, ref_ids) X(int64_t*, ex_index) X(int64_t*, ex_runs) X(void*, out) X(void*, oc)          \
  X(void*, lnorm) X(void*, dmean) X(void*, ycen) X(const void*, g) X(void*, grad_a) X(void*, grad_b)        \
  X(void*, grad_y) X(void*, grad_h) X(int64_t, bad)

#define KAF_NW_FIELD(type, name) type name;
#define KAF_NW_TEXT(type, name) #type " " #name ";"
struct KafNwArgs {
  KAF_NW_ARGS(KAF_NW_FIELD)
};

namespace {

template <typename T>
int64_t forward_call(KafNwArgs* p) {
  return forward<T>(p->k, p->n, p->m, (const T*)p->a, (const T*)p->b, (const T*)p->y, (const T*)p->h,
                    Excluded{p->ex_index, p->ex_runs}, p->same, (T*)p->out, (T*)p->oc, (T*)p->lnorm, (T*)p->dmean,
                    (T*)p->ycen, p->threads, &p->bad);
}

template <typename T>
int64_t backward_call(KafNwArgs* p) {
  backward<T>(p->k, p->n, p->m, (const T*)p->a, (const T*)p->b, (const T*)p->ycen, (const T*)p->h,
              Excluded{p->ex_index, p->ex_runs}, (const T*)p->oc, (const T*)p->lnorm, (const T*)p->dmean,
              (const T*)p->g, (T*)p->grad_a, (T*)p->grad_b, (T*)p->grad_y, (T*)p->grad_h, p->threads);
  return 0;
}

}  // namespace

extern "C" {

int kaf_nw_abi_version() { return KAF_NW_ABI; }

const char* kaf_nw_args() { return KAF_NW_ARGS(KAF_NW_TEXT); }

// the instruction set the loops were compiled for, and their vector width
const char* kaf_nw_isa() {
#if defined(__AVX512F__)
  return "avx512f, 64-byte vectors";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma, 32-byte vectors";
#elif defined(__AVX__)
  return "avx, 32-byte vectors";
#elif defined(__aarch64__)
  return "neon, 16-byte vectors";
#elif defined(__SSE2__)
  return "sse2, 16-byte vectors";
#else
  return "generic, 16-byte vectors";
#endif
}

// Leave-one-out runs (see Excluded) from query_ids (n) and ref_ids (m) into ex_index (n, 2)
// and ex_runs (room for m runs); returns the number of runs.
int64_t kaf_nw_excluded(KafNwArgs* p) {
  return build_excluded(p->n, p->m, p->query_ids, p->ref_ids, p->ex_index, p->ex_runs);
}

// 0: done; 1: input outside the kernel's range (nothing computed); 2: query p->bad keeps no
// reference point
int64_t kaf_nw_forward(KafNwArgs* p) { return p->dtype == 0 ? forward_call<float>(p) : forward_call<double>(p); }

int64_t kaf_nw_backward(KafNwArgs* p) { return p->dtype == 0 ? backward_call<float>(p) : backward_call<double>(p); }
}
