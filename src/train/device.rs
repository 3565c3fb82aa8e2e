//! Backend and device selection from `model.backend` / `model.device` (or the CLI flags).

use burn::tensor::Device;

use super::TrainError;
use crate::config::Backend;

/// A resolved device and a human description for logs.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    /// The device (without autodiff; the trainer enables it).
    pub device: Device,
    /// e.g. `flex (cpu)`.
    pub description: String,
}

/// Parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

fn parse_device(s: &str) -> Result<DeviceSpec, TrainError> {
    let bad = |reason: &str| TrainError::Device {
        device: s.to_string(),
        reason: reason.to_string(),
    };
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:") {
            Some(n) => n
                .parse()
                .map(DeviceSpec::Cuda)
                .map_err(|_| bad("expected `cpu` or `cuda:N` with N a GPU index")),
            None => Err(bad("expected `cpu` or `cuda:N`")),
        },
    }
}

/// Resolve the backend and device, or say clearly why not.
pub fn select_device(backend: Backend, device: &str) -> Result<DeviceChoice, TrainError> {
    let spec = parse_device(device)?;
    match backend {
        Backend::Flex => match spec {
            DeviceSpec::Cpu => Ok(DeviceChoice {
                device: Device::flex(),
                description: "flex (cpu)".into(),
            }),
            DeviceSpec::Cuda(_) => Err(TrainError::Device {
                device: device.to_string(),
                reason: "the flex backend runs on the CPU only; for a GPU use \
                         `--backend tch --device cuda:N` (a build with `--features tch`)"
                    .into(),
            }),
        },
        Backend::Tch => tch_device(spec, device),
        Backend::Cuda => Err(TrainError::BackendNotCompiled {
            backend: "cuda".into(),
            hint: "burn-cuda (CubeCL) is not wired into binance-ml: no GPU has tested it here; \
                   use `--backend tch --device cuda:N` (a build with `--features tch`) for a GPU"
                .into(),
        }),
    }
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream but is the GPU path that builds here.
fn tch_device(spec: DeviceSpec, text: &str) -> Result<DeviceChoice, TrainError> {
    match spec {
        DeviceSpec::Cpu => Ok(DeviceChoice {
            device: Device::libtorch(),
            description: "tch (libtorch cpu)".into(),
        }),
        DeviceSpec::Cuda(n) => {
            // Asked before any tensor exists: libtorch panics on a GPU it does not have.
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if n < count {
                Ok(DeviceChoice {
                    device: Device::libtorch_cuda(n),
                    description: format!("tch (libtorch cuda:{n})"),
                })
            } else {
                Err(TrainError::Device {
                    device: text.to_string(),
                    reason: format!(
                        "no CUDA GPU {n}: libtorch sees {count} (is this a CUDA build of \
                         libtorch, and is the driver visible?)"
                    ),
                })
            }
        }
    }
}

#[cfg(not(feature = "tch"))]
fn tch_device(_spec: DeviceSpec, _text: &str) -> Result<DeviceChoice, TrainError> {
    Err(TrainError::BackendNotCompiled {
        backend: "tch".into(),
        hint: "rebuild with `--features tch` against libtorch (scripts/install-libtorch.sh; \
               README, Backends)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_cpu_is_always_available() {
        let d = select_device(Backend::Flex, "cpu").unwrap();
        assert_eq!(d.description, "flex (cpu)");
    }

    #[test]
    fn bad_devices_and_missing_backends_are_clear() {
        let e = select_device(Backend::Flex, "cuda:0").unwrap_err();
        assert!(e.to_string().contains("CPU only"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::ExitCode::Usage);
        let e = select_device(Backend::Flex, "gpu7").unwrap_err();
        assert!(e.to_string().contains("cuda:N"), "{e}");
        let e = select_device(Backend::Flex, "cuda:x").unwrap_err();
        assert!(e.to_string().contains("GPU index"), "{e}");
        let e = select_device(Backend::Cuda, "cuda:0").unwrap_err();
        assert!(e.to_string().contains("not compiled"), "{e}");
        #[cfg(not(feature = "tch"))]
        {
            let e = select_device(Backend::Tch, "cpu").unwrap_err();
            assert!(e.to_string().contains("--features tch"), "{e}");
            assert_eq!(e.exit_code(), crate::exit::ExitCode::Usage);
        }
    }
}
