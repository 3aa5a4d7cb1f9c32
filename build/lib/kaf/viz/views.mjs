// Browser-side computation of the book's interactive views (kaf.viz.views).
//
// Python ships the data in Bokeh ColumnDataSources, computes every view's initial state
// with kaf itself, and attaches this module, as one Bokeh CustomJS callback, to every
// control of a view. On each move the callback recomputes what the figures and the
// read-outs show, in the reader's browser: no kernel, no precomputed frames.
//
// The formulas mirror kaf.estimators.nadaraya_watson (leave-one-out by identity; the
// Gaussian kernel as a softmax in log space, so a query far from every reference point
// gets the nearest one's target; compact kernels falling back to the nearest reference
// point when none lies in the window), kaf.estimators.kernel_density and
// kaf.nn.FluidReLU. tests/test_browser.py holds the numbers computed here against those
// functions at several settings, in a real browser.
//
// Read-outs carry their numbers at full precision in a data-values attribute (JSON),
// beside the rounded text a reader sees.

// ------------------------------------------------------------------ kernels

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

function compactKernel(kernel, u) {
  const a = Math.abs(u);
  if (a > 1) return 0;
  if (kernel === "epanechnikov") return 0.75 * (1 - u * u);
  if (kernel === "triangular") return 1 - a;
  return 0.5; // uniform
}

/**
 * Nadaraya–Watson estimate at zq from the reference pairs (zc[j], yc[j]), j < m,
 * leaving out reference `skip` (-1: none). `scratch` is a Float64Array of length >= m.
 */
export function nwAt(zq, zc, yc, m, skip, h, kernel, scratch) {
  if (kernel === "gaussian") {
    let top = -Infinity;
    for (let j = 0; j < m; j++) {
      if (j === skip) continue;
      const u = (zc[j] - zq) / h;
      const l = -0.5 * u * u;
      scratch[j] = l;
      if (l > top) top = l;
    }
    let num = 0;
    let den = 0;
    for (let j = 0; j < m; j++) {
      if (j === skip) continue;
      const w = Math.exp(scratch[j] - top);
      num += w * yc[j];
      den += w;
    }
    return num / den;
  }
  let num = 0;
  let den = 0;
  let nearest = Infinity;
  let yNearest = NaN;
  for (let j = 0; j < m; j++) {
    if (j === skip) continue;
    const d = zc[j] - zq;
    const k = compactKernel(kernel, d / h);
    num += k * yc[j];
    den += k;
    const ad = Math.abs(d);
    if (ad < nearest) {
      nearest = ad;
      yNearest = yc[j];
    }
  }
  return den > 0 ? num / den : yNearest;
}

/** Kernel density estimate (1/(m h)) sum_j K((zq - zc[j]) / h), K a density. */
export function densityAt(zq, zc, m, h, kernel) {
  let s = 0;
  for (let j = 0; j < m; j++) {
    const u = (zq - zc[j]) / h;
    s += kernel === "gaussian" ? Math.exp(-0.5 * u * u) * INV_SQRT_2PI : compactKernel(kernel, u);
  }
  return s / (m * h);
}

/**
 * A calc set: the first m entries of the permutation `order` of the n points.
 * rank[i] is the position of point i in `order`, so point i is a calc point iff
 * rank[i] < m, and then it is left out of its own estimate.
 */
function calcSet(z, y, order, m) {
  const zc = new Float64Array(m);
  const yc = new Float64Array(m);
  for (let j = 0; j < m; j++) {
    zc[j] = z[order[j]];
    yc[j] = y[order[j]];
  }
  return { zc, yc, m };
}

function ranks(order) {
  const rank = new Int32Array(order.length);
  for (let j = 0; j < order.length; j++) rank[order[j]] = j;
  return rank;
}

/** Leave-one-out error (1/n) sum_i (y_i - g_{C \ {i}}(z_i))^2 over all n points. */
export function looMse(z, y, calc, rank, h, kernel) {
  const scratch = new Float64Array(calc.m);
  let s = 0;
  for (let i = 0; i < z.length; i++) {
    const skip = rank[i] < calc.m ? rank[i] : -1;
    const r = nwAt(z[i], calc.zc, calc.yc, calc.m, skip, h, kernel, scratch) - y[i];
    s += r * r;
  }
  return s / z.length;
}

/**
 * The leave-one-out error L (Gaussian kernel) and its gradient with respect to every
 * index z_i, written into `grad`. A calc point's index is the same variable as a query
 * and as a reference (as in the K-AF layer), so both sides contribute:
 *   dG_i/dz_i = (1/h^2) sum_j p_ij (z_j - z_i)(y_j - G_i),
 *   dG_i/dz_j = -(1/h^2) p_ij (z_j - z_i)(y_j - G_i),   dL/dG_i = 2 (G_i - y_i) / n.
 */
export function looLossAndGradient(z, y, order, rank, m, h, grad) {
  const n = z.length;
  const calc = calcSet(z, y, order, m);
  const p = new Float64Array(m);
  const inv = 1 / (h * h);
  grad.fill(0);
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const skip = rank[i] < m ? rank[i] : -1;
    let top = -Infinity;
    for (let j = 0; j < m; j++) {
      if (j === skip) continue;
      const u = (calc.zc[j] - z[i]) / h;
      p[j] = -0.5 * u * u;
      if (p[j] > top) top = p[j];
    }
    let den = 0;
    let num = 0;
    for (let j = 0; j < m; j++) {
      if (j === skip) continue;
      p[j] = Math.exp(p[j] - top);
      den += p[j];
      num += p[j] * calc.yc[j];
    }
    const G = num / den;
    const r = G - y[i];
    loss += r * r;
    const c = ((2 * r) / n) * inv;
    for (let j = 0; j < m; j++) {
      if (j === skip) continue;
      const t = c * (p[j] / den) * (calc.zc[j] - z[i]) * (calc.yc[j] - G);
      grad[i] += t;
      grad[order[j]] -= t;
    }
  }
  return loss / n;
}

/** n times the lower median of |grad| (torch.median's convention for even n). */
export function typicalGradient(grad) {
  const a = Float64Array.from(grad, Math.abs).sort();
  return a[(a.length - 1) >> 1] * a.length;
}

// ------------------------------------------------------------------ FluidReLU

/** f(v), df/dv, df/da of FluidReLU (kaf.nn.FluidReLU, grad_scale 1). */
export function fluidRelu(v, a, variant) {
  const s = Math.min(Math.exp(-a), Number.MAX_VALUE);
  const t = Math.max(Math.min(v, 0) * s, -Number.MAX_VALUE);
  if (variant === "exp") {
    const e = Math.exp(t);
    return [v * e, (1 + t) * e, -v * t * e];
  }
  const r = 1 / (1 + Math.exp(-t));
  const q = t * r * (1 - r);
  return [2 * v * r, 2 * r + 2 * q, -2 * v * q];
}

// ------------------------------------------------------------------ read-outs

/** Number as JavaScript's toPrecision(4) writes it (kaf.viz.views._fmt mirrors it). */
export function fmt(x) {
  return Number.isFinite(x) ? x.toPrecision(4) : String(x);
}

function setReadout(div, values, html) {
  div.text = `<div class="kaf-readout" data-values='${JSON.stringify(values)}'>${html}</div>`;
}

function replace(source, columns) {
  source.data = Object.assign({}, source.data, columns);
}

// ------------------------------------------------------------------ views

function bandwidthView(args, obj) {
  const { data, grid, curve, marker, best, noiseVariance, readout } = args;
  const h = 10 ** args.h.value;
  const kernel = args.kernel.value;
  const sd = args.noise.value;
  const z = data.data.z;
  const n = z.length;
  let y = data.data.y;
  const everyone = { zc: z, yc: y, m: n };
  const rank = Int32Array.from({ length: n }, (_, i) => i); // every point is a calc point
  if (obj !== args.h) {
    // the data or the kernel changed: new targets, new CV curve
    const signal = data.data.signal;
    const eps = data.data.eps;
    y = Float64Array.from(signal, (s, i) => s + sd * eps[i]);
    replace(data, { y });
    everyone.yc = y;
    const hs = curve.data.h;
    const cv = Float64Array.from(hs, (hk) => looMse(z, y, everyone, rank, hk, kernel));
    let k = 0;
    for (let i = 1; i < cv.length; i++) if (cv[i] < cv[k]) k = i;
    replace(curve, { cv });
    best.location = hs[k];
    noiseVariance.location = sd * sd;
  }
  const x = grid.data.x;
  const scratch = new Float64Array(n);
  const fit = Float64Array.from(x, (q) => nwAt(q, z, y, n, -1, h, kernel, scratch));
  const density = Float64Array.from(x, (q) => densityAt(q, z, n, h, kernel));
  replace(grid, { fit, density });
  const cvNow = looMse(z, y, everyone, rank, h, kernel);
  replace(marker, { h: [h], cv: [cvNow] });
  setReadout(
    readout,
    { h, kernel, noise_sd: sd, cv: cvNow, best_h: best.location },
    `h = ${fmt(h)} · leave-one-out CV(h) = ${fmt(cvNow)} · CV-optimal h on the grid = ${fmt(best.location)}`,
  );
}

function kafView(args, obj) {
  const { data, calcPoints, grid, curve, markerLoo, markerGrad, readout } = args;
  const h = 10 ** args.h.value;
  const m = Math.round(args.m.value); // an integer slider; guard against a float step
  const { z, y, order } = data.data;
  const n = z.length;
  const rank = ranks(order);
  const calc = calcSet(z, y, order, m);
  const grad = new Float64Array(n);
  if (obj !== args.h) {
    // the calc set changed: new calc points, new curves over h
    replace(calcPoints, { z: calc.zc, y: calc.yc });
    const hs = curve.data.h;
    const loo = new Float64Array(hs.length);
    const typical = new Float64Array(hs.length);
    for (let k = 0; k < hs.length; k++) {
      loo[k] = looLossAndGradient(z, y, order, rank, m, hs[k], grad);
      typical[k] = typicalGradient(grad);
    }
    replace(curve, { loo, grad: typical });
  }
  const scratch = new Float64Array(m);
  const fit = Float64Array.from(grid.data.x, (q) => nwAt(q, calc.zc, calc.yc, m, -1, h, "gaussian", scratch));
  replace(grid, { fit });
  const loss = looLossAndGradient(z, y, order, rank, m, h, grad);
  const typical = typicalGradient(grad);
  replace(markerLoo, { h: [h], loo: [loss] });
  replace(markerGrad, { h: [h], grad: [typical] });
  setReadout(
    readout,
    { h, m, loo_mse: loss, typical_gradient: typical },
    `h = ${fmt(h)} · m = ${m} · leave-one-out MSE = ${fmt(loss)} · typical gradient n·median|∂L/∂zᵢ| = ${fmt(typical)}`,
  );
}

function fluidView(args) {
  const { curves, probe, readout } = args;
  const a = args.a.value;
  const v0 = args.v.value;
  const columns = {};
  const probeColumns = { v: [v0] };
  const values = { a, v: v0 };
  const rows = [];
  for (const variant of ["exp", "sigmoid"]) {
    const f = new Float64Array(curves.data.v.length);
    const dv = new Float64Array(f.length);
    const da = new Float64Array(f.length);
    curves.data.v.forEach((v, i) => {
      [f[i], dv[i], da[i]] = fluidRelu(v, a, variant);
    });
    Object.assign(columns, { [`f_${variant}`]: f, [`dv_${variant}`]: dv, [`da_${variant}`]: da });
    const [pf, pdv, pda] = fluidRelu(v0, a, variant);
    Object.assign(probeColumns, { [`f_${variant}`]: [pf], [`dv_${variant}`]: [pdv], [`da_${variant}`]: [pda] });
    values[variant] = { f: pf, dv: pdv, da: pda };
    rows.push(`<tr><th>${variant}</th><td>${fmt(pf)}</td><td>${fmt(pdv)}</td><td>${fmt(pda)}</td></tr>`);
  }
  replace(curves, columns);
  replace(probe, probeColumns);
  setReadout(readout, values, fluidTable(a, v0, rows));
}

function fluidTable(a, v, rows) {
  return (
    `<table><caption>a = ${fmt(a)}, at v = ${fmt(v)}</caption>` +
    `<tr><th>variant</th><th>f(v)</th><th>∂f/∂v</th><th>∂f/∂a</th></tr>${rows.join("")}</table>`
  );
}

function curvesView(args, obj) {
  const { sources, renderers, outputs, shown, quantity, axes, labels } = args;
  if (obj === quantity) {
    const q = quantity.value;
    for (const source of sources) {
      const mean = source.data[`mean_${q}`];
      const sd = source.data[`sd_${q}`];
      replace(source, {
        y: mean,
        sd,
        lo: Float32Array.from(mean, (x, i) => x - sd[i]),
        hi: Float32Array.from(mean, (x, i) => x + sd[i]),
      });
    }
    axes.forEach((axis, i) => {
      axis.axis_label = labels[q][i];
    });
    return;
  }
  const active = new Set(shown.active);
  outputs.forEach((name, i) => {
    for (const r of renderers[name]) r.visible = active.has(i);
  });
}

const VIEWS = { bandwidth: bandwidthView, kaf: kafView, fluid: fluidView, curves: curvesView };

export default function (args, obj) {
  return VIEWS[args.view](args, obj);
}
