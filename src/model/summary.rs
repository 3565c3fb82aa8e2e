//! A Keras-`summary()`-like table: per layer its output shape, parameter count and analytic
//! forward FLOPs (a multiply-add counts 2).

use std::fmt;

use super::spec::{Architecture, ModelSpec};
use crate::config::InputStrategy;

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Layer name, e.g. `branch0/conv1`.
    pub name: String,
    /// Output shape per sample (batch dimension left out).
    pub output_shape: Vec<usize>,
    /// Trainable parameters.
    pub params: u64,
    /// Forward FLOPs per sample.
    pub flops: u64,
}

/// The whole table plus totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    /// Rows in forward order.
    pub layers: Vec<LayerSummary>,
}

impl ModelSummary {
    /// Build from the architecture alone (no weights needed).
    pub fn of(spec: &ModelSpec) -> Self {
        let mut layers = Vec::new();
        let branch_names: Vec<String> = match spec.strategy {
            InputStrategy::StackedChannels => vec![String::new()],
            InputStrategy::SeparateBranches => (0..spec.input.assets)
                .map(|a| format!("asset{a}/"))
                .collect(),
        };
        for prefix in &branch_names {
            let mut c_in = spec.branch_in_channels();
            let [mut t, mut f] = spec.map_after(None);
            for (i, c) in spec.conv.iter().enumerate() {
                let k = (c.kernel[0] * c.kernel[1]) as u64;
                let (ci, co) = (c_in as u64, c.filters as u64);
                let cells = (t * f) as u64;
                layers.push(LayerSummary {
                    name: format!("{prefix}conv{}", i + 1),
                    output_shape: vec![c.filters, t, f],
                    params: co * ci * k + co,
                    flops: 2 * ci * k * co * cells + co * cells,
                });
                let (pt, pf) = (t / c.pool[0], f / c.pool[1]);
                let out = (c.filters * pt * pf) as u64;
                layers.push(LayerSummary {
                    name: format!("{prefix}pool{}", i + 1),
                    output_shape: vec![c.filters, pt, pf],
                    params: 0,
                    flops: out * (c.pool[0] * c.pool[1]) as u64,
                });
                (t, f, c_in) = (pt, pf, c.filters);
            }
        }
        let mut d_in = if spec.architecture == Architecture::MlpLastStep {
            (spec.input.assets * spec.input.features) as u64
        } else {
            let (steps, width) = spec.sequence();
            let h = spec.lstm_units as u64;
            let (d, tt) = (width as u64, steps as u64);
            layers.push(LayerSummary {
                name: "lstm".into(),
                output_shape: vec![spec.lstm_units],
                params: 4 * h * (d + h + 1),
                // Input and recurrent matmuls; the gate element-wise work is left out (< 1%).
                flops: 2 * tt * 4 * h * (d + h),
            });
            h
        };
        for (i, dl) in spec.dense.iter().enumerate() {
            let u = dl.units as u64;
            layers.push(LayerSummary {
                name: format!("dense{}", i + 1),
                output_shape: vec![dl.units],
                params: d_in * u + u,
                flops: 2 * d_in * u,
            });
            d_in = u;
        }
        let k = spec.num_classes as u64;
        layers.push(LayerSummary {
            name: "logits".into(),
            output_shape: vec![spec.num_classes],
            params: d_in * k + k,
            flops: 2 * d_in * k,
        });
        Self { layers }
    }

    /// Total trainable parameters.
    pub fn total_params(&self) -> u64 {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Total forward FLOPs per sample.
    pub fn total_flops(&self) -> u64 {
        self.layers.iter().map(|l| l.flops).sum()
    }
}

fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |s: &[usize]| {
            let inner: Vec<String> = s.iter().map(usize::to_string).collect();
            format!("(None, {})", inner.join(", "))
        };
        writeln!(
            f,
            "{:<18} {:<22} {:>12} {:>10}",
            "Layer", "Output shape", "Params", "FLOPs"
        )?;
        writeln!(f, "{}", "-".repeat(65))?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<18} {:<22} {:>12} {:>10}",
                l.name,
                shape(&l.output_shape),
                l.params,
                human(l.flops)
            )?;
        }
        writeln!(f, "{}", "-".repeat(65))?;
        writeln!(f, "Total params: {}", self.total_params())?;
        write!(f, "Forward FLOPs per sample: {}", human(self.total_flops()))
    }
}
