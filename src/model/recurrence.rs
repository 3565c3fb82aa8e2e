//! The LSTM's recurrence (every time step after the input projection) as one differentiable
//! operation on the CPU.
//!
//! Why: composed of Burn ops, each of the 25 steps of the reference model is a dozen small
//! tensor operations and as many autodiff nodes; on flex their fixed costs, not the
//! arithmetic, took two thirds of the LSTM's time. Here a step is one small GEMM and one pass
//! over the gates, forward and backward. Other backends (libtorch) keep the composed version in
//! `lstm.rs`, which is also what the tests compare with.
//!
//! Gate order i, f, o, g (as `lstm.rs`). The forward saves i, f, o, g and c of every step
//! (`[T, 5, B, H]`) for the backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use gemm::Parallelism;

use super::kernels::{View, contiguous, f32_slice, gemm_into};

/// The recurrence's operations, on the backends that have them (flex, and autodiff over it).
#[backend_extension(Flex, Autodiff)]
pub trait RecurrenceBackend: Backend {
    /// `proj [B, T, 4H]` (input projection + bias), `w_rec [H, 4H]`, `mask [B, H]` (applied to
    /// the state fed back) -> (last hidden state `[B, H]`, saved activations `[T, 5, B, H]`).
    fn lstm_recurrence(
        proj: FloatTensor<Self>,
        w_rec: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of `proj` and `w_rec` for the gradient `grad` of the last hidden state.
    fn lstm_recurrence_backward(
        w_rec: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (w_rec, mask, saved, grad);
        panic!("second-order gradients of the LSTM recurrence are not supported")
    }
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The forward on slices: returns `h_last [B, H]` and fills `saved [T, 5, B, H]`.
fn forward(proj: &[f32], w_rec: &[f32], mask: &[f32], d: Dims, saved: &mut [f32]) -> Vec<f32> {
    let Dims { b, t, h } = d;
    let (g4, bh) = (4 * h, b * h);
    let mut hidden = vec![0.0f32; bh];
    let mut c = vec![0.0f32; bh];
    let mut gates = vec![0.0f32; b * g4];
    let mut fed = vec![0.0f32; bh];
    let w = View::row_major(w_rec, g4);
    for step in 0..t {
        for s in 0..b {
            gates[s * g4..(s + 1) * g4].copy_from_slice(&proj[(s * t + step) * g4..][..g4]);
        }
        if step > 0 {
            fed.iter_mut()
                .zip(hidden.iter().zip(mask))
                .for_each(|(f, (x, m))| *f = x * m);
            let lhs = View::row_major(&fed, h);
            gemm_into(&mut gates, lhs, w, [b, h, g4], true, Parallelism::None);
        }
        let out = &mut saved[step * 5 * bh..(step + 1) * 5 * bh];
        let (si, rest) = out.split_at_mut(bh);
        let (sf, rest) = rest.split_at_mut(bh);
        let (so, rest) = rest.split_at_mut(bh);
        let (sg, sc) = rest.split_at_mut(bh);
        for s in 0..b {
            let row = &gates[s * g4..(s + 1) * g4];
            for j in 0..h {
                let k = s * h + j;
                let (i, f, o, g) = (
                    sigmoid(row[j]),
                    sigmoid(row[h + j]),
                    sigmoid(row[2 * h + j]),
                    row[3 * h + j].tanh(),
                );
                // At step 0 the state is zero: no forget term (as the composed version).
                let cell = if step > 0 { f * c[k] + i * g } else { i * g };
                c[k] = cell;
                hidden[k] = o * cell.tanh();
                (si[k], sf[k], so[k], sg[k], sc[k]) = (i, f, o, g, cell);
            }
        }
    }
    hidden
}

/// The backward on slices: `(dproj [B, T, 4H], dw_rec [H, 4H])`.
fn backward(
    w_rec: &[f32],
    mask: &[f32],
    saved: &[f32],
    grad: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, t, h } = d;
    let (g4, bh) = (4 * h, b * h);
    let mut dproj = vec![0.0f32; b * t * g4];
    let mut dw = vec![0.0f32; h * g4];
    let mut dh = grad.to_vec();
    let mut dc = vec![0.0f32; bh];
    let mut dgates = vec![0.0f32; b * g4];
    let mut fed = vec![0.0f32; bh];
    let part = |step: usize, k: usize| &saved[(step * 5 + k) * bh..][..bh];
    // The cell state before step 0.
    let zero_cell = vec![0.0f32; bh];
    let w_t = View::transposed(w_rec, g4);
    for step in (0..t).rev() {
        let (si, sf, so, sg, sc) = (
            part(step, 0),
            part(step, 1),
            part(step, 2),
            part(step, 3),
            part(step, 4),
        );
        let sc_prev = if step > 0 {
            part(step - 1, 4)
        } else {
            &zero_cell
        };
        for s in 0..b {
            let row = &mut dgates[s * g4..(s + 1) * g4];
            for j in 0..h {
                let k = s * h + j;
                let (i, f, o, g, cell) = (si[k], sf[k], so[k], sg[k], sc[k]);
                let tc = cell.tanh();
                let dcell = dc[k] + dh[k] * o * (1.0 - tc * tc);
                row[j] = dcell * g * i * (1.0 - i);
                row[h + j] = dcell * sc_prev[k] * f * (1.0 - f);
                row[2 * h + j] = dh[k] * tc * o * (1.0 - o);
                row[3 * h + j] = dcell * i * (1.0 - g * g);
                dc[k] = dcell * f;
            }
            dproj[(s * t + step) * g4..][..g4].copy_from_slice(row);
        }
        if step == 0 {
            break;
        }
        // The state fed into this step: h_{step-1} * mask, h = o * tanh(c).
        let (po, pc) = (part(step - 1, 2), part(step - 1, 4));
        for (k, v) in fed.iter_mut().enumerate() {
            *v = po[k] * pc[k].tanh() * mask[k];
        }
        let dg = View::row_major(&dgates, g4);
        // dW += fed^T [H, B] * dgates [B, 4H]
        let fed_t = View::transposed(&fed, h);
        gemm_into(&mut dw, fed_t, dg, [h, b, g4], true, Parallelism::None);
        // dh_{step-1} = (dgates [B, 4H] * W^T [4H, H]) * mask
        gemm_into(&mut dh, dg, w_t, [b, g4, h], false, Parallelism::None);
        dh.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
    }
    (dproj, dw)
}

impl RecurrenceBackend for Flex {
    fn lstm_recurrence(
        proj: FlexTensor,
        w_rec: FlexTensor,
        mask: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let s = proj.shape();
        let d = Dims {
            b: s[0],
            t: s[1],
            h: s[2] / 4,
        };
        let (proj, w_rec, mask) = (contiguous(&proj), contiguous(&w_rec), contiguous(&mask));
        let mut saved = vec![0.0f32; d.t * 5 * d.b * d.h];
        let last = forward(
            f32_slice(&proj),
            f32_slice(&w_rec),
            f32_slice(&mask),
            d,
            &mut saved,
        );
        (
            FlexTensor::from_data(TensorData::new(last, [d.b, d.h])),
            FlexTensor::from_data(TensorData::new(saved, [d.t, 5, d.b, d.h])),
        )
    }

    fn lstm_recurrence_backward(
        w_rec: FlexTensor,
        mask: FlexTensor,
        saved: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let s = saved.shape();
        let d = Dims {
            b: s[2],
            t: s[0],
            h: s[3],
        };
        let (w_rec, mask, saved, grad) = (
            contiguous(&w_rec),
            contiguous(&mask),
            contiguous(&saved),
            contiguous(&grad),
        );
        let (dproj, dw) = backward(
            f32_slice(&w_rec),
            f32_slice(&mask),
            f32_slice(&saved),
            f32_slice(&grad),
            d,
        );
        (
            FlexTensor::from_data(TensorData::new(dproj, [d.b, d.t, 4 * d.h])),
            FlexTensor::from_data(TensorData::new(dw, [d.h, 4 * d.h])),
        )
    }
}

impl<B: Backend + RecurrenceBackend, C: CheckpointStrategy> RecurrenceBackend for Autodiff<B, C> {
    fn lstm_recurrence(
        proj: FloatTensor<Self>,
        w_rec: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct RecurrenceOp;

        impl<B: Backend + RecurrenceBackend> Backward<B, 2> for RecurrenceOp {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_proj, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (w_rec, mask, saved) = ops.state;
                let (dproj, dw) = B::lstm_recurrence_backward(w_rec, mask, saved, grad);
                if let Some(node) = node_proj {
                    grads.register::<B>(node.id, dproj);
                }
                if let Some(node) = node_w {
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        // The mask is a constant (dropout): no gradient flows into it.
        let (pp, wp, mp) = (
            proj.primitive().clone(),
            w_rec.primitive().clone(),
            mask.primitive().clone(),
        );
        let (last, saved) = B::lstm_recurrence(pp, wp.clone(), mp.clone());
        let saved_out = saved.clone();
        match RecurrenceOp
            .prepare::<C>([proj.node(), w_rec.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => (
                prep.finish((wp, mp, saved), last),
                from_inner::<B, C>(saved_out),
            ),
            OpsKind::UnTracked(prep) => (prep.finish(last), from_inner::<B, C>(saved_out)),
        }
    }
}

/// An untracked autodiff tensor around an inner primitive.
fn from_inner<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    <Autodiff<B, C> as burn::backend::AutodiffBackend>::from_inner(t)
}

/// The recurrence on high-level tensors: last hidden state `[B, H]` of `proj [B, T, 4H]`.
/// Only for host (flex) tensors; see the module doc.
pub fn lstm_recurrence(proj: Tensor<3>, w_rec: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    let (last, _saved) = <Dispatch as RecurrenceBackend>::lstm_recurrence(
        proj.into_dispatch(),
        w_rec.into_dispatch(),
        mask.into_dispatch(),
    );
    Tensor::from_dispatch(last)
}
