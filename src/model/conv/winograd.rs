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
//!
//! Layouts: `u [16, o, c]` (transformed kernels), `v [16, c, tiles]` (transformed inputs),
//! `m`/`z [16, o, tiles]`; a tile is `ti * fo + tj`, a position `a * 4 + b` (time, feature).
//! Determinism as in `cpu`: samples alone, the weight gradient summed per fixed chunk.

use rayon::prelude::*;

use super::cpu::{Gate, Geometry, Post, chunk_len, inner_parallelism, relu_mask, sample_grad};
use crate::model::kernels::{View, gemm_into, multiversion};

/// Positions of a transformed tile.
const P: usize = 16;

/// Input channels below which the im2col GEMM wins: the 16 GEMMs' inner dimension is the
/// channel count, too short to pay for the transforms (the first block, one channel).
const MIN_CHANNELS: usize = 8;

/// Whether the block runs here: a 3x3 kernel, a 2x2 pool, enough input channels.
pub fn applies(g: &Geometry) -> bool {
    g.kernel == [3, 3] && g.pool == [2, 2] && g.c >= MIN_CHANNELS && g.positions() > 0
}

/// `Bᵀ d` for one 4-vector: the input transform along one axis.
#[inline(always)]
fn bt(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `B e`: the input transform's adjoint, for the input gradient.
#[inline(always)]
fn b(e: [f32; 4]) -> [f32; 4] {
    [e[0], e[1] - e[2] + e[3], e[1] + e[2] - e[0], -e[3]]
}

/// `G w`: the kernel transform along one axis.
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

/// `Aᵀ m`: the output transform along one axis.
#[inline(always)]
fn at(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// Column `k` of `A`: `A g` for a gradient that is 1 at output `k` of the axis and 0 at the other.
const A_COL: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Shapes derived from a [`Geometry`].
struct Tiles {
    /// Tiles per map `[to, fo]` (one per pool window).
    out: [usize; 2],
    /// Rows and columns of the zero-padded input plane, `[2 to + 2, 2 fo + 2]`: input row `r`
    /// is padded row `r + 1`, and tile `(ti, tj)` reads padded rows `2 ti..2 ti + 4`.
    padded: [usize; 2],
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        let out = g.out();
        Self {
            out,
            padded: [2 * out[0] + 2, 2 * out[1] + 2],
        }
    }

    fn count(&self) -> usize {
        self.out[0] * self.out[1]
    }

    fn plane(&self) -> usize {
        self.padded[0] * self.padded[1]
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

multiversion! {
/// The transformed inputs `v [16, c, tiles]` of one sample `x [c, t, f]`, through the
/// zero-padded plane buffer `pad [plane]`.
fn transform_input(x: &[f32], g: &Geometry, pad: &mut [f32], v: &mut [f32]) {
    let tiles = Tiles::new(g);
    let [to, fo] = tiles.out;
    let [rows, width] = tiles.padded;
    let n = tiles.count();
    let stride = g.c * n;
    for (ch, plane) in x.chunks_exact(g.t * g.f).enumerate() {
        pad.fill(0.0);
        for (r, src) in plane.chunks_exact(g.f).enumerate().take(rows - 1) {
            pad[(r + 1) * width + 1..][..g.f].copy_from_slice(src);
        }
        for ti in 0..to {
            let d: [&[f32]; 4] = std::array::from_fn(|a| &pad[(2 * ti + a) * width..][..width]);
            let base = ch * n + ti * fo;
            for tj in 0..fo {
                let c = 2 * tj;
                let s: [[f32; 4]; 4] = std::array::from_fn(|a| bt([d[a][c], d[a][c + 1], d[a][c + 2], d[a][c + 3]]));
                for q in 0..4 {
                    let col = bt([s[0][q], s[1][q], s[2][q], s[3][q]]);
                    for (a, val) in col.into_iter().enumerate() {
                        v[(a * 4 + q) * stride + base + tj] = val;
                    }
                }
            }
        }
    }
}
}

multiversion! {
/// Output transform and pool of one sample: `m [16, o, tiles]` -> `y [o, tiles]` (the max of
/// each tile's four outputs + bias) and the winning phase `di * 2 + dj` (the first on ties).
fn transform_output(m: &[f32], bias: &[f32], y: &mut [f32], arg: &mut [i32]) {
    let stride = y.len();
    let n = stride / bias.len();
    for (o, (yo, ao)) in y.chunks_exact_mut(n).zip(arg.chunks_exact_mut(n)).enumerate() {
        for (tile, (yv, av)) in yo.iter_mut().zip(ao.iter_mut()).enumerate() {
            let i = o * n + tile;
            let at_pos = |p: usize| m[p * stride + i];
            let rows: [[f32; 2]; 4] = std::array::from_fn(|a| {
                at([at_pos(a * 4), at_pos(a * 4 + 1), at_pos(a * 4 + 2), at_pos(a * 4 + 3)])
            });
            let c0 = at([rows[0][0], rows[1][0], rows[2][0], rows[3][0]]);
            let c1 = at([rows[0][1], rows[1][1], rows[2][1], rows[3][1]]);
            let mut best = c0[0];
            let mut phase = 0;
            for (k, v) in [c1[0], c0[1], c1[1]].into_iter().enumerate() {
                let win = v > best;
                best = if win { v } else { best };
                phase = if win { k as i32 + 1 } else { phase };
            }
            *yv = best + bias[o];
            *av = phase;
        }
    }
}
}

multiversion! {
/// `z [16, o, tiles] = A g Aᵀ` per tile, where one sample's gradient `grad [o, tiles]` sits at
/// the winning phase of its pool window (the others are zero).
fn transform_grad(grad: &[f32], argmax: &[i32], z: &mut [f32]) {
    let stride = grad.len();
    for (i, (&gv, &phase)) in grad.iter().zip(argmax).enumerate() {
        let (di, dj) = ((phase as usize >> 1) & 1, phase as usize & 1);
        for a in 0..4 {
            let ga = gv * A_COL[di][a];
            for q in 0..4 {
                z[(a * 4 + q) * stride + i] = ga * A_COL[dj][q];
            }
        }
    }
}
}

multiversion! {
/// Add the input gradient of one sample's transformed gradient `dv [16, c, tiles]` onto
/// `dx [c, t, f]`, through the padded plane buffer `pad`.
fn transform_input_grad(dv: &[f32], g: &Geometry, pad: &mut [f32], dx: &mut [f32]) {
    let tiles = Tiles::new(g);
    let [to, fo] = tiles.out;
    let [rows, width] = tiles.padded;
    let n = tiles.count();
    let stride = g.c * n;
    for (ch, plane) in dx.chunks_exact_mut(g.t * g.f).enumerate() {
        pad.fill(0.0);
        for ti in 0..to {
            let base = ch * n + ti * fo;
            for tj in 0..fo {
                let e: [[f32; 4]; 4] = std::array::from_fn(|q| {
                    let col = |a: usize| dv[(a * 4 + q) * stride + base + tj];
                    b([col(0), col(1), col(2), col(3)])
                });
                for a in 0..4 {
                    let row = b([e[0][a], e[1][a], e[2][a], e[3][a]]);
                    let dst = &mut pad[(2 * ti + a) * width + 2 * tj..][..4];
                    for (d, val) in dst.iter_mut().zip(row) {
                        *d += val;
                    }
                }
            }
        }
        for (r, out) in plane.chunks_exact_mut(g.f).enumerate().take(rows - 1) {
            out.copy_from_slice(&pad[(r + 1) * width + 1..][..g.f]);
        }
    }
}
}

/// Forward, as [`super::cpu::forward`] (which calls it when [`applies`]).
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
                    vec![0.0f32; tiles.plane()],
                    vec![0.0f32; P * cn],
                    vec![0.0f32; P * on],
                )
            },
            |(pad, v, m), (s, (y, arg))| {
                transform_input(&x[s * g.x_len()..][..g.x_len()], g, pad, v);
                for p in 0..P {
                    let lhs = View::row_major(&u[p * g.o * g.c..][..g.o * g.c], g.c);
                    let rhs = View::row_major(&v[p * cn..][..cn], n);
                    gemm_into(&mut m[p * on..][..on], lhs, rhs, [g.o, g.c, n], false, par);
                }
                transform_output(m, bias, y, arg);
                if post.relu {
                    relu_mask(y, post.mask.map(|mk| &mk[s * g.y_len()..][..g.y_len()]));
                }
            },
        );
}

/// Weight and bias gradients, as [`super::cpu::weight_backward`].
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
            let mut pad = vec![0.0f32; tiles.plane()];
            let mut v = vec![0.0f32; P * cn];
            let mut z = vec![0.0f32; P * on];
            let mut ungated = vec![0.0f32; if gate.is_some() { g.y_len() } else { 0 }];
            for s in ci * chunk..((ci + 1) * chunk).min(g.n) {
                let gs = sample_grad(grad, gate, s, g.y_len(), &mut ungated);
                for (o, d) in db.iter_mut().enumerate() {
                    *d += gs[o * n..][..n].iter().sum::<f32>();
                }
                transform_grad(gs, &argmax[s * g.y_len()..][..g.y_len()], &mut z);
                transform_input(&x[s * g.x_len()..][..g.x_len()], g, &mut pad, &mut v);
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
    let mut parts = partials.into_iter();
    let (mut du, mut db) = parts.next().expect("a batch has at least one sample");
    for (u, b) in parts {
        du.iter_mut().zip(&u).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&b).for_each(|(a, v)| *a += v);
    }
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

/// Input gradient, as [`super::cpu::x_backward`].
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
                vec![0.0f32; tiles.plane()],
                vec![0.0f32; ungated_len],
            )
        },
        |(z, dv, pad, ungated), (s, dxs)| {
            let gs = sample_grad(grad, gate, s, g.y_len(), ungated);
            transform_grad(gs, &argmax[s * g.y_len()..][..g.y_len()], z);
            for p in 0..P {
                // dV[p] [c, tiles] = U[p]ᵀ [c, o] * Z[p] [o, tiles]
                let lhs = View::transposed(&u[p * oc..][..oc], g.c);
                let rhs = View::row_major(&z[p * on..][..on], n);
                gemm_into(&mut dv[p * cn..][..cn], lhs, rhs, [g.c, g.o, n], false, par);
            }
            transform_input_grad(dv, g, pad, dxs);
        },
    );
    dx
}
