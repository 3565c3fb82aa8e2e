//! The conv block's CPU kernels on plain `f32` slices: "same" convolution with the max pool
//! folded in, as one GEMM per sample over an im2col matrix.
//!
//! Layouts are row-major and contiguous: `x [n, c, t, f]`, `weight [o, c, kt, kf]`,
//! `y [n, o, t/pt, f/pf]`. The im2col matrix of one sample is `[c*kt*kf, tc*fc]` over the
//! conv positions that some pool window reads (`tc = t/pt*pt`, `fc = f/pf*pf`), so each of its
//! rows is a run of contiguous copies; the pool then reads the GEMM's output, 4.5x smaller for
//! the reference block. A "phase" is one position `(di, dj)` inside the pool window; the
//! forward keeps the winning phase of every output for the backward. Nothing of the
//! full-resolution map outlives a sample.
//!
//! Determinism: every sample is computed alone; the weight gradient is summed per fixed chunk of
//! samples and the chunks are added in order, so thread scheduling never changes a bit.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::model::kernels::{View, gemm_into, multiversion};

/// Shapes of one conv block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input time steps.
    pub t: usize,
    /// Input features.
    pub f: usize,
    /// Output channels (filters).
    pub o: usize,
    /// Kernel `[time, feature]`.
    pub kernel: [usize; 2],
    /// Pool `[time, feature]`; `[1, 1]` is a plain convolution.
    pub pool: [usize; 2],
}

impl Geometry {
    /// Pooled output `[time, feature]` (floor, as Burn's and TensorFlow's "valid" pooling).
    pub fn out(&self) -> [usize; 2] {
        [self.t / self.pool[0], self.f / self.pool[1]]
    }

    /// Positions of one output map.
    pub(super) fn positions(&self) -> usize {
        let [to, fo] = self.out();
        to * fo
    }

    /// Pool phases.
    fn phases(&self) -> usize {
        self.pool[0] * self.pool[1]
    }

    /// Rows of the im2col matrix (`c * kt * kf`).
    fn k(&self) -> usize {
        self.c * self.kernel[0] * self.kernel[1]
    }

    /// The conv grid that the pool windows cover, `[tc, fc]`.
    fn grid(&self) -> [usize; 2] {
        let [to, fo] = self.out();
        [to * self.pool[0], fo * self.pool[1]]
    }

    /// Columns of the im2col matrix (`tc * fc`).
    fn cols(&self) -> usize {
        let [tc, fc] = self.grid();
        tc * fc
    }

    pub(super) fn x_len(&self) -> usize {
        self.c * self.t * self.f
    }

    pub(super) fn y_len(&self) -> usize {
        self.o * self.positions()
    }

    /// Padding before the first row/column: TensorFlow's "same" puts the odd cell at the end.
    fn pad(&self) -> [usize; 2] {
        [(self.kernel[0] - 1) / 2, (self.kernel[1] - 1) / 2]
    }
}

/// What the block applies after the pool, for one batch: ReLU, then an inverted-dropout mask
/// `[n, o, to, fo]` (only with ReLU). Fusing them saves two passes over the map forward and
/// two backward, and the mask tensor's autodiff node.
#[derive(Debug, Clone, Copy)]
pub struct Post<'a> {
    /// ReLU on the pooled map (max pool commutes with it).
    pub relu: bool,
    /// Values the activated map is multiplied by: dropout's 0 or 1/keep.
    pub mask: Option<&'a [f32]>,
}

/// What the backward needs of [`Post`]: the block's output and the mask.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// The forward's output `[n, o, to, fo]` (after ReLU and mask).
    pub output: &'a [f32],
    /// The forward's mask, if any.
    pub mask: Option<&'a [f32]>,
}

/// Samples per weight-gradient chunk: at most 16 chunks, a function of the batch size only.
pub(super) fn chunk_len(n: usize) -> usize {
    n.div_ceil(16).max(1)
}

/// Inside one sample, let the GEMM use every thread when the batch cannot (one window).
pub(super) fn inner_parallelism(n: usize) -> Parallelism {
    if n < rayon::current_num_threads() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// The grid columns `q` whose input column `q + j - pad` lies in `[0, f)`, for kernel column `j`.
fn valid_columns(fc: usize, f: usize, j: usize, pad: usize) -> std::ops::Range<usize> {
    let lo = pad.saturating_sub(j).min(fc);
    let hi = (f + pad).saturating_sub(j).min(fc);
    lo..hi.max(lo)
}

multiversion! {
/// The im2col matrix of one sample `x [c, t, f]` into `cols [k, tc * fc]`.
fn im2col(x: &[f32], g: &Geometry, cols: &mut [f32]) {
    let [kt, kf] = g.kernel;
    let [tc, fc] = g.grid();
    let [pad_t, pad_f] = g.pad();
    let width = g.cols();
    for ch in 0..g.c {
        let plane = &x[ch * g.t * g.f..(ch + 1) * g.t * g.f];
        for i in 0..kt {
            for j in 0..kf {
                let row = &mut cols[((ch * kt + i) * kf + j) * width..][..width];
                let r = valid_columns(fc, g.f, j, pad_f);
                for (tq, out) in row.chunks_exact_mut(fc).enumerate().take(tc) {
                    let ti = (tq + i).wrapping_sub(pad_t);
                    if ti >= g.t || r.is_empty() {
                        out.fill(0.0);
                        continue;
                    }
                    let first = r.start + j - pad_f;
                    out[..r.start].fill(0.0);
                    out[r.end..].fill(0.0);
                    out[r.clone()].copy_from_slice(&plane[ti * g.f + first..][..r.len()]);
                }
            }
        }
    }
}
}

multiversion! {
/// Add `dcols [k, tc * fc]` back onto the sample's input gradient `dx [c, t, f]`.
fn col2im(dcols: &[f32], g: &Geometry, dx: &mut [f32]) {
    let [kt, kf] = g.kernel;
    let [tc, fc] = g.grid();
    let [pad_t, pad_f] = g.pad();
    let width = g.cols();
    for ch in 0..g.c {
        let plane = &mut dx[ch * g.t * g.f..(ch + 1) * g.t * g.f];
        for i in 0..kt {
            for j in 0..kf {
                let row = &dcols[((ch * kt + i) * kf + j) * width..][..width];
                let r = valid_columns(fc, g.f, j, pad_f);
                if r.is_empty() {
                    continue;
                }
                let first = r.start + j - pad_f;
                for (tq, src) in row.chunks_exact(fc).enumerate().take(tc) {
                    let ti = (tq + i).wrapping_sub(pad_t);
                    if ti >= g.t {
                        continue;
                    }
                    let dst = &mut plane[ti * g.f + first..][..r.len()];
                    for (d, &v) in dst.iter_mut().zip(&src[r.clone()]) {
                        *d += v;
                    }
                }
            }
        }
    }
}
}

/// One output row of [`pool_max`]: phase by phase over the row, in phase order. `PF` is the
/// pool's width when it is a compile-time constant (then the loads vectorise), 0 to read it
/// from `pf`.
#[inline(always)]
fn pool_row<const PF: usize>(
    rows: &[f32],
    [pt, pf, fc]: [usize; 3],
    yr: &mut [f32],
    ar: &mut [i32],
) {
    let pf = if PF == 0 { pf } else { PF };
    let fo = yr.len();
    for di in 0..pt {
        for dj in 0..pf {
            let phase = (di * pf + dj) as i32;
            let windows = rows[di * fc..][..fo * pf].chunks_exact(pf);
            let row = yr.iter_mut().zip(ar.iter_mut()).zip(windows);
            if phase == 0 {
                row.for_each(|((best, a), w)| (*best, *a) = (w[0], 0));
                continue;
            }
            for ((best, a), w) in row {
                let win = w[dj] > *best;
                *best = if win { w[dj] } else { *best };
                *a = if win { phase } else { *a };
            }
        }
    }
}

multiversion! {
/// Max pool of one output channel's conv map `conv [tc, fc]` into `y [to, fo]` (+ `bias`),
/// the winning phase `di * pf + dj` into `arg` (the first phase wins ties).
fn pool_max(conv: &[f32], g: &Geometry, bias: f32, y: &mut [f32], arg: &mut [i32]) {
    let [pt, pf] = g.pool;
    let [_, fo] = g.out();
    let [_, fc] = g.grid();
    let dims = [pt, pf, fc];
    for ((yr, ar), rows) in y
        .chunks_exact_mut(fo)
        .zip(arg.chunks_exact_mut(fo))
        .zip(conv.chunks_exact(pt * fc))
    {
        match pf {
            1 => pool_row::<1>(rows, dims, yr, ar),
            2 => pool_row::<2>(rows, dims, yr, ar),
            _ => pool_row::<0>(rows, dims, yr, ar),
        }
        yr.iter_mut().for_each(|v| *v += bias);
    }
}
}

/// Forward: `y [n, o, to, fo]` = max over each pool window of (conv "same" + bias), then
/// `post`, and the winning phase of each output (`di * pf + dj`, the first on ties) in
/// `argmax`.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &Geometry,
    post: Post<'_>,
    y: &mut [f32],
    argmax: &mut [i32],
) {
    let (k, width, npos) = (g.k(), g.cols(), g.positions());
    let par = inner_parallelism(g.n);
    let w = View::row_major(weight, k);
    y.par_chunks_mut(g.y_len())
        .zip(argmax.par_chunks_mut(g.y_len()))
        .enumerate()
        .for_each_init(
            || (vec![0.0f32; k * width], vec![0.0f32; g.o * width]),
            |(cols, conv), (b, (y, arg))| {
                im2col(&x[b * g.x_len()..][..g.x_len()], g, cols);
                let c = View::row_major(cols, width);
                gemm_into(conv, w, c, [g.o, k, width], false, par);
                for o in 0..g.o {
                    pool_max(
                        &conv[o * width..][..width],
                        g,
                        bias[o],
                        &mut y[o * npos..][..npos],
                        &mut arg[o * npos..][..npos],
                    );
                }
                if post.relu {
                    relu_mask(y, post.mask.map(|m| &m[b * g.y_len()..][..g.y_len()]));
                }
            },
        );
}

multiversion! {
/// ReLU, as Burn's flex does it (NaN passes), then the mask, in place on one sample's map.
pub(super) fn relu_mask(y: &mut [f32], mask: Option<&[f32]>) {
    let relu = |v: f32| if v.is_nan() || v > 0.0 { v } else { 0.0 };
    match mask {
        Some(m) => y.iter_mut().zip(m).for_each(|(v, &m)| *v = relu(*v) * m),
        None => y.iter_mut().for_each(|v| *v = relu(*v)),
    }
}
}

multiversion! {
/// One sample's output gradient through the mask and the ReLU, into `out`: `grad * mask`
/// where the output is positive (or NaN), 0 elsewhere, as Burn's mul and ReLU backward give.
fn ungate(grad: &[f32], output: &[f32], mask: Option<&[f32]>, out: &mut [f32]) {
    let on = |y: f32| y.is_nan() || y > 0.0;
    match mask {
        Some(m) => {
            for (((o, &g), &y), &m) in out.iter_mut().zip(grad).zip(output).zip(m) {
                *o = if on(y) { g * m } else { 0.0 };
            }
        }
        None => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(output) {
                *o = if on(y) { g } else { 0.0 };
            }
        }
    }
}
}

/// Sample `b`'s output gradient after [`Post`]: `grad` itself without a gate, else ungated
/// into `buf`.
pub(super) fn sample_grad<'a>(
    grad: &'a [f32],
    gate: Option<Gate<'_>>,
    b: usize,
    len: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let at = |v: &'a [f32]| &v[b * len..][..len];
    match gate {
        None => at(grad),
        Some(gate) => {
            ungate(
                at(grad),
                &gate.output[b * len..][..len],
                gate.mask.map(|m| &m[b * len..][..len]),
                buf,
            );
            buf
        }
    }
}

multiversion! {
/// The gradient at every conv position of one sample, `[o, tc * fc]`: each output's gradient
/// routed to the position that won its max, zero elsewhere.
fn route(grad: &[f32], argmax: &[i32], g: &Geometry, dconv: &mut [f32]) {
    if g.phases() == 1 {
        dconv.copy_from_slice(grad);
        return;
    }
    let [_, pf] = g.pool;
    let [_, fo] = g.out();
    let [_, fc] = g.grid();
    let rows = g.pool[0] * fc;
    dconv.fill(0.0);
    for ((gr, ar), dst) in grad
        .chunks_exact(fo)
        .zip(argmax.chunks_exact(fo))
        .zip(dconv.chunks_exact_mut(rows))
    {
        for (fq, (&gv, &p)) in gr.iter().zip(ar).enumerate() {
            let (di, dj) = (p as usize / pf, p as usize % pf);
            dst[di * fc + fq * pf + dj] = gv;
        }
    }
}
}

/// Weight `[o, c*kt*kf]` and bias `[o]` gradients for the output gradient `grad [n, o, to, fo]`
/// (through `gate` when the forward applied a [`Post`]).
pub fn weight_backward(
    x: &[f32],
    grad: &[f32],
    argmax: &[i32],
    g: &Geometry,
    gate: Option<Gate<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    let (k, width, npos) = (g.k(), g.cols(), g.positions());
    let chunk = chunk_len(g.n);
    let par = inner_parallelism(g.n);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..g.n.div_ceil(chunk))
        .into_par_iter()
        .map(|ci| {
            let mut dw = vec![0.0f32; g.o * k];
            let mut db = vec![0.0f32; g.o];
            let mut cols = vec![0.0f32; k * width];
            let mut dconv = vec![0.0f32; g.o * width];
            let mut ungated = vec![0.0f32; if gate.is_some() { g.y_len() } else { 0 }];
            for b in ci * chunk..((ci + 1) * chunk).min(g.n) {
                let gb = sample_grad(grad, gate, b, g.y_len(), &mut ungated);
                for (o, d) in db.iter_mut().enumerate() {
                    *d += gb[o * npos..][..npos].iter().sum::<f32>();
                }
                route(gb, &argmax[b * g.y_len()..][..g.y_len()], g, &mut dconv);
                im2col(&x[b * g.x_len()..][..g.x_len()], g, &mut cols);
                // dW [o, k] += dconv [o, width] * cols^T [width, k]
                let lhs = View::row_major(&dconv, width);
                let rhs = View::transposed(&cols, width);
                gemm_into(&mut dw, lhs, rhs, [g.o, width, k], true, par);
            }
            (dw, db)
        })
        .collect();
    sum_in_order(partials)
}

/// The per-chunk (weight, bias) gradients added chunk by chunk, in order (see the module's
/// determinism note).
pub(super) fn sum_in_order(partials: Vec<(Vec<f32>, Vec<f32>)>) -> (Vec<f32>, Vec<f32>) {
    let mut parts = partials.into_iter();
    let (mut dw, mut db) = parts.next().expect("a batch has at least one sample");
    for (w, b) in parts {
        dw.iter_mut().zip(&w).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&b).for_each(|(a, v)| *a += v);
    }
    (dw, db)
}

/// Input gradient `[n, c, t, f]` for the output gradient `grad [n, o, to, fo]` (through `gate`
/// when the forward applied a [`Post`]).
pub fn x_backward(
    weight: &[f32],
    grad: &[f32],
    argmax: &[i32],
    g: &Geometry,
    gate: Option<Gate<'_>>,
) -> Vec<f32> {
    let (k, width) = (g.k(), g.cols());
    let par = inner_parallelism(g.n);
    let mut dx = vec![0.0f32; g.n * g.x_len()];
    // W^T [k, o]
    let wt = View::transposed(weight, k);
    let ungated_len = if gate.is_some() { g.y_len() } else { 0 };
    dx.par_chunks_mut(g.x_len()).enumerate().for_each_init(
        || {
            (
                vec![0.0f32; g.o * width],
                vec![0.0f32; k * width],
                vec![0.0f32; ungated_len],
            )
        },
        |(dconv, dcols, ungated), (b, dxb)| {
            let gb = sample_grad(grad, gate, b, g.y_len(), ungated);
            route(gb, &argmax[b * g.y_len()..][..g.y_len()], g, dconv);
            let rhs = View::row_major(dconv, width);
            gemm_into(dcols, wt, rhs, [k, g.o, width], false, par);
            col2im(dcols, g, dxb);
        },
    );
    dx
}
