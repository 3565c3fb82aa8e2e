//! Host values onto a device without stalling it.
//!
//! Burn's `from_data` on a libtorch CUDA device copies from pageable memory, which waits for
//! every kernel already queued on the stream: once per tensor per step, the host stops queuing
//! until the GPU has drained. Here a batch goes through pinned host memory and a non-blocking
//! copy instead (PyTorch's `pin_memory` + `.to(non_blocking=True)`), so the host goes on queuing
//! the step while the copy waits its turn; libtorch's pinned allocator keeps the staging buffer
//! until the copy has run. On the CPU (flex) host memory is the device's: `from_data` as usual.

// burn-tch is deprecated upstream but is the GPU path that builds here.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::tensor::{Device, Int, Tensor, TensorData};

/// `data` as a float tensor on `device` (autodiff when `device` is).
pub fn floats<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if let Some(gpu) = libtorch::cuda(device) {
        let t =
            Tensor::<D>::from_primitive::<burn::backend::LibTorch>(libtorch::pinned(&data, gpu));
        return if device.is_autodiff() {
            Tensor::from_inner(t)
        } else {
            t
        };
    }
    Tensor::from_data(data, device)
}

/// `data` as an integer tensor on `device` (autodiff when `device` is).
pub fn ints<const D: usize>(data: TensorData, device: &Device) -> Tensor<D, Int> {
    #[cfg(feature = "tch")]
    if let Some(gpu) = libtorch::cuda(device) {
        let t = Tensor::<D, Int>::from_primitive::<burn::backend::LibTorch>(libtorch::pinned(
            &data, gpu,
        ));
        return if device.is_autodiff() {
            Tensor::from_inner(t)
        } else {
            t
        };
    }
    Tensor::from_data(data, device)
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{DispatchDevice, LibTorchDevice};
    use burn::tensor::{DType, Device, TensorData};

    /// The CUDA index of `device` (or of the device an autodiff device wraps) on libtorch.
    pub(super) fn cuda(device: &Device) -> Option<usize> {
        match device.clone().without_autodiff().as_dispatch() {
            DispatchDevice::LibTorch(LibTorchDevice::Cuda(n)) => Some(*n),
            _ => None,
        }
    }

    /// `data` staged in pinned host memory and queued for a non-blocking copy to GPU `gpu`.
    pub(super) fn pinned(data: &TensorData, gpu: usize) -> TchTensor {
        let kind = match data.dtype() {
            DType::F32 => tch::Kind::Float,
            DType::F64 => tch::Kind::Double,
            DType::I64 => tch::Kind::Int64,
            DType::I32 => tch::Kind::Int,
            other => unreachable!("batches are f32/f64/i32/i64, not {other:?}"),
        };
        let dims: Vec<i64> = data.shape().iter().map(|&d| d as i64).collect();
        let device = tch::Device::Cuda(gpu);
        let host = tch::Tensor::from_data_size(data.as_bytes(), &dims, kind).pin_memory(device);
        TchTensor::new(host.to_device_(device, kind, true, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_arrive_unchanged_and_keep_the_autodiff_mode() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let x: Tensor<3> = floats(
                TensorData::new(vec![1.5f32, -2.0, 0.25, 8.0], [1, 2, 2]),
                &device,
            );
            let y: Tensor<1, Int> = ints(TensorData::new(vec![2i64, 0, 1], [3]), &device);
            assert_eq!(x.dims(), [1, 2, 2]);
            assert_eq!(
                x.to_data().try_to_vec::<f32>().unwrap(),
                [1.5, -2.0, 0.25, 8.0]
            );
            assert_eq!(
                y.to_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
                [2, 0, 1]
            );
            assert_eq!(x.device().is_autodiff(), device.is_autodiff());
        }
    }
}
