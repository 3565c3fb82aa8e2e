//! Permutation importance (model-agnostic): shuffle one feature, or one group of features,
//! across the scored windows — each window gets another window's whole series of it — and
//! measure how much accuracy falls and log loss rises. Repeated with several seeds; the
//! spread is the standard deviation over the repeats.

use serde::Serialize;

use super::calibration::softmax;
use super::metrics;
use crate::model::{Network, Rng, infer};
use crate::train::TrainError;

/// What is shuffled: a name and the `(asset channel, feature)` positions it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Shuffled {
    /// Feature column or group name.
    pub name: String,
    /// True for a group of features.
    pub group: bool,
    /// Positions in the `[assets, T, features]` window (every time step is shuffled).
    pub positions: Vec<(usize, usize)>,
}

/// The importance of one feature or group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Importance {
    /// Feature column or group name.
    pub name: String,
    /// True for a group.
    pub group: bool,
    /// Mean accuracy drop over the repeats (positive: the model needs it).
    pub accuracy_drop: f64,
    /// Standard deviation of the accuracy drop over the repeats.
    pub accuracy_drop_sd: f64,
    /// Mean log-loss rise over the repeats.
    pub log_loss_rise: f64,
    /// Standard deviation of the log-loss rise.
    pub log_loss_rise_sd: f64,
}

/// Accuracy and log loss of `model` on windows `x`.
fn scores(
    model: &Network,
    x: &[f32],
    labels: &[u32],
    k: usize,
    batch: usize,
) -> Result<(f64, f64), TrainError> {
    let per = x.len() / labels.len().max(1);
    let mut logits = Vec::with_capacity(labels.len() * k);
    for chunk in x.chunks(per * batch.max(1)) {
        logits.extend(
            infer::logits(model, chunk.to_vec())?
                .into_iter()
                .map(f64::from),
        );
    }
    let s = metrics::score(&softmax(&logits, k, 1.0), labels, k);
    Ok((s.accuracy, s.log_loss.unwrap_or(f64::NAN)))
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The importance of each of `targets` on windows `x` (`labels.len()` windows of the model's
/// input shape), most important (largest accuracy drop, then log-loss rise) first.
pub fn importance(
    model: &Network,
    x: &[f32],
    labels: &[u32],
    targets: &[Shuffled],
    repeats: u32,
    seed: u64,
    batch: usize,
) -> Result<Vec<Importance>, TrainError> {
    let k = model.spec().num_classes;
    let shape = model.spec().input;
    let n = labels.len();
    let per = shape.len();
    let (t, f) = (shape.time_steps, shape.features);
    let (base_acc, base_ll) = scores(model, x, labels, k, batch)?;
    let mut out = Vec::with_capacity(targets.len());
    let mut shuffled = x.to_vec();
    for (ti, target) in targets.iter().enumerate() {
        let (mut acc, mut ll) = (Vec::new(), Vec::new());
        for r in 0..repeats {
            let mut order: Vec<usize> = (0..n).collect();
            Rng::new(seed ^ ((ti as u64) << 20) ^ u64::from(r), "permutation").shuffle(&mut order);
            for (i, &src) in order.iter().enumerate() {
                for &(a, j) in &target.positions {
                    for s in 0..t {
                        let at = a * t * f + s * f + j;
                        shuffled[i * per + at] = x[src * per + at];
                    }
                }
            }
            let (a, l) = scores(model, &shuffled, labels, k, batch)?;
            acc.push(base_acc - a);
            ll.push(l - base_ll);
        }
        // Restore the shuffled positions for the next target.
        for i in 0..n {
            for &(a, j) in &target.positions {
                for s in 0..t {
                    let at = i * per + a * t * f + s * f + j;
                    shuffled[at] = x[at];
                }
            }
        }
        let ((accuracy_drop, accuracy_drop_sd), (log_loss_rise, log_loss_rise_sd)) =
            (mean_sd(&acc), mean_sd(&ll));
        out.push(Importance {
            name: target.name.clone(),
            group: target.group,
            accuracy_drop,
            accuracy_drop_sd,
            log_loss_rise,
            log_loss_rise_sd,
        });
    }
    out.sort_by(|a, b| {
        b.accuracy_drop
            .total_cmp(&a.accuracy_drop)
            .then(b.log_loss_rise.total_cmp(&a.log_loss_rise))
    });
    Ok(out)
}

/// What to shuffle for store columns `columns` (asset blocks of `per_asset` columns named
/// `ASSET.feature`, then the calendar columns shared by every asset channel): every feature,
/// then the groups book levels, imbalances, momentum, calendar and each asset.
pub fn targets(columns: &[String], assets: &[String], per_asset: usize) -> Vec<Shuffled> {
    let asset_columns = assets.len() * per_asset;
    let position = |c: usize| -> Vec<(usize, usize)> {
        if c < asset_columns {
            vec![(c / per_asset, c % per_asset)]
        } else {
            (0..assets.len())
                .map(|a| (a, per_asset + c - asset_columns))
                .collect()
        }
    };
    let mut out: Vec<Shuffled> = columns
        .iter()
        .enumerate()
        .map(|(c, name)| Shuffled {
            name: name.clone(),
            group: false,
            positions: position(c),
        })
        .collect();
    let group = |name: &str, pick: &dyn Fn(usize, &str) -> bool| Shuffled {
        name: name.to_owned(),
        group: true,
        positions: columns
            .iter()
            .enumerate()
            .filter(|(c, n)| pick(*c, n))
            .flat_map(|(c, _)| position(c))
            .collect(),
    };
    let feature = |n: &str| n.split_once('.').map_or(n, |(_, f)| f).to_owned();
    let mut groups = vec![
        group("book levels", &|c, n| {
            c < asset_columns && (feature(n).contains("_off_") || feature(n).contains("_logqty_"))
        }),
        group("imbalances", &|c, n| {
            c < asset_columns && feature(n).contains("imbalance")
        }),
        group("momentum", &|c, n| {
            c < asset_columns && feature(n).contains("momentum")
        }),
        group("calendar", &|c, _| c >= asset_columns),
    ];
    for (a, asset) in assets.iter().enumerate() {
        groups.push(group(&format!("asset {asset}"), &|c, _| {
            c < asset_columns && c / per_asset == a
        }));
    }
    out.extend(groups.into_iter().filter(|g| !g.positions.is_empty()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_cover_features_and_groups() {
        let columns: Vec<String> = [
            "A.volume_imbalance",
            "A.bid_logqty_1",
            "B.volume_imbalance",
            "B.bid_logqty_1",
            "hour_of_day_sin",
        ]
        .map(String::from)
        .to_vec();
        let t = targets(&columns, &["A".into(), "B".into()], 2);
        let by = |name: &str| t.iter().find(|s| s.name == name).unwrap().positions.clone();
        assert_eq!(by("B.bid_logqty_1"), [(1, 1)]);
        // Calendar columns sit after each asset block in every channel.
        assert_eq!(by("hour_of_day_sin"), [(0, 2), (1, 2)]);
        assert_eq!(by("imbalances"), [(0, 0), (1, 0)]);
        assert_eq!(by("book levels"), [(0, 1), (1, 1)]);
        assert_eq!(by("asset B"), [(1, 0), (1, 1)]);
        assert!(
            t.iter().all(|s| s.name != "momentum"),
            "empty groups are left out"
        );
    }

    #[test]
    fn statistics_of_the_repeats() {
        assert_eq!(mean_sd(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
        assert_eq!(mean_sd(&[5.0]), (5.0, 0.0));
    }
}
