//! Building blocks of the model's own CPU kernels (`conv`, `recurrence`): a bounds-checked GEMM
//! call and run-time selection of AVX-512/AVX2 code for loop-heavy functions.

use burn::backend::flex::FlexTensor;
use gemm::Parallelism;

/// A flex tensor with contiguous storage (the same tensor when it already is).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The f32 values of a contiguous flex tensor.
pub(crate) fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// Compiles a loop-heavy function for AVX-512 and AVX2 beside the baseline, and picks one at
/// run time: the crate is built for baseline x86-64 (SSE2), which left these loops 4-8x
/// narrower than the CPU (gemm and flex dispatch the same way).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $body
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the features `v4` was compiled for were just detected.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            #[inline(always)]
            fn base($($arg: $ty),*) $body
            base($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// A row-major or transposed view for [`gemm_into`]: element `(r, c)` is at `r*rs + c*cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix whose rows are `row_len` apart.
    pub fn row_major(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            rs: row_len,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows are `row_len` apart.
    pub fn transposed(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: row_len,
        }
    }
}

/// `dst [m, n] (+)= a [m, k] * b [k, n]`, `dst` row-major.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    a: View<'_>,
    b: View<'_>,
    [m, k, n]: [usize; 3],
    accumulate: bool,
    par: Parallelism,
) {
    let last = |v: &View<'_>, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(dst.len() >= m * n, "gemm: destination too small");
    assert!(last(&a, m, k) < a.data.len(), "gemm: lhs out of bounds");
    assert!(last(&b, k, n) < b.data.len(), "gemm: rhs out of bounds");
    // SAFETY: the asserts above keep every element that gemm reads or writes inside the slices;
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Helpers of the kernels' tests.
#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::model::Rng;

    /// A tensor of uniform(-1, 1) values.
    pub fn random<const D: usize>(shape: [usize; D], rng: &mut Rng, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// max |a - b| / max |b|.
    pub fn rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }
}
