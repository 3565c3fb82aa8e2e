//! The conv block as one differentiable operation: "same" convolution + bias, with a max pool
//! folded in (`pool = [1, 1]`: a plain convolution).
//!
//! Why its own operation: on Burn's flex backend, `conv2d`'s weight gradient is a convolution
//! whose kernel is the whole output map and `max_pool2d` with indices walks the full-resolution
//! map; together they took ~85 % of a training step. Here flex runs forward and both gradients
//! as GEMMs per sample: one over an im2col matrix (`cpu`), or, for a 3x3 kernel with a 2x2 pool
//! over two or more channels, 16 in the Winograd domain with 2.25x fewer products (`winograd`).
//! Every other backend (libtorch) composes its own `conv2d` and max-pool primitives, whose
//! backward it already does well.
//!
//! A ReLU and an inverted-dropout mask after the pool are part of the operation too
//! ([`conv_pool_relu`]): the backward reads the block's output and the mask, so neither needs a
//! pass or an autodiff node of its own.
//!
//! The pool indices are opaque: each backend's backward reads only what its own forward wrote.

// burn-tch is deprecated upstream but is the GPU path that builds here; the extension names it.
#![cfg_attr(feature = "tch", allow(deprecated))]

pub mod cpu;
pub mod winograd;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, Backend, Dispatch, ExtensionType, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, IntDType, Shape, Tensor, TensorData};

use super::kernels::{contiguous, f32_slice};
use cpu::{Gate, Geometry, Post};

/// "same" padding for one axis, the extra cell at the end as TensorFlow does for even kernels.
fn same_padding(k: usize) -> (usize, usize) {
    let total = k - 1;
    (total / 2, total - total / 2)
}

/// Burn's `conv2d` options for a stride-1 "same" convolution with `kernel`.
fn same_options(kernel: [usize; 2]) -> ConvOptions<2> {
    ConvOptions::new_with_padding(
        [1, 1],
        [same_padding(kernel[0]), same_padding(kernel[1])],
        [1, 1],
        1,
    )
}

/// What the block applies after the pool; crosses the dispatch boundary with its mask.
#[derive(ExtensionType, Debug, Clone)]
pub enum After<B: Backend> {
    /// Nothing: conv and pool alone.
    Nothing,
    /// ReLU.
    Relu,
    /// ReLU, then times this mask (inverted dropout's 0 or 1/keep, the output's shape).
    ReluMask(FloatTensor<B>),
}

impl<B: Backend> After<B> {
    /// Whether ReLU applies.
    fn relu(&self) -> bool {
        !matches!(self, After::Nothing)
    }

    /// The mask, if any.
    fn mask(&self) -> Option<&FloatTensor<B>> {
        match self {
            After::ReluMask(m) => Some(m),
            _ => None,
        }
    }
}

/// The block's operations, per backend (see the module doc). The default bodies are
/// [`reference`](mod@reference)'s composition of Burn primitives.
#[backend_extension(Flex, Autodiff, LibTorch: cfg(feature = "tch"))]
pub trait ConvPoolBackend: Backend {
    /// `x [n, c, t, f]`, `weight [o, c, kt, kf]`, `bias [o]` -> (`[n, o, t/pt, f/pf]`, indices),
    /// then what `after` says.
    fn conv_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        #[extension_type] after: After<Self>,
        pool: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        reference::conv_pool::<Self>(x, weight, bias, after, pool)
    }

    /// Gradient of `x` for the output gradient `grad` (`output` and `after` are the forward's).
    fn conv_pool_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        indices: IntTensor<Self>,
        output: FloatTensor<Self>,
        #[extension_type] after: After<Self>,
        grad: FloatTensor<Self>,
        pool: [usize; 2],
    ) -> FloatTensor<Self> {
        reference::conv_pool_x_backward::<Self>(x, weight, indices, output, after, grad, pool)
    }

    /// Gradients of `weight` and `bias` for the output gradient `grad`.
    fn conv_pool_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        indices: IntTensor<Self>,
        output: FloatTensor<Self>,
        #[extension_type] after: After<Self>,
        grad: FloatTensor<Self>,
        pool: [usize; 2],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::conv_pool_weight_backward::<Self>(x, weight, indices, output, after, grad, pool)
    }
}

/// The geometry of a call on flex, or `None` when the kernels do not apply (not f32).
fn flex_geometry(x: &FlexTensor, weight: &FlexTensor, pool: [usize; 2]) -> Option<Geometry> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    let (s, w) = (x.shape(), weight.shape());
    Some(Geometry {
        n: s[0],
        c: s[1],
        t: s[2],
        f: s[3],
        o: w[0],
        kernel: [w[2], w[3]],
        pool,
    })
}

/// The winning phases that flex's forward wrote (i32, contiguous).
fn pool_indices(t: &FlexTensor) -> &[i32] {
    t.as_slice::<i32>().expect("flex pool indices are i32")
}

/// The mask of a call on flex, contiguous, when it is f32 like the rest.
fn flex_mask(after: &After<Flex>) -> Option<Option<FlexTensor>> {
    match after.mask() {
        None => Some(None),
        Some(m) if m.dtype() == DType::F32 => Some(Some(contiguous(m))),
        Some(_) => None,
    }
}

impl ConvPoolBackend for Flex {
    fn conv_pool(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        after: After<Self>,
        pool: [usize; 2],
    ) -> (FlexTensor, FlexTensor) {
        let (Some(g), Some(m)) = (flex_geometry(&x, &weight, pool), flex_mask(&after)) else {
            return reference::conv_pool::<Self>(x, weight, bias, after, pool);
        };
        let (x, weight, bias) = (contiguous(&x), contiguous(&weight), contiguous(&bias));
        let [to, fo] = g.out();
        let len = g.n * g.o * to * fo;
        let mut y = vec![0.0f32; len];
        let mut argmax = vec![0i32; len];
        let post = Post {
            relu: after.relu(),
            mask: m.as_ref().map(f32_slice),
        };
        let forward = if winograd::applies(&g) {
            winograd::forward
        } else {
            cpu::forward
        };
        forward(
            f32_slice(&x),
            f32_slice(&weight),
            f32_slice(&bias),
            &g,
            post,
            &mut y,
            &mut argmax,
        );
        let shape = [g.n, g.o, to, fo];
        (
            FlexTensor::from_data(TensorData::new(y, shape)),
            FlexTensor::from_data(TensorData::new(argmax, shape)),
        )
    }

    fn conv_pool_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        indices: FlexTensor,
        output: FlexTensor,
        after: After<Self>,
        grad: FlexTensor,
        pool: [usize; 2],
    ) -> FlexTensor {
        let (Some(g), Some(m)) = (flex_geometry(&x, &weight, pool), flex_mask(&after)) else {
            return reference::conv_pool_x_backward::<Self>(
                x, weight, indices, output, after, grad, pool,
            );
        };
        let (weight, grad, indices, output) = (
            contiguous(&weight),
            contiguous(&grad),
            contiguous(&indices),
            contiguous(&output),
        );
        let x_backward = if winograd::applies(&g) {
            winograd::x_backward
        } else {
            cpu::x_backward
        };
        let dx = x_backward(
            f32_slice(&weight),
            f32_slice(&grad),
            pool_indices(&indices),
            &g,
            gate(after.relu(), &output, m.as_ref()),
        );
        FlexTensor::from_data(TensorData::new(dx, [g.n, g.c, g.t, g.f]))
    }

    fn conv_pool_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        indices: FlexTensor,
        output: FlexTensor,
        after: After<Self>,
        grad: FlexTensor,
        pool: [usize; 2],
    ) -> (FlexTensor, FlexTensor) {
        let (Some(g), Some(m)) = (flex_geometry(&x, &weight, pool), flex_mask(&after)) else {
            return reference::conv_pool_weight_backward::<Self>(
                x, weight, indices, output, after, grad, pool,
            );
        };
        let (x, grad, indices, output) = (
            contiguous(&x),
            contiguous(&grad),
            contiguous(&indices),
            contiguous(&output),
        );
        let weight_backward = if winograd::applies(&g) {
            winograd::weight_backward
        } else {
            cpu::weight_backward
        };
        let (dw, db) = weight_backward(
            f32_slice(&x),
            f32_slice(&grad),
            pool_indices(&indices),
            &g,
            gate(after.relu(), &output, m.as_ref()),
        );
        (
            FlexTensor::from_data(TensorData::new(dw, weight.shape())),
            FlexTensor::from_data(TensorData::new(db, [g.o])),
        )
    }
}

/// The backward's view of the forward's ReLU and mask (`None`: neither was applied).
fn gate<'a>(relu: bool, output: &'a FlexTensor, mask: Option<&'a FlexTensor>) -> Option<Gate<'a>> {
    relu.then(|| Gate {
        output: f32_slice(output),
        mask: mask.map(f32_slice),
    })
}

#[cfg(feature = "tch")]
impl ConvPoolBackend for burn::backend::LibTorch {}

/// The composed implementation (the trait's default bodies), callable on any backend: flex
/// falls back to it for non-f32 tensors, and the tests compare the kernels with it.
pub mod reference {
    use super::*;

    fn kernel(weight: &Shape) -> [usize; 2] {
        [weight[2], weight[3]]
    }

    /// The gradient at the full-resolution conv map from the pooled one.
    fn unpool<B: Backend>(
        x: &FloatTensor<B>,
        out_channels: usize,
        indices: IntTensor<B>,
        grad: FloatTensor<B>,
        pool: [usize; 2],
    ) -> FloatTensor<B> {
        if pool == [1, 1] {
            return grad;
        }
        let s = x.shape();
        // The max-pool backward reads only the shape of its input: an empty map stands in.
        let conv = B::float_empty(
            Shape::new([s[0], out_channels, s[2], s[3]]),
            &x.device(),
            x.dtype().into(),
        );
        B::max_pool2d_with_indices_backward(conv, pool, pool, [0, 0], [1, 1], false, grad, indices)
            .x_grad
    }

    /// What `after` says, on the pooled map `y`.
    fn post<B: Backend>(y: FloatTensor<B>, after: After<B>) -> FloatTensor<B> {
        match after {
            After::Nothing => y,
            After::Relu => B::relu(y),
            After::ReluMask(m) => B::float_mul(B::relu(y), m),
        }
    }

    /// The gradient before [`post`]: times the mask, then ReLU's backward on the `output`.
    fn unpost<B: Backend>(
        grad: FloatTensor<B>,
        output: FloatTensor<B>,
        after: After<B>,
    ) -> FloatTensor<B> {
        match after {
            After::Nothing => grad,
            After::Relu => B::relu_backward(output, grad),
            After::ReluMask(m) => B::relu_backward(output, B::float_mul(grad, m)),
        }
    }

    /// Conv + bias, then max pool with Burn's indices (a dummy for `pool = [1, 1]`), then
    /// what `after` says.
    pub fn conv_pool<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        after: After<B>,
        pool: [usize; 2],
    ) -> (FloatTensor<B>, IntTensor<B>) {
        let options = same_options(kernel(&weight.shape()));
        let conv = B::conv2d(x, weight, Some(bias), options);
        if pool == [1, 1] {
            let device = conv.device();
            let indices = B::int_zeros(Shape::new([1]), &device, IntDType::I64);
            return (post::<B>(conv, after), indices);
        }
        let out =
            B::max_pool2d_with_indices(conv, pool, pool, [0, 0], [1, 1], false, IntDType::I64);
        (post::<B>(out.output, after), out.indices)
    }

    /// Mask and ReLU backward, max-pool backward, then `conv2d_x_backward`.
    pub fn conv_pool_x_backward<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        indices: IntTensor<B>,
        output: FloatTensor<B>,
        after: After<B>,
        grad: FloatTensor<B>,
        pool: [usize; 2],
    ) -> FloatTensor<B> {
        let w = weight.shape();
        let grad = unpost::<B>(grad, output, after);
        let grad = unpool::<B>(&x, w[0], indices, grad, pool);
        B::conv2d_x_backward(x, weight, grad, same_options(kernel(&w)))
    }

    /// Mask and ReLU backward, max-pool backward, then `conv2d_weight_backward` and the bias
    /// sum.
    pub fn conv_pool_weight_backward<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        indices: IntTensor<B>,
        output: FloatTensor<B>,
        after: After<B>,
        grad: FloatTensor<B>,
        pool: [usize; 2],
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let w = weight.shape();
        let grad = unpost::<B>(grad, output, after);
        let grad = unpool::<B>(&x, w[0], indices, grad, pool);
        let bias_grad = B::float_reshape(
            B::float_sum_dims(grad.clone(), &[0, 2, 3]),
            Shape::new([w[0]]),
        );
        let weight_grad = B::conv2d_weight_backward(x, weight, grad, same_options(kernel(&w)));
        (weight_grad, bias_grad)
    }
}

impl<B: Backend + ConvPoolBackend, C: CheckpointStrategy> ConvPoolBackend for Autodiff<B, C> {
    fn conv_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        after: After<Self>,
        pool: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        #[derive(Debug)]
        struct ConvPoolOp;

        /// What the backward reads: `x`, `weight`, the pool indices, the output, `after`.
        type Saved<B> = (
            FloatTensor<B>,
            FloatTensor<B>,
            IntTensor<B>,
            FloatTensor<B>,
            After<B>,
            [usize; 2],
        );

        impl<B: Backend + ConvPoolBackend> Backward<B, 3> for ConvPoolOp {
            type State = Saved<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight, indices, output, after, pool) = ops.state;
                if let Some(node) = node_x {
                    let dx = B::conv_pool_x_backward(
                        x.clone(),
                        weight.clone(),
                        indices.clone(),
                        output.clone(),
                        after.clone(),
                        grad.clone(),
                        pool,
                    );
                    grads.register::<B>(node.id, dx);
                }
                if node_weight.is_some() || node_bias.is_some() {
                    let (dw, db) =
                        B::conv_pool_weight_backward(x, weight, indices, output, after, grad, pool);
                    if let Some(node) = node_weight {
                        grads.register::<B>(node.id, dw);
                    }
                    if let Some(node) = node_bias {
                        grads.register::<B>(node.id, db);
                    }
                }
            }
        }

        let (xp, wp, bp) = (
            x.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
        );
        // The mask is a constant of the operation: no gradient flows to it.
        let after = match after {
            After::Nothing => After::Nothing,
            After::Relu => After::Relu,
            After::ReluMask(m) => After::ReluMask(m.primitive().clone()),
        };
        match ConvPoolOp
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, indices) = B::conv_pool(xp.clone(), wp.clone(), bp, after.clone(), pool);
                let saved = (xp, wp, indices.clone(), y.clone(), after, pool);
                (prep.finish(saved, y), indices)
            }
            OpsKind::UnTracked(prep) => {
                let (y, indices) = B::conv_pool(xp, wp, bp, after, pool);
                (prep.finish(y), indices)
            }
        }
    }
}

/// The block on high-level tensors: `x [n, c, t, f]` -> `[n, o, t/pt, f/pf]`, differentiable
/// on an autodiff device.
pub fn conv_pool(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, pool: [usize; 2]) -> Tensor<4> {
    call(x, weight, bias, After::Nothing, pool)
}

/// [`conv_pool`], then ReLU, then times `mask` (inverted dropout's 0 or 1/keep, the output's
/// shape), in one operation.
pub fn conv_pool_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    pool: [usize; 2],
    mask: Option<Tensor<4>>,
) -> Tensor<4> {
    let after = mask.map_or(After::Relu, |m| After::ReluMask(m.into_dispatch()));
    call(x, weight, bias, after, pool)
}

fn call(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    after: After<Dispatch>,
    pool: [usize; 2],
) -> Tensor<4> {
    let (y, _indices) = <Dispatch as ConvPoolBackend>::conv_pool(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        after,
        pool,
    );
    Tensor::from_dispatch(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rng;
    use crate::model::kernels::testing::{random, rel_err};
    use burn::tensor::activation::relu;
    use burn::tensor::module::{conv2d, max_pool2d};
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Device, Tensor};

    struct Case {
        n: usize,
        c: usize,
        o: usize,
        t: usize,
        f: usize,
        kernel: [usize; 2],
        pool: [usize; 2],
    }

    /// Batch 1 and more, one and several channels, odd and even kernels, pools that divide the
    /// map and pools that drop its last rows/columns, and a plain convolution.
    fn cases() -> Vec<Case> {
        let mut v = Vec::new();
        let kernels = [[3, 3], [4, 2], [1, 5], [2, 2], [5, 1], [3, 4]];
        let pools = [[2, 2], [3, 1], [1, 1], [2, 3], [1, 2]];
        let mut rng = Rng::new(11, "cases");
        for (i, kernel) in kernels.into_iter().enumerate() {
            for (j, pool) in pools.into_iter().enumerate() {
                v.push(Case {
                    n: [1, 3, 2][(i + j) % 3],
                    c: [1, 2, 5][(i * 2 + j) % 3],
                    o: 1 + rng.below(6),
                    t: 6 + rng.below(7),
                    f: 4 + rng.below(7),
                    kernel,
                    pool,
                });
            }
        }
        v
    }

    /// 3x3 kernels, 2x2 pools, two or more channels (the Winograd kernels): one tile and many,
    /// maps whose last row or column the pool drops, batch 1, and a batch whose weight-gradient
    /// chunks hold several samples.
    fn winograd_cases() -> Vec<Case> {
        let dims = [
            (1, 8, 3, 2, 3),
            (3, 9, 5, 7, 5),
            (2, 16, 4, 9, 10),
            (1, 12, 7, 6, 4),
            (2, 2, 3, 5, 7),
            (1, 3, 2, 3, 2),
            (37, 9, 5, 6, 4),
        ];
        dims.into_iter()
            .map(|(n, c, o, t, f)| Case {
                n,
                c,
                o,
                t,
                f,
                kernel: [3, 3],
                pool: [2, 2],
            })
            .collect()
    }

    #[test]
    fn the_winograd_cases_take_the_winograd_kernels() {
        for Case {
            n,
            c,
            o,
            t,
            f,
            kernel,
            pool,
        } in winograd_cases()
        {
            let g = Geometry {
                n,
                c,
                t,
                f,
                o,
                kernel,
                pool,
            };
            assert!(winograd::applies(&g), "{g:?}");
        }
        let first_block = Geometry {
            n: 32,
            c: 1,
            t: 100,
            f: 40,
            o: 64,
            kernel: [3, 3],
            pool: [2, 2],
        };
        assert!(!winograd::applies(&first_block));
    }

    #[test]
    fn forward_and_gradients_equal_burn_conv2d_then_max_pool() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(5, "conv");
        for case in cases().into_iter().chain(winograd_cases()) {
            let Case {
                n,
                c,
                o,
                t,
                f,
                kernel,
                pool,
            } = case;
            let x = random([n, c, t, f], &mut rng, &device).require_grad();
            let w = random([o, c, kernel[0], kernel[1]], &mut rng, &device).require_grad();
            let b = random([o], &mut rng, &device).require_grad();
            let out = [n, o, t / pool[0], f / pool[1]];
            let r = random(out, &mut rng, &device);
            let mask = dropout_like(out, &mut rng, &device);
            for post in Post::ALL {
                let ours = post.ours(x.clone(), w.clone(), b.clone(), pool, &mask);
                let g1 = (ours.clone() * r.clone()).sum().backward();
                let conv = conv2d(x.clone(), w.clone(), Some(b.clone()), same_options(kernel));
                let want = post.burn(max_pool2d(conv, MaxPoolOptions::new(pool)), &mask);
                let g2 = (want.clone() * r.clone()).sum().backward();

                let label =
                    format!("n{n} c{c} o{o} {t}x{f} kernel {kernel:?} pool {pool:?} {post:?}");
                assert_eq!(ours.dims(), want.dims(), "{label}");
                let grads = [
                    ("y", rel_err(ours.inner(), want.inner())),
                    ("dx", rel_err(x.grad(&g1).unwrap(), x.grad(&g2).unwrap())),
                    ("dw", rel_err(w.grad(&g1).unwrap(), w.grad(&g2).unwrap())),
                ];
                for (what, err) in grads {
                    assert!(err < 1e-4, "{label}: {what} relative error {err}");
                }
                let err = rel_err(b.grad(&g1).unwrap(), b.grad(&g2).unwrap());
                assert!(err < 1e-4, "{label}: db relative error {err}");
            }
        }
    }

    /// What follows the pool in a test case.
    #[derive(Debug, Clone, Copy)]
    enum Post {
        Nothing,
        Relu,
        ReluDropout,
    }

    impl Post {
        const ALL: [Post; 3] = [Post::Nothing, Post::Relu, Post::ReluDropout];

        fn after<B: Backend>(self, mask: &FloatTensor<B>) -> After<B> {
            match self {
                Post::Nothing => After::Nothing,
                Post::Relu => After::Relu,
                Post::ReluDropout => After::ReluMask(mask.clone()),
            }
        }

        /// Through the operation.
        fn ours(
            self,
            x: Tensor<4>,
            w: Tensor<4>,
            b: Tensor<1>,
            pool: [usize; 2],
            mask: &Tensor<4>,
        ) -> Tensor<4> {
            call(x, w, b, self.after(&mask.clone().into_dispatch()), pool)
        }

        /// Through Burn's own ReLU and multiplication.
        fn burn(self, y: Tensor<4>, mask: &Tensor<4>) -> Tensor<4> {
            match self {
                Post::Nothing => y,
                Post::Relu => relu(y),
                Post::ReluDropout => relu(y) * mask.clone(),
            }
        }
    }

    /// An inverted-dropout mask at rate 0.3: 0 or 1/0.7.
    fn dropout_like(shape: [usize; 4], rng: &mut Rng, device: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| if rng.next_f32() < 0.7 { 1.0 / 0.7 } else { 0.0 })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    #[test]
    fn the_composed_path_equals_the_kernels() {
        // What libtorch runs (the trait's default bodies), checked on flex primitives.
        let device = Device::flex();
        let mut rng = Rng::new(6, "composed");
        for case in cases().into_iter().step_by(3).chain(winograd_cases()) {
            let Case {
                n,
                c,
                o,
                t,
                f,
                kernel,
                pool,
            } = case;
            let prim = |t: Tensor<4>| t.try_into_primitive::<Flex>().unwrap();
            let x = random([n, c, t, f], &mut rng, &device);
            let w = random([o, c, kernel[0], kernel[1]], &mut rng, &device);
            let b = random([o], &mut rng, &device)
                .try_into_primitive::<Flex>()
                .unwrap();
            let g = random([n, o, t / pool[0], f / pool[1]], &mut rng, &device);
            let out = [n, o, t / pool[0], f / pool[1]];
            let mask = prim(dropout_like(out, &mut rng, &device));
            let (x, w, g) = (prim(x), prim(w), prim(g));
            let wrap = |p: FlexTensor| Tensor::<4>::from_primitive::<Flex>(p);
            let wrap1 = |p: FlexTensor| Tensor::<1>::from_primitive::<Flex>(p);

            for post in Post::ALL {
                let after = || post.after(&mask);
                let (y1, i1) = Flex::conv_pool(x.clone(), w.clone(), b.clone(), after(), pool);
                let (y2, i2) =
                    reference::conv_pool::<Flex>(x.clone(), w.clone(), b.clone(), after(), pool);
                let dx1 = Flex::conv_pool_x_backward(
                    x.clone(),
                    w.clone(),
                    i1.clone(),
                    y1.clone(),
                    after(),
                    g.clone(),
                    pool,
                );
                let dx2 = reference::conv_pool_x_backward::<Flex>(
                    x.clone(),
                    w.clone(),
                    i2.clone(),
                    y2.clone(),
                    after(),
                    g.clone(),
                    pool,
                );
                let (dw1, db1) = Flex::conv_pool_weight_backward(
                    x.clone(),
                    w.clone(),
                    i1,
                    y1.clone(),
                    after(),
                    g.clone(),
                    pool,
                );
                let (dw2, db2) = reference::conv_pool_weight_backward::<Flex>(
                    x.clone(),
                    w.clone(),
                    i2,
                    y2.clone(),
                    after(),
                    g.clone(),
                    pool,
                );
                let label = format!("kernel {kernel:?} pool {pool:?} {post:?}");
                assert!(rel_err(wrap(y1), wrap(y2)) < 1e-4, "{label}: y");
                assert!(rel_err(wrap(dx1), wrap(dx2)) < 1e-4, "{label}: dx");
                assert!(rel_err(wrap(dw1), wrap(dw2)) < 1e-4, "{label}: dw");
                assert!(rel_err(wrap1(db1), wrap1(db2)) < 1e-4, "{label}: db");
            }
        }
    }

    #[test]
    fn relu_and_mask_inside_equal_burns_ops_after_to_the_bit() {
        // The model used to apply Burn's ReLU and dropout multiplication after the block: the
        // fused block must train to the same weights, bit for bit.
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(8, "fused");
        let x = random([5, 3, 12, 10], &mut rng, &device).require_grad();
        let w = random([4, 3, 3, 3], &mut rng, &device).require_grad();
        let b = random([4], &mut rng, &device).require_grad();
        let r = random([5, 4, 6, 5], &mut rng, &device);
        let mask = dropout_like([5, 4, 6, 5], &mut rng, &device);
        let fused = conv_pool_relu(x.clone(), w.clone(), b.clone(), [2, 2], Some(mask.clone()));
        let g1 = (fused.clone() * r.clone()).sum().backward();
        let composed = relu(conv_pool(x.clone(), w.clone(), b.clone(), [2, 2])) * mask;
        let g2 = (composed.clone() * r).sum().backward();
        assert_eq!(fused.into_data(), composed.into_data());
        assert_eq!(
            x.grad(&g1).unwrap().into_data(),
            x.grad(&g2).unwrap().into_data()
        );
        assert_eq!(
            w.grad(&g1).unwrap().into_data(),
            w.grad(&g2).unwrap().into_data()
        );
        assert_eq!(
            b.grad(&g1).unwrap().into_data(),
            b.grad(&g2).unwrap().into_data()
        );
    }

    #[test]
    fn gradients_are_bit_identical_across_runs() {
        // The weight gradient is summed per fixed chunk of samples: thread scheduling must not
        // change a bit, or resumed training would drift from uninterrupted training. One
        // channel takes the im2col kernels, nine the Winograd ones.
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(7, "det");
        for c in [1, 9] {
            let x = random([37, c, 12, 10], &mut rng, &device);
            let w = random([8, c, 3, 3], &mut rng, &device);
            let b = random([8], &mut rng, &device);
            let run = || {
                let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
                let y = conv_pool(x.clone(), w.clone(), b.clone(), [2, 2]);
                let grads = y.sum().backward();
                let dx = x.grad(&grads).unwrap().into_data();
                (w.grad(&grads).unwrap().into_data(), dx)
            };
            let first = run();
            for _ in 0..5 {
                assert_eq!(run(), first, "{c} channels");
            }
        }
    }
}
