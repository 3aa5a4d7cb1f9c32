// The fused kernel (kaf/_nw_cpu.cpp, included whole) against the closed forms of the Gaussian
// Nadaraya-Watson estimator and its gradients, computed in long double one query at a time,
// without Python: tests/test_fused.py builds it for aarch64 and runs it under qemu-user, so the
// NEON loops are run, not only compiled. Duplicated ids (several columns left out per query)
// and a query 40 bandwidths from every reference point are included. Exit status 0: every
// value and gradient within tolerance; 1: the largest difference is printed.
#include KAF_NW_SOURCE

#include <cstdio>
#include <random>

template <typename T>
int check(const char* name, double tol) {
  const int64_t k = 2, n = 9, m = 37;
  std::mt19937 gen(7);
  std::normal_distribution<double> normal;
  std::vector<T> a(k * n), b(k * m), y(k * m), h = {T(0.4), T(0.9)}, g(k * n);
  for (auto& v : a) v = (T)normal(gen);
  for (auto& v : b) v = (T)(1.5 * normal(gen));
  for (auto& v : y) v = (T)normal(gen);
  for (auto& v : g) v = (T)normal(gen);
  a[3] = 40 * h[0];  // far from every reference point
  std::vector<int64_t> qid(n), rid(m), index(2 * n), runs(2 * m);
  for (int64_t i = 0; i < n; ++i) qid[i] = i % 4;
  for (int64_t j = 0; j < m; ++j) rid[j] = j % 5;
  std::vector<T> out(k * n), oc(k * n), lnorm(k * n), dmean(2 * k * n), ycen(k * m);
  std::vector<T> ga(k * n), gb(k * m), gy(k * m), gh(k);
  KafNwArgs p{};
  p.k = k, p.n = n, p.m = m, p.dtype = sizeof(T) == 4 ? 0 : 1, p.threads = 1;
  p.a = a.data(), p.b = b.data(), p.y = y.data(), p.h = h.data(), p.g = g.data();
  p.query_ids = qid.data(), p.ref_ids = rid.data(), p.ex_index = index.data(), p.ex_runs = runs.data();
  p.out = out.data(), p.oc = oc.data(), p.lnorm = lnorm.data(), p.dmean = dmean.data(), p.ycen = ycen.data();
  p.grad_a = ga.data(), p.grad_b = gb.data(), p.grad_y = gy.data(), p.grad_h = gh.data();
  kaf_nw_excluded(&p);
  if (kaf_nw_forward(&p) != 0) return std::printf("%s: the forward declined\n", name), 1;
  kaf_nw_backward(&p);

  typedef long double R;
  std::vector<R> eo(k * n), ea(k * n, 0), eb(k * m, 0), ey(k * m, 0), eh(k, 0);
  for (int64_t c = 0; c < k; ++c)
    for (int64_t i = 0; i < n; ++i) {
      const R inv = 1 / (std::sqrt((R)2) * (R)h[c]);
      std::vector<R> d(m), w(m, 0);
      R top = -INFINITY, total = 0, o = 0;
      for (int64_t j = 0; j < m; ++j) {
        d[j] = ((R)b[c * m + j] - (R)a[c * n + i]) * inv;
        if (qid[i] != rid[j]) top = std::max(top, -d[j] * d[j]);
      }
      for (int64_t j = 0; j < m; ++j)
        if (qid[i] != rid[j]) total += w[j] = std::exp(-d[j] * d[j] - top);
      for (int64_t j = 0; j < m; ++j) o += (w[j] /= total) * (R)y[c * m + j];
      eo[c * n + i] = o;
      const R gi = g[c * n + i];
      for (int64_t j = 0; j < m; ++j) {
        const R u = w[j] * ((R)y[c * m + j] - o);
        ea[c * n + i] += gi * 2 * inv * u * d[j];
        eb[c * m + j] -= gi * 2 * inv * u * d[j];
        ey[c * m + j] += gi * w[j];
        eh[c] += gi * 2 / (R)h[c] * u * d[j] * d[j];
      }
    }
  double worst = 0;
  auto compare = [&](const char* what, const std::vector<T>& got, const std::vector<R>& want) {
    double scale = 1;
    for (R v : want) scale = std::max(scale, (double)std::fabs(v));
    for (size_t e = 0; e < got.size(); ++e) {
      const double diff = std::fabs((double)got[e] - (double)want[e]) / scale;
      if (!(diff <= worst)) worst = diff;
      if (!(diff <= tol)) {
        std::printf("%s %s[%zu]: %.9g, expected %.9g\n", name, what, e, (double)got[e], (double)want[e]);
        return false;
      }
    }
    return true;
  };
  const bool ok = compare("out", out, eo) & compare("grad_a", ga, ea) & compare("grad_b", gb, eb) &
                  compare("grad_y", gy, ey) & compare("grad_h", gh, eh);
  std::printf("%s (%s): largest difference %.2e of the largest value (tolerance %.0e)\n", name, kaf_nw_isa(), worst,
              tol);
  return ok ? 0 : 1;
}

// float32: the far query's log-weights, -d^2 near -800, hold about 3e-5 in float32
int main() { return check<float>("float32", 1e-4) | check<double>("float64", 1e-11); }
