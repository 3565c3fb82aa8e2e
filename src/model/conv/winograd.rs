//! The 3x3 conv block with a 2x2 max pool as Winograd F(2x2, 3x3): each pool window is one
//! Winograd tile, so a tile's four conv outputs are exactly the four values the pool compares.
//!
//! Per tile the 4x4 input patch `d`, the kernel `w` and the 2x2 outputs `y` are related by
//! `y = Aᵀ [(G w Gᵀ) ⊙ (Bᵀ d B)] A`, summed over input channels: 16 products per output tile
//! instead of 36, so the forward and both gradients each run as 16 GEMMs (one per position of
//! the 4x4 transformed tile) 2.25x smaller than the im2col GEMM. The gradients are the same
//! bilinear form read backwards: with `Z = A g Aᵀ` for a tile's output gradient `g`, the input
//! gradient is `B [Σ_o (G w Gᵀ) ⊙ Z] Bᵀ` and the weight gradient `Gᵀ [Σ_tiles Z ⊙ (Bᵀ d B)] G`.
//! The transforms only add, subtract and halve, so F(2x2, 3x3) loses almost nothing to rounding
//! (the property tests hold it to Burn's `conv2d` within 1e-4 relative, like the im2col path).
//! One difference: an infinite input reaches transformed terms of both signs, so the tile's
//! outputs become NaN where a direct convolution gives ±inf (training has diverged by then).
//!
//! Layouts: `u [16, o, c]` (transformed kernels), `v [16, c, tiles]` (transformed inputs),
//! `m`/`z [16, o, tiles]`; a tile is `ti * fo + tj`, a position `a * 4 + b` (time, feature).
//! Determinism as in `cpu`: samples alone, the weight gradient summed per fixed chunk.

use rayon::prelude::*;

use super::cpu::{
    Gate, Geometry, Post, chunk_len, inner_parallelism, relu_mask, sample_grad, sum_in_order,
};
use crate::model::kernels::{View, gemm_into, multiversion};

/// Positions of a transformed tile.
const P: usize = 16;

/// Input channels below which the im2col GEMM is kept: the 16 GEMMs' inner dimension is the
/// channel count. `train_speed --conv-sweep`: at one channel the two kernels are about even,
/// from two Winograd is faster.
const MIN_CHANNELS: usize = 2;

/// Whether the block runs here: a 3x3 kernel, a 2x2 pool, enough input channels.
pub fn applies(g: &Geometry) -> bool {
    g.kernel == [3, 3] && g.pool == [2, 2] && g.c >= MIN_CHANNELS && g.positions() > 0
}

/// `Gw`: the kernel transform along one axis.
#[inline(always)]
fn gk(w: [f32; 3]) -> [f32; 4] {
    [
        w[0],
        (w[0] + w[1] + w[2]) * 0.5,
        (w[0] - w[1] + w[2]) * 0.5,
        w[2],
    ]
}

/// `Gᵀ u`: the kernel transform's adjoint, for the weight gradient.
#[inline(always)]
fn gt(u: [f32; 4]) -> [f32; 3] {
    let half = (u[1] + u[2]) * 0.5;
    [u[0] + half, (u[1] - u[2]) * 0.5, u[3] + half]
}

/// Column `k` of `A`: `A g` for a gradient that is 1 at output `k` of an axis, 0 at the other.
const A_COL: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

// The transforms run on whole rows of tiles: slices of `fo` values, one per tile, so that the
// loops below are element-wise over contiguous memory and vectorise. The padded input row is
// split into its even and odd columns (`fo + 1` each), which turns the stride-2 tile patches
// into contiguous runs.

/// `out = x ⊕ y` element-wise, `⊕` being `+` when `minus` is false.
#[inline(always)]
fn lin(out: &mut [f32], x: &[f32], y: &[f32], minus: bool) {
    let it = out.iter_mut().zip(x).zip(y);
    if minus {
        it.for_each(|((o, &x), &y)| *o = x - y);
    } else {
        it.for_each(|((o, &x), &y)| *o = x + y);
    }
}

/// `out += x ⊕ y ⊕ z` element-wise (`x ⊕ y` first), signs as [`lin`].
#[inline(always)]
fn acc3(out: &mut [f32], x: &[f32], y: &[f32], z: &[f32], [my, mz]: [bool; 2]) {
    let sy = if my { -1.0 } else { 1.0 };
    let sz = if mz { -1.0 } else { 1.0 };
    // Multiplying by ±1 is exact: x + (-1 * y) is x - y to the bit.
    for (((o, &x), &y), &z) in out.iter_mut().zip(x).zip(y).zip(z) {
        *o += x + sy * y + sz * z;
    }
}

/// `out = x ⊕ y ⊕ z` element-wise (`x ⊕ y` first), signs as [`lin`].
#[inline(always)]
fn set3(out: &mut [f32], x: &[f32], y: &[f32], z: &[f32], [my, mz]: [bool; 2]) {
    let sy = if my { -1.0 } else { 1.0 };
    let sz = if mz { -1.0 } else { 1.0 };
    for (((o, &x), &y), &z) in out.iter_mut().zip(x).zip(y).zip(z) {
        *o = x + sy * y + sz * z;
    }
}

/// Shapes derived from a [`Geometry`].
struct Tiles {
    /// Tiles per map `[to, fo]` (one per pool window).
    out: [usize; 2],
    /// Rows of the zero-padded input plane, `2 to + 2`: input row `r` is padded row `r + 1`,
    /// and tile row `ti` reads padded rows `2 ti..2 ti + 4` (columns likewise, `2 fo + 2`).
    rows: usize,
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        let out = g.out();
        Self {
            out,
            rows: 2 * out[0] + 2,
        }
    }

    fn count(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Length of a buffer of padded rows transformed along features, `[4, 2, rows / 2, fo]`:
    /// position `q`, then even and odd padded rows, so that the rows `2 ti + a` of every tile
    /// row are one contiguous run.
    fn row_transforms(&self) -> usize {
        self.rows * 4 * self.out[1]
    }

    /// Where padded row `r` at position `q` starts in a [`Tiles::row_transforms`] buffer.
    fn row_at(&self, q: usize, r: usize) -> usize {
        let [_, fo] = self.out;
        (q * 2 + r % 2) * (self.rows / 2) * fo + (r / 2) * fo
    }

    /// Length of one padded row split in even and odd columns, `[2, fo + 1]`.
    fn split_row(&self) -> usize {
        2 * (self.out[1] + 1)
    }
}

/// The transformed kernels `u [16, o, c]` of `weight [o, c, 3, 3]`.
fn kernels(weight: &[f32], g: &Geometry) -> Vec<f32> {
    let mut u = vec![0.0f32; P * g.o * g.c];
    for (oc, w) in weight.chunks_exact(9).enumerate() {
        let rows: [[f32; 4]; 3] =
            std::array::from_fn(|k| gk([w[3 * k], w[3 * k + 1], w[3 * k + 2]]));
        for q in 0..4 {
            let col = gk([rows[0][q], rows[1][q], rows[2][q]]);
            for (a, v) in col.into_iter().enumerate() {
                u[(a * 4 + q) * g.o * g.c + oc] = v;
            }
        }
    }
    u
}

/// Splits an input row into the padded row's even and odd columns (`fo + 1` each): padded
/// column 2k is input column 2k - 1, padded column 2k + 1 input column 2k; the rest is zero.
#[inline(always)]
fn split_row(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    even[0] = 0.0;
    let mut pairs = src.chunks_exact(2);
    let cells = odd.iter_mut().zip(even[1..].iter_mut());
    let mut used = 0;
    for ((o, e), p) in cells.zip(&mut pairs) {
        (*o, *e) = (p[0], p[1]);
        used += 1;
    }
    if let [last] = pairs.remainder() {
        odd[used] = *last;
        used += 1;
        even[used..].fill(0.0);
        odd[used..].fill(0.0);
    } else {
        even[used + 1..].fill(0.0);
        odd[used..].fill(0.0);
    }
}

/// The inverse of [`split_row`] on the input's columns: `out` from the even and odd columns.
#[inline(always)]
fn join_row(even: &[f32], odd: &[f32], out: &mut [f32]) {
    let mut pairs = out.chunks_exact_mut(2);
    for ((p, &o), &e) in (&mut pairs).zip(odd).zip(&even[1..]) {
        (p[0], p[1]) = (o, e);
    }
    let half = out.len() / 2;
    if let [last] = out.chunks_exact_mut(2).into_remainder() {
        *last = odd[half];
    }
}

multiversion! {
/// The transformed inputs `v [16, c, tiles]` of one sample `x [c, t, f]`, through the buffers
/// `split [2, fo + 1]` (one padded row) and `s` ([`Tiles::row_transforms`]: every padded row
/// times `Bᵀ` along features, once, as tile rows share two of their four rows).
fn transform_input(x: &[f32], g: &Geometry, split: &mut [f32], s: &mut [f32], v: &mut [f32]) {
    let tiles = Tiles::new(g);
    let [_, fo] = tiles.out;
    let n = tiles.count();
    let stride = g.c * n;
    for (ch, plane) in x.chunks_exact(g.t * g.f).enumerate() {
        for r in 0..tiles.rows {
            let (even, odd) = split.split_at_mut(fo + 1);
            match r.checked_sub(1).and_then(|i| plane.chunks_exact(g.f).nth(i)) {
                Some(src) => split_row(src, even, odd),
                None => {
                    even.fill(0.0);
                    odd.fill(0.0);
                }
            }
            // Bᵀ (d0, d1, d2, d3) = (d0 - d2, d1 + d2, d2 - d1, d1 - d3) with
            // d = (even[j], odd[j], even[j + 1], odd[j + 1]).
            let row = |q: usize| tiles.row_at(q, r);
            lin(&mut s[row(0)..][..fo], &even[..fo], &even[1..], true);
            lin(&mut s[row(1)..][..fo], &odd[..fo], &even[1..], false);
            lin(&mut s[row(2)..][..fo], &even[1..], &odd[..fo], true);
            lin(&mut s[row(3)..][..fo], &odd[..fo], &odd[1..], true);
        }
        // Bᵀ along time, every tile at once: tile row ti reads padded rows 2 ti + a.
        for q in 0..4 {
            let rows = |a: usize| &s[tiles.row_at(q, a)..][..n];
            let out = |a: usize| (a * 4 + q) * stride + ch * n;
            lin(&mut v[out(0)..][..n], rows(0), rows(2), true);
            lin(&mut v[out(1)..][..n], rows(1), rows(2), false);
            lin(&mut v[out(2)..][..n], rows(2), rows(1), true);
            lin(&mut v[out(3)..][..n], rows(1), rows(3), true);
        }
    }
}
}

multiversion! {
/// Output transform and pool of one sample: `m [16, o, tiles]` -> `y [o, tiles]` (the max of
/// each tile's four outputs + bias) and the winning phase `di * 2 + dj` (the first on ties),
/// through `tmp [8, tiles]`.
fn transform_output(m: &[f32], bias: &[f32], n: usize, tmp: &mut [f32], y: &mut [f32], arg: &mut [i32]) {
    let stride = y.len();
    let (r, outs) = tmp.split_at_mut(4 * n);
    for (o, (yo, ao)) in y.chunks_exact_mut(n).zip(arg.chunks_exact_mut(n)).enumerate() {
        let at = |p: usize| &m[p * stride + o * n..][..n];
        // Aᵀ (m0, m1, m2, m3) = (m0 + m1 + m2, m1 - m2 - m3): along features into `r [4, n]`
        // for output column dj, then along time into `outs [phase, n]`, phase = di * 2 + dj.
        for dj in 0..2 {
            for (a, ra) in r.chunks_exact_mut(n).enumerate() {
                let p = a * 4;
                if dj == 0 {
                    set3(ra, at(p), at(p + 1), at(p + 2), [false, false]);
                } else {
                    set3(ra, at(p + 1), at(p + 2), at(p + 3), [true, true]);
                }
            }
            let ra = |a: usize| &r[a * n..][..n];
            set3(&mut outs[dj * n..][..n], ra(0), ra(1), ra(2), [false, false]);
            set3(&mut outs[(2 + dj) * n..][..n], ra(1), ra(2), ra(3), [true, true]);
        }
        // The pool: phases in order, the first wins ties (as `cpu`'s pool).
        yo.copy_from_slice(&outs[..n]);
        ao.fill(0);
        for (phase, yp) in outs.chunks_exact(n).enumerate().skip(1) {
            for ((best, arg), &v) in yo.iter_mut().zip(ao.iter_mut()).zip(yp) {
                let win = v > *best;
                *best = if win { v } else { *best };
                *arg = if win { phase as i32 } else { *arg };
            }
        }
        yo.iter_mut().for_each(|v| *v += bias[o]);
    }
}
}

multiversion! {
/// `z [16, o, tiles] = A g Aᵀ` per tile, where one sample's gradient `grad [o, tiles]` sits at
/// the winning phase of its pool window (the others are zero).
fn transform_grad(grad: &[f32], argmax: &[i32], z: &mut [f32]) {
    let stride = grad.len();
    for (p, zp) in z.chunks_exact_mut(stride).enumerate() {
        let (a, q) = (p / 4, p % 4);
        let (a0, a1, q0, q1) = (A_COL[0][a], A_COL[1][a], A_COL[0][q], A_COL[1][q]);
        for ((zv, &gv), &phase) in zp.iter_mut().zip(grad).zip(argmax) {
            let ca = if phase & 2 == 0 { a0 } else { a1 };
            let cq = if phase & 1 == 0 { q0 } else { q1 };
            *zv = gv * ca * cq;
        }
    }
}
}

multiversion! {
/// One sample's input gradient `dx [c, t, f]` from its transformed gradient `dv [16, c, tiles]`:
/// `B` along time into `e` ([`Tiles::row_transforms`]; tile rows overlap by two padded rows
/// and add up there), then `B` along features per padded row through `split [2, fo + 1]`.
fn transform_input_grad(dv: &[f32], g: &Geometry, split: &mut [f32], e: &mut [f32], dx: &mut [f32]) {
    let tiles = Tiles::new(g);
    let [_, fo] = tiles.out;
    let n = tiles.count();
    let stride = g.c * n;
    for (ch, plane) in dx.chunks_exact_mut(g.t * g.f).enumerate() {
        e.fill(0.0);
        // B (e0, e1, e2, e3) = (e0, e1 - e2 + e3, e1 + e2 - e0, -e3), every tile at once.
        for q in 0..4 {
            let col = |a: usize| &dv[(a * 4 + q) * stride + ch * n..][..n];
            let row = |a: usize| tiles.row_at(q, a);
            e[row(0)..][..n].iter_mut().zip(col(0)).for_each(|(d, &v)| *d += v);
            acc3(&mut e[row(1)..][..n], col(1), col(2), col(3), [true, false]);
            acc3(&mut e[row(2)..][..n], col(1), col(2), col(0), [false, true]);
            e[row(3)..][..n].iter_mut().zip(col(3)).for_each(|(d, &v)| *d -= v);
        }
        for (i, out) in plane.chunks_exact_mut(g.f).enumerate() {
            let r = i + 1;
            let row = |q: usize| &e[tiles.row_at(q, r)..][..fo];
            split.fill(0.0);
            let (even, odd) = split.split_at_mut(fo + 1);
            // Tile column j adds its four columns at padded 2j, 2j + 1, 2j + 2, 2j + 3.
            even[..fo].iter_mut().zip(row(0)).for_each(|(d, &v)| *d += v);
            acc3(&mut odd[..fo], row(1), row(2), row(3), [true, false]);
            acc3(&mut even[1..], row(1), row(2), row(0), [false, true]);
            odd[1..].iter_mut().zip(row(3)).for_each(|(d, &v)| *d -= v);
            join_row(even, odd, out);
        }
    }
}
}

/// Forward, with [`super::cpu::forward`]'s contract (the block takes it when [`applies`]).
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &Geometry,
    post: Post<'_>,
    y: &mut [f32],
    argmax: &mut [i32],
) {
    let tiles = Tiles::new(g);
    let n = tiles.count();
    let u = kernels(weight, g);
    let par = inner_parallelism(g.n);
    let (cn, on) = (g.c * n, g.o * n);
    y.par_chunks_mut(g.y_len())
        .zip(argmax.par_chunks_mut(g.y_len()))
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![0.0f32; tiles.split_row()],
                    vec![0.0f32; tiles.row_transforms()],
                    vec![0.0f32; P * cn],
                    vec![0.0f32; P * on],
                    vec![0.0f32; 8 * n],
                )
            },
            |(split, rows, v, m, tmp), (s, (y, arg))| {
                transform_input(&x[s * g.x_len()..][..g.x_len()], g, split, rows, v);
                for p in 0..P {
                    let lhs = View::row_major(&u[p * g.o * g.c..][..g.o * g.c], g.c);
                    let rhs = View::row_major(&v[p * cn..][..cn], n);
                    gemm_into(&mut m[p * on..][..on], lhs, rhs, [g.o, g.c, n], false, par);
                }
                transform_output(m, bias, n, tmp, y, arg);
                if post.relu {
                    relu_mask(y, post.mask.map(|mk| &mk[s * g.y_len()..][..g.y_len()]));
                }
            },
        );
}

/// Weight and bias gradients, with [`super::cpu::weight_backward`]'s contract.
pub fn weight_backward(
    x: &[f32],
    grad: &[f32],
    argmax: &[i32],
    g: &Geometry,
    gate: Option<Gate<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    let tiles = Tiles::new(g);
    let n = tiles.count();
    let (cn, on, oc) = (g.c * n, g.o * n, g.o * g.c);
    let chunk = chunk_len(g.n);
    let par = inner_parallelism(g.n);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..g.n.div_ceil(chunk))
        .into_par_iter()
        .map(|ci| {
            let mut du = vec![0.0f32; P * oc];
            let mut db = vec![0.0f32; g.o];
            let mut split = vec![0.0f32; tiles.split_row()];
            let mut rows = vec![0.0f32; tiles.row_transforms()];
            let mut v = vec![0.0f32; P * cn];
            let mut z = vec![0.0f32; P * on];
            let mut ungated = vec![0.0f32; if gate.is_some() { g.y_len() } else { 0 }];
            for s in ci * chunk..((ci + 1) * chunk).min(g.n) {
                let gs = sample_grad(grad, gate, s, g.y_len(), &mut ungated);
                for (o, d) in db.iter_mut().enumerate() {
                    *d += gs[o * n..][..n].iter().sum::<f32>();
                }
                transform_grad(gs, &argmax[s * g.y_len()..][..g.y_len()], &mut z);
                transform_input(
                    &x[s * g.x_len()..][..g.x_len()],
                    g,
                    &mut split,
                    &mut rows,
                    &mut v,
                );
                for p in 0..P {
                    // dU[p] [o, c] += Z[p] [o, tiles] * V[p]ᵀ [tiles, c]
                    let lhs = View::row_major(&z[p * on..][..on], n);
                    let rhs = View::transposed(&v[p * cn..][..cn], n);
                    gemm_into(&mut du[p * oc..][..oc], lhs, rhs, [g.o, n, g.c], true, par);
                }
            }
            (du, db)
        })
        .collect();
    let (du, db) = sum_in_order(partials);
    (kernel_grad(&du, oc), db)
}

/// `dW [o, c, 3, 3] = Gᵀ dU G` for every kernel, from `du [16, o, c]`.
fn kernel_grad(du: &[f32], oc: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; oc * 9];
    for (i, w) in dw.chunks_exact_mut(9).enumerate() {
        let rows: [[f32; 3]; 4] =
            std::array::from_fn(|a| gt(std::array::from_fn(|q| du[(a * 4 + q) * oc + i])));
        for l in 0..3 {
            let col = gt([rows[0][l], rows[1][l], rows[2][l], rows[3][l]]);
            for (k, val) in col.into_iter().enumerate() {
                w[3 * k + l] = val;
            }
        }
    }
    dw
}

/// Input gradient, with [`super::cpu::x_backward`]'s contract.
pub fn x_backward(
    weight: &[f32],
    grad: &[f32],
    argmax: &[i32],
    g: &Geometry,
    gate: Option<Gate<'_>>,
) -> Vec<f32> {
    let tiles = Tiles::new(g);
    let n = tiles.count();
    let (cn, on, oc) = (g.c * n, g.o * n, g.o * g.c);
    let u = kernels(weight, g);
    let par = inner_parallelism(g.n);
    let mut dx = vec![0.0f32; g.n * g.x_len()];
    let ungated_len = if gate.is_some() { g.y_len() } else { 0 };
    dx.par_chunks_mut(g.x_len()).enumerate().for_each_init(
        || {
            (
                vec![0.0f32; P * on],
                vec![0.0f32; P * cn],
                vec![0.0f32; tiles.split_row()],
                vec![0.0f32; tiles.row_transforms()],
                vec![0.0f32; ungated_len],
            )
        },
        |(z, dv, split, rows, ungated), (s, dxs)| {
            let gs = sample_grad(grad, gate, s, g.y_len(), ungated);
            transform_grad(gs, &argmax[s * g.y_len()..][..g.y_len()], z);
            for p in 0..P {
                // dV[p] [c, tiles] = U[p]ᵀ [c, o] * Z[p] [o, tiles]
                let lhs = View::transposed(&u[p * oc..][..oc], g.c);
                let rhs = View::row_major(&z[p * on..][..on], n);
                gemm_into(&mut dv[p * cn..][..cn], lhs, rhs, [g.c, g.o, n], false, par);
            }
            transform_input_grad(dv, g, split, rows, dxs);
        },
    );
    dx
}
