// The Gaussian Nadaraya–Watson estimator of kaf.estimators, fused for the CPU.
//
// Built at first use by kaf/_fused.py (a plain shared library loaded with ctypes: no torch
// headers, so it compiles in about a second) and used by kaf.estimators.nadaraya_watson for
// float32/float64 CPU tensors. The eager path in kaf/estimators.py computes the same numbers
// with several passes over an (k, n, m) tensor of weights; here each query's weights live in
// registers only: one pass finds the largest log-weight, one forms the weights and every
// row sum the forward and the gradients need, and the backward recomputes the weights from
// the saved log-normaliser in one more pass. Memory is O(k (n + m)), whatever n and m.
//
// Layout: a (k, n) query indices, b (k, m) reference indices, y (k, m) targets, h (k)
// bandwidths, all contiguous. With scaled gaps d_ij = (b_j - a_i) / (sqrt2 h), weights
// w_ij = exp(-d_ij^2 - L_i) where L_i = log sum_j exp(-d_ij^2) (left-out pairs have weight 0),
// o_i = sum_j w_ij y_j, and (y centred per unit, yc = y - mean y):
//   rows1_i = sum_j w_ij d_ij (yc_j - oc_i)        (the row sum behind d/da)
//   rows0_i = sum_j w_ij d_ij^2 (yc_j - oc_i)      (the row sum behind d/dh)
// The differences b_j - a_i are formed before scaling, so nearby pairs keep their accuracy
// however large the indices (see kaf.estimators._gaussian_weights).

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
#endif
};

// exp(x) for x <= 0, branch-free so that the loops below vectorise: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, a Taylor polynomial of r (error below one ulp of the
// result), and 2^n built in the exponent bits. Underflows to exactly 0 (also for -inf).
inline float exp_nonpos(float x) {
  const float lo_limit = -87.0f;  // below this the result is < 1.7e-38: flushed to 0
  float xc = x < lo_limit ? lo_limit : x;
  float t = xc * 1.44269504088896341f;
  float fn = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  float r = xc - fn * 0.693145751953125f;
  r = r - fn * 1.42860682030941723212e-6f;
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = (int32_t)fn + 127;
  uint32_t bits = (uint32_t)e << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < lo_limit ? 0.0f : p * scale;
}

inline double exp_nonpos(double x) {
  const double lo_limit = -708.0;
  double xc = x < lo_limit ? lo_limit : x;
  double t = xc * 1.4426950408889634074;
  double fn = (t + 6755399441055744.0) - 6755399441055744.0;  // 1.5 * 2^52
  double r = xc - fn * 6.93147180369123816490e-01;
  r = r - fn * 1.90821492927058770002e-10;
  double p = 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t e = (int64_t)fn + 1023;
  uint64_t bits = (uint64_t)e << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < lo_limit ? 0.0 : p * scale;
}

template <typename T>
struct Limits;
template <>
struct Limits<float> {
  // inputs beyond these are left to the overflow-safe float64 path of kaf.estimators
  static constexpr double range = 65536.0;  // sum over units of (max - min) / (sqrt2 h) < 2^16
  static constexpr double target = 281474976710656.0;  // |y| < 2^48
  static constexpr double inv = 1.2676506002282294e30;  // 1/(sqrt2 h) < 2^100
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

// Leave-one-out pairs as lists: for query i, the reference columns ex[start[i] .. start[i+1])
// (ascending) whose id equals query_ids[i]. The loops below run over the segments between
// them, so their inner loops carry no comparison at all; a query with a unique id in a set of
// distinct ids has one such column. Built by sorting the reference ids once per call.
struct Excluded {
  const int64_t* start = nullptr;  // (n + 1), or nullptr: nothing left out
  const int64_t* cols = nullptr;
};

// Apply f(lo, hi) to the column segments of row i that are not left out.
template <typename F>
inline void segments(const Excluded& ex, int64_t i, int64_t m, F f) {
  int64_t lo = 0;
  if (ex.start) {
    for (int64_t e = ex.start[i]; e < ex.start[i + 1]; ++e) {
      int64_t j = ex.cols[e];
      if (j > lo) f(lo, j);
      lo = j + 1;
    }
  }
  if (m > lo) f(lo, m);
}

// The one column row i leaves out (-1: none), or -2 when it leaves out several (then the
// loops run over segments()).
inline int64_t single(const Excluded& ex, int64_t i) {
  if (!ex.start) return -1;
  const int64_t count = ex.start[i + 1] - ex.start[i];
  return count == 0 ? -1 : count == 1 ? ex.cols[ex.start[i]] : -2;
}

#ifdef __AVX512F__
// AVX-512 versions of the two hot float32 loops (forward row sums, backward segment): the
// same arithmetic as the portable loops below, written with intrinsics because the
// compiler's own vectorisation of them spends about a third more instructions (exp's
// scaling by 2^n is one vscalefps here, the column left out a lane mask). Lanes past the
// segment's end, and the column left out, are masked off.
namespace avx512 {

// exp(x) for x <= 0: Cody-Waite reduction and the Taylor polynomial of exp_nonpos(float);
// below -88 (flushed to 0 by the scaling) the input is clamped, so nothing overflows.
inline __m512 exp_nonpos(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.98412698e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888889e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333333e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666667e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666667e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, fn);
}

// the lanes j .. j+15 that lie before hi and are not column jex
inline __mmask16 live(int64_t j, int64_t hi, int64_t jex) {
  const int64_t left = hi - j;
  __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
  if (jex >= j && jex < j + 16) mask &= (__mmask16)~(1u << (jex - j));
  return mask;
}

template <bool AB>
inline void row_sums_unshifted(const float* bc, const float* yc, int64_t lo, int64_t hi, int64_t jex, float ai,
                               float s, float& mx_out, float& S_out, float& Sy_out, float& Sd_out, float& Sd2_out) {
  const __m512 va = _mm512_set1_ps(ai), vs = _mm512_set1_ps(s), zero = _mm512_setzero_ps();
  __m512 S = zero, Sy = zero, Sd = zero, Sd2 = zero, mx = _mm512_set1_ps(mx_out);
  for (int64_t j = lo; j < hi; j += 16) {
    const __mmask16 k = live(j, hi, jex);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, bc + j), va), vs);
    const __m512 l = _mm512_fnmadd_ps(d, d, zero);
    mx = _mm512_mask_max_ps(mx, k, mx, l);
    const __m512 w = _mm512_maskz_mov_ps(k, exp_nonpos(l));
    S = _mm512_add_ps(S, w);
    Sy = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(k, yc + j), Sy);
    if (AB) {
      const __m512 wd = _mm512_mul_ps(w, d);
      Sd = _mm512_add_ps(Sd, wd);
      Sd2 = _mm512_fmadd_ps(wd, d, Sd2);
    }
  }
  mx_out = _mm512_reduce_max_ps(mx);
  S_out += _mm512_reduce_add_ps(S), Sy_out += _mm512_reduce_add_ps(Sy);
  if (AB) Sd_out += _mm512_reduce_add_ps(Sd), Sd2_out += _mm512_reduce_add_ps(Sd2);
}

template <bool B, bool Y>
inline void backward_segment(const float* bc, const float* yc, int64_t lo, int64_t hi, int64_t jex, float ai, float s,
                             float L, float o, float dbar, float d2bar, float gi, float* cb, float* cy, float& r1_out,
                             float& r0_out) {
  const __m512 va = _mm512_set1_ps(ai), vs = _mm512_set1_ps(s), vL = _mm512_set1_ps(L), vo = _mm512_set1_ps(o);
  const __m512 vdbar = _mm512_set1_ps(dbar), vd2bar = _mm512_set1_ps(d2bar), vg = _mm512_set1_ps(gi);
  __m512 r1 = _mm512_setzero_ps(), r0 = r1;
  for (int64_t j = lo; j < hi; j += 16) {
    const __mmask16 k = live(j, hi, jex);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, bc + j), va), vs);
    const __m512 w = _mm512_maskz_mov_ps(k, exp_nonpos(_mm512_fnmsub_ps(d, d, vL)));  // exp(-d^2 - L)
    const __m512 u = _mm512_mul_ps(w, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, yc + j), vo));
    r1 = _mm512_fmadd_ps(u, _mm512_sub_ps(d, vdbar), r1);
    r0 = _mm512_fmadd_ps(u, _mm512_fmsub_ps(d, d, vd2bar), r0);
    if (Y) _mm512_mask_storeu_ps(cy + j, k, _mm512_fmadd_ps(vg, w, _mm512_maskz_loadu_ps(k, cy + j)));
    if (B) _mm512_mask_storeu_ps(cb + j, k, _mm512_fmadd_ps(_mm512_mul_ps(vg, u), d, _mm512_maskz_loadu_ps(k, cb + j)));
  }
  r1_out += _mm512_reduce_add_ps(r1);
  r0_out += _mm512_reduce_add_ps(r0);
}

}  // namespace avx512
#endif

// Sums over one query row: S = sum w, Sy = sum w yc, and with AB (index or bandwidth
// gradients wanted) Sd = sum w d and Sd2 = sum w d^2, from which the backward centres the
// gaps (see backward_segment).
template <typename T>
struct Sums {
  T S = 0, Sy = 0, Sd = 0, Sd2 = 0;
};

template <typename T, bool AB>
inline void row_sums(const T* __restrict bc, const T* __restrict yc, int64_t lo, int64_t hi, int64_t jex, T ai, T s,
                     T mx, Sums<T>& out) {
  T S = 0, Sy = 0, Sd = 0, Sd2 = 0;
#pragma omp simd reduction(+ : S, Sy, Sd, Sd2)
  for (int64_t j = lo; j < hi; ++j) {
    T d = (bc[j] - ai) * s;
    T w = j == jex ? T(0) : exp_nonpos(-d * d - mx);
    S += w;
    Sy += w * yc[j];
    if (AB) {
      T wd = w * d;
      Sd += wd;
      Sd2 += wd * d;
    }
  }
  out.S += S, out.Sy += Sy, out.Sd += Sd, out.Sd2 += Sd2;
}

// The row sums with no shift (the weights e^{-d^2} themselves) and, in the same pass, the
// largest kept log-weight. Valid when that maximum is not far below 0 (see kNoShift).
template <typename T, bool AB>
inline void row_sums_unshifted(const T* __restrict bc, const T* __restrict yc, int64_t lo, int64_t hi, int64_t jex,
                               T ai, T s, T& mx_out, Sums<T>& out) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    avx512::row_sums_unshifted<AB>(bc, yc, lo, hi, jex, ai, s, mx_out, out.S, out.Sy, out.Sd, out.Sd2);
    return;
  }
#endif
  const T ninf = -std::numeric_limits<T>::infinity();
  T S = 0, Sy = 0, Sd = 0, Sd2 = 0, mx = mx_out;
#pragma omp simd reduction(+ : S, Sy, Sd, Sd2) reduction(max : mx)
  for (int64_t j = lo; j < hi; ++j) {
    T d = (bc[j] - ai) * s;
    T l = -d * d;
    T w = j == jex ? T(0) : exp_nonpos(l);
    l = j == jex ? ninf : l;
    mx = l > mx ? l : mx;
    S += w;
    Sy += w * yc[j];
    if (AB) {
      T wd = w * d;
      Sd += wd;
      Sd2 += wd * d;
    }
  }
  mx_out = mx;
  out.S += S, out.Sy += Sy, out.Sd += Sd, out.Sd2 += Sd2;
}

// Softmax weights need a shift only to keep the largest weight from underflowing: when the
// nearest kept reference point has log-weight -d^2 >= kNoShift, the unshifted weights are
// used as they are (one pass instead of two); the weights they flush to zero (e^{-87} and
// less) are then below e^{-57} relative to the largest, beyond float64 precision. A query
// farther from every reference point gets the second pass with the exact maximum.
constexpr double kNoShift = -30.0;

template <typename T, bool AB>
void forward_rows(int64_t lo, int64_t hi, int64_t n, int64_t m, int64_t kn, const T* a, const T* b, const T* ycen,
                  const Excluded& ex, const T* inv, const T* centre, T* out, T* oc, T* lnorm, T* dmean) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t task = lo; task < hi; ++task) {
    const int64_t c = task / n, i = task % n;
    const T* bc = b + c * m;
    const T* yc = ycen + c * m;
    const T ai = a[task], s = inv[c];
    T mx = ninf;
    Sums<T> sums;
    const int64_t jex = single(ex, i);
    // at most one pair left out: loops that skip column jex; else loops over segments
    if (jex >= -1)
      row_sums_unshifted<T, AB>(bc, yc, 0, m, jex, ai, s, mx, sums);
    else
      segments(ex, i, m, [&](int64_t j0, int64_t j1) { row_sums_unshifted<T, AB>(bc, yc, j0, j1, -1, ai, s, mx, sums); });
    T shift = 0;
    if (mx < T(kNoShift)) {  // far from every reference point: again, shifted by the maximum
      shift = mx, sums = Sums<T>();
      if (jex >= -1)
        row_sums<T, AB>(bc, yc, 0, m, jex, ai, s, mx, sums);
      else
        segments(ex, i, m, [&](int64_t j0, int64_t j1) { row_sums<T, AB>(bc, yc, j0, j1, -1, ai, s, mx, sums); });
    }
    const T o = sums.Sy / sums.S;
    oc[task] = o;
    out[task] = o + centre[c];
    lnorm[task] = shift + std::log(sums.S);
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
  if (ex.start) {  // a query that loses every reference point
    for (int64_t i = 0; i < n; ++i)
      if (ex.start[i + 1] - ex.start[i] >= m) {
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

// One segment of a query row in the backward: the weights w_ij = exp(-d_ij^2 - L_i), recomputed,
// give the row sums behind d/da and d/dh and (times the upstream gradient g_i) the columns of
// grad_b (before the factor -2/(sqrt2 h)) and of grad_y. The row sums are
//   r1 = sum_j w (d_j - dbar)(yc_j - o),  r0 = sum_j w (d_j^2 - d2bar)(yc_j - o),
// equal to sum_j w d (yc_j - o) and sum_j w d^2 (yc_j - o) because sum_j w (yc_j - o) = 0; with
// the weighted means dbar, d2bar of the forward subtracted, a query far from the reference
// points (every d large, nearly equal) does not lose its gradient to cancellation.
template <typename T, bool B, bool Y>
inline void backward_segment(const T* __restrict bc, const T* __restrict yc, int64_t lo, int64_t hi, int64_t jex, T ai,
                             T s, T L, T o, T dbar, T d2bar, T gi, T* __restrict cb, T* __restrict cy, T& r1_out,
                             T& r0_out) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    avx512::backward_segment<B, Y>(bc, yc, lo, hi, jex, ai, s, L, o, dbar, d2bar, gi, cb, cy, r1_out, r0_out);
    return;
  }
#endif
  T r1 = 0, r0 = 0;
#pragma omp simd reduction(+ : r1, r0)
  for (int64_t j = lo; j < hi; ++j) {
    T d = (bc[j] - ai) * s;
    T w = j == jex ? T(0) : exp_nonpos(-d * d - L);
    T u = w * (yc[j] - o);
    r1 += u * (d - dbar);
    r0 += u * (d * d - d2bar);
    if (Y) cy[j] += gi * w;
    if (B) cb[j] += gi * u * d;
  }
  r1_out += r1;
  r0_out += r0;
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
      const T dbar = dmean ? dmean[task] : T(0), d2bar = dmean ? dmean[k * n + task] : T(0);
      T r1 = 0, r0 = 0;
      const int64_t jex = single(ex, i);
      T* cbc = cols_needed ? cb + c * m : nullptr;
      T* cyc = cols_needed ? cy + c * m : nullptr;
      auto run = [&](int64_t j0, int64_t j1, int64_t skip) {
        if (grad_b && grad_y)
          backward_segment<T, true, true>(bc, yc, j0, j1, skip, ai, s, L, o, dbar, d2bar, gi, cbc, cyc, r1, r0);
        else if (grad_b)
          backward_segment<T, true, false>(bc, yc, j0, j1, skip, ai, s, L, o, dbar, d2bar, gi, cbc, cyc, r1, r0);
        else if (grad_y)
          backward_segment<T, false, true>(bc, yc, j0, j1, skip, ai, s, L, o, dbar, d2bar, gi, cbc, cyc, r1, r0);
        else
          backward_segment<T, false, false>(bc, yc, j0, j1, skip, ai, s, L, o, dbar, d2bar, gi, cbc, cyc, r1, r0);
      };
      if (jex >= -1)
        run(0, m, jex);
      else
        segments(ex, i, m, [&](int64_t j0, int64_t j1) { run(j0, j1, -1); });
      rows[task] = gi * r1;
      rows[k * n + task] = gi * r0;
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

extern "C" {

int kaf_nw_abi_version() { return 4; }

// Leave-one-out lists (see Excluded): fills start (n + 1) and up to `capacity` entries of cols;
// returns the number of pairs (when it exceeds capacity, call again with that many).
int64_t kaf_nw_excluded(int64_t n, int64_t m, const int64_t* qids, const int64_t* rids, int64_t* start,
                        int64_t* cols, int64_t capacity) {
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
  // each query's matches are one run of keys; both id sets ascending: found by one merge,
  // else by binary search. Their columns come out ascending (a stable sort keeps tied ids
  // in column order), as segments() needs.
  const bool merge = order.empty() && std::is_sorted(qids, qids + n);
  int64_t total = 0, j = 0;
  for (int64_t i = 0; i < n; ++i) {
    start[i] = total;
    if (merge)
      while (j < m && keys[j] < qids[i]) ++j;
    else
      j = std::lower_bound(keys, keys + m, qids[i]) - keys;
    for (int64_t e = j; e < m && keys[e] == qids[i]; ++e, ++total)
      if (total < capacity) cols[total] = order.empty() ? e : order[e];
  }
  start[n] = total;
  return total;
}

#define KAF_NW_EXPORT(T, suffix)                                                                               \
  int kaf_nw_forward_##suffix(int64_t k, int64_t n, int64_t m, const T* a, const T* b, const T* y, const T* h, \
                              const int64_t* ex_start, const int64_t* ex_cols, int same, T* out, T* oc,         \
                              T* lnorm, T* dmean, T* ycen, int threads, int64_t* bad) {                         \
    return forward<T>(k, n, m, a, b, y, h, Excluded{ex_start, ex_cols}, same, out, oc, lnorm, dmean, ycen,      \
                      threads, bad);                                                                             \
  }                                                                                                              \
  void kaf_nw_backward_##suffix(int64_t k, int64_t n, int64_t m, const T* a, const T* b, const T* ycen,         \
                                const T* h, const int64_t* ex_start, const int64_t* ex_cols, const T* oc,       \
                                const T* lnorm, const T* dmean, const T* g, T* grad_a, T* grad_b, T* grad_y,    \
                                T* grad_h, int threads) {                                                        \
    backward<T>(k, n, m, a, b, ycen, h, Excluded{ex_start, ex_cols}, oc, lnorm, dmean, g, grad_a, grad_b,       \
                grad_y, grad_h, threads);                                                                        \
  }

KAF_NW_EXPORT(float, f32)
KAF_NW_EXPORT(double, f64)
}
