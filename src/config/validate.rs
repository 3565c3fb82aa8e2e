//! Semantic validation: every rule that serde's types cannot express, all problems at once,
//! each naming its key path.

use super::schema::*;
use super::{Problem, suggest};

/// Order-book features `preprocess` computes.
pub const ORDER_BOOK_FEATURES: &[&str] = &[
    "bid_ask_spread",
    "volume_imbalance",
    "depth_imbalance",
    "weighted_mid_price",
];
/// Derived (time-series) features.
pub const DERIVED_FEATURES: &[&str] = &["price_momentum", "volume_momentum"];
/// Cyclical calendar features.
pub const LOCAL_TEMPORAL_FEATURES: &[&str] = &["hour_of_day", "day_of_week", "minute_of_hour"];
/// Non-cyclical temporal features.
pub const GLOBAL_TEMPORAL_FEATURES: &[&str] = &["days_since_start", "market_session"];
/// `model.architecture` names: the registry in `crate::model::Architecture`.
pub const ARCHITECTURES: &[&str] = &["CNN_LSTM_MultiClass", "MLP_LastStep"];
/// Per-epoch metrics the trainer reports (monitor, HPO metric).
pub const EPOCH_METRICS: &[&str] = &[
    "loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1",
];
/// `model.compilation.metrics`.
pub const COMPILATION_METRICS: &[&str] = &["accuracy", "precision", "recall", "f1"];
/// `evaluation.metrics`.
pub const EVALUATION_METRICS: &[&str] = &[
    "accuracy",
    "precision_per_class",
    "recall_per_class",
    "f1_per_class",
    "macro_f1",
    "weighted_f1",
    "mcc",
    "cohen_kappa",
    "log_loss",
    "top2_accuracy",
    "confusion_matrix",
    "calibration_error",
];
/// Holdout metrics a promotion rule may compare (higher is better).
pub const PROMOTION_METRICS: &[&str] =
    &["accuracy", "macro_f1", "weighted_f1", "mcc", "cohen_kappa"];
/// Search-space names: aliases of the spec plus `*_N` per-layer forms.
pub const SEARCH_PARAMS: &[&str] = &[
    "learning_rate",
    "batch_size",
    "lstm_units",
    "lstm_dropout",
    "window_steps",
    "cnn_filters_N",
    "cnn_dropout_N",
    "dense_units_N",
    "dense_dropout_N",
];
/// Colour names for `logging.colors`.
pub const COLORS: &[&str] = &[
    "black",
    "red",
    "green",
    "yellow",
    "blue",
    "magenta",
    "purple",
    "cyan",
    "white",
    "bright_black",
    "bright_red",
    "bright_green",
    "bright_yellow",
    "bright_blue",
    "bright_magenta",
    "bright_cyan",
    "bright_white",
];

/// Collects every semantic problem of `c`. `env` answers whether a variable is set.
pub fn validate(c: &Config, env: &dyn Fn(&str) -> bool) -> Vec<Problem> {
    let mut v = Validator::default();
    data(&mut v, &c.data);
    targets(&mut v, c);
    preprocessing(&mut v, c);
    diagnostics(&mut v, &c.diagnostics);
    model(&mut v, &c.model);
    training(&mut v, &c.training);
    hpo(&mut v, c);
    mlflow(&mut v, &c.mlflow);
    evaluation(&mut v, &c.evaluation);
    logging(&mut v, &c.logging);
    security(&mut v, &c.security, env);
    record(&mut v, &c.record);
    v.problems
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn check(&mut self, ok: bool, key: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(Problem::new(key, message()));
        }
    }

    fn positive(&mut self, value: f64, key: &str) {
        self.check(value > 0.0 && value.is_finite(), key, || {
            format!("must be > 0, got {value}")
        });
    }

    fn unit_open(&mut self, value: f64, key: &str) {
        self.check(value > 0.0 && value < 1.0, key, || {
            format!("must be in (0, 1), got {value}")
        });
    }

    fn dropout(&mut self, value: f64, key: &str) {
        self.check((0.0..1.0).contains(&value), key, || {
            format!("dropout must be in [0, 1), got {value}")
        });
    }

    fn known(&mut self, names: &[String], known: &[&str], key: &str) {
        for (i, name) in names.iter().enumerate() {
            self.one_of(name, known, &format!("{key}[{i}]"));
        }
    }

    fn one_of(&mut self, name: &str, known: &[&str], key: &str) {
        if !known.contains(&name) {
            let hint = suggest(name, known.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            self.problems.push(Problem::new(
                key,
                format!(
                    "unknown name {name:?}{hint}; expected one of: {}",
                    known.join(", ")
                ),
            ));
        }
    }

    fn same_len(&mut self, len: usize, expected: usize, key: &str, what: &str) {
        self.check(len == expected, key, || {
            format!("has {len} entries but {what} is {expected}; give one entry per layer")
        });
    }

    fn identifier(&mut self, name: &str, key: &str) {
        // Identifiers are inlined into SQL, so only a strict pattern is accepted.
        let ok = !name.is_empty()
            && name.split('.').all(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        self.check(ok, key, || {
            format!("invalid SQL identifier {name:?}: expected letters, digits, `_` (schema.table allowed)")
        });
    }
}

fn data(v: &mut Validator, d: &DataConfig) {
    match d.source_type {
        SourceType::Database => {
            match d.connection.database_uri.as_deref() {
                None | Some("") => v.problems.push(Problem::new(
                    "data.connection.database_uri",
                    "required when data.source_type is \"database\" (usually \"${DATABASE_URI}\")",
                )),
                Some(uri) => v.check(
                    uri.starts_with("postgresql://") || uri.starts_with("postgres://"),
                    "data.connection.database_uri",
                    || "expected a postgresql://user:password@host:port/database URI".into(),
                ),
            }
            v.check(
                d.connection.query_chunk_seconds > 0,
                "data.connection.query_chunk_seconds",
                || "must be > 0".into(),
            );
        }
        SourceType::File => {
            v.check(!d.files.paths.is_empty(), "data.files.paths", || {
                "required when data.source_type is \"file\": list CSV files or glob patterns".into()
            });
            for (i, p) in d.files.paths.iter().enumerate() {
                v.check(
                    !std::path::Path::new(p).is_dir(),
                    &format!("data.files.paths[{i}]"),
                    || directory_path_message(p),
                );
            }
        }
        SourceType::Synthetic => {
            let s = &d.synthetic;
            v.positive(s.base_volatility, "data.synthetic.base_volatility");
            v.check(
                (-1.0..=1.0).contains(&s.correlation),
                "data.synthetic.correlation",
                || format!("must be in [-1, 1], got {}", s.correlation),
            );
            for (p, key) in [
                (s.gap_probability, "data.synthetic.gap_probability"),
                (s.bad_row_probability, "data.synthetic.bad_row_probability"),
            ] {
                v.check((0.0..1.0).contains(&p), key, || {
                    format!("probability must be in [0, 1), got {p}")
                });
            }
            if let Some(sig) = &s.signal {
                signal(v, sig, d.order_book.depth_levels);
            }
        }
    }
    // Also the header names of tall CSV files, so checked whatever the source.
    v.identifier(&d.connection.table_name, "data.connection.table_name");
    for (key, column) in d.columns.named() {
        v.identifier(column, &format!("data.columns.{key}"));
    }
    let assets = &d.asset_pairs;
    for (i, a) in assets.correlated_assets.iter().enumerate() {
        let key = format!("data.asset_pairs.correlated_assets[{i}]");
        v.check(*a != assets.target_asset, &key, || {
            format!("{a} is the target asset; list it only as target_asset")
        });
        v.check(!assets.correlated_assets[..i].contains(a), &key, || {
            format!("{a} is listed twice")
        });
    }
    let t = &d.time_range;
    v.check(
        t.cadence_seconds.seconds() > 0,
        "data.time_range.cadence_seconds",
        || "must be a positive number of seconds".into(),
    );
    v.check(
        t.start_date.start() < t.end_date.end_exclusive(),
        "data.time_range.end_date",
        || {
            format!(
                "must be after start_date ({} is not after {})",
                t.end_date.as_str(),
                t.start_date.as_str()
            )
        },
    );
    v.check(
        d.order_book.depth_levels >= 1,
        "data.order_book.depth_levels",
        || "must be >= 1".into(),
    );
    v.check(
        d.order_book.representation == BookRepresentation::Full,
        "data.order_book.representation",
        || "only \"full\" is implemented; \"aggregated\" and \"hybrid\" are planned".into(),
    );
    v.known(
        &d.temporal_features.local,
        LOCAL_TEMPORAL_FEATURES,
        "data.temporal_features.local",
    );
    v.known(
        &d.temporal_features.global,
        GLOBAL_TEMPORAL_FEATURES,
        "data.temporal_features.global",
    );
    v.check(
        d.cache.shard_seconds > 0,
        "data.cache.shard_seconds",
        || "must be > 0".into(),
    );
}

fn signal(v: &mut Validator, s: &SignalConfig, depth: u32) {
    for (x, key) in [
        (s.strength, "data.synthetic.signal.strength"),
        (s.tilt, "data.synthetic.signal.tilt"),
        (
            s.observation_noise,
            "data.synthetic.signal.observation_noise",
        ),
        (s.lead_lag, "data.synthetic.signal.lead_lag"),
    ] {
        v.check(x.is_finite(), key, || {
            format!("must be a finite number, got {x}")
        });
    }
    v.check(
        s.observation_noise >= 0.0,
        "data.synthetic.signal.observation_noise",
        || format!("must be >= 0, got {}", s.observation_noise),
    );
    v.check(
        (0.0..1.0).contains(&s.persistence),
        "data.synthetic.signal.persistence",
        || format!("must be in [0, 1), got {}", s.persistence),
    );
    v.check(
        s.lead_lag.abs() < 1.0,
        "data.synthetic.signal.lead_lag",
        || format!("must be in (-1, 1), got {}", s.lead_lag),
    );
    v.check(
        (1..=depth).contains(&s.levels),
        "data.synthetic.signal.levels",
        || {
            format!(
                "must be in 1..={depth} (data.order_book.depth_levels), got {}",
                s.levels
            )
        },
    );
    match (&s.change_at, s.strength_after) {
        (Some(_), None) => v.problems.push(Problem::new(
            "data.synthetic.signal.strength_after",
            "required with data.synthetic.signal.change_at",
        )),
        (None, Some(_)) => v.problems.push(Problem::new(
            "data.synthetic.signal.change_at",
            "required with data.synthetic.signal.strength_after",
        )),
        (_, Some(x)) => v.check(
            x.is_finite(),
            "data.synthetic.signal.strength_after",
            || format!("must be a finite number, got {x}"),
        ),
        (None, None) => {}
    }
}

fn targets(v: &mut Validator, c: &Config) {
    let t = &c.targets;
    let cadence = u64::from(c.data.time_range.cadence_seconds.seconds());
    let horizon = t.prediction_horizon_seconds;
    v.check(horizon > 0, "targets.prediction_horizon_seconds", || {
        "must be > 0".into()
    });
    if cadence > 0 {
        v.check(
            horizon.is_multiple_of(cadence),
            "targets.prediction_horizon_seconds",
            || {
                format!(
                    "{horizon} s is not a multiple of data.time_range.cadence_seconds ({cadence} s)"
                )
            },
        );
    }
    let b = &t.price_classes.boundaries;
    v.check(!b.is_empty(), "targets.price_classes.boundaries", || {
        "needs at least one boundary (two classes)".into()
    });
    v.check(
        b.iter().all(|x| x.is_finite()),
        "targets.price_classes.boundaries",
        || "must be finite numbers".into(),
    );
    if let Some(i) = b.windows(2).position(|w| w[0] >= w[1]) {
        v.problems.push(Problem::new(
            "targets.price_classes.boundaries",
            format!(
                "must be strictly increasing: entry {} ({}) is not below entry {} ({})",
                i,
                b[i],
                i + 1,
                b[i + 1]
            ),
        ));
    }
    let expected = b.len() + 1;
    v.check(c.model.output.num_classes as usize == expected, "model.output.num_classes", || {
        format!(
            "is {} but targets.price_classes.boundaries has {} entries, which make {expected} classes",
            c.model.output.num_classes,
            b.len()
        )
    });
    v.check(
        t.labeling.use_midpoint,
        "targets.labeling.use_midpoint",
        || "must be true: the order-book table holds no trade prices to label from".into(),
    );
    if t.price_classes.definition_type == ClassDefinition::Adaptive {
        v.check(
            t.price_classes.volatility_window_seconds > 0,
            "targets.price_classes.volatility_window_seconds",
            || "must be > 0 for adaptive classes".into(),
        );
    }
}

fn preprocessing(v: &mut Validator, c: &Config) {
    let p = &c.preprocessing;
    v.check(p.window_steps >= 1, "preprocessing.window_steps", || {
        "must be >= 1".into()
    });
    v.check(
        p.normalization.fit_on_train_only,
        "preprocessing.normalization.fit_on_train_only",
        || "must be true: fitting scalers on validation/test data leaks the future".into(),
    );
    let f = &p.feature_engineering;
    v.known(
        &f.order_book_features,
        ORDER_BOOK_FEATURES,
        "preprocessing.feature_engineering.order_book_features",
    );
    v.known(
        &f.derived_features,
        DERIVED_FEATURES,
        "preprocessing.feature_engineering.derived_features",
    );
    v.check(
        f.momentum_windows.iter().all(|w| *w > 0),
        "preprocessing.feature_engineering.momentum_windows",
        || "every window must be >= 1 step".into(),
    );
    let depth = c.data.order_book.depth_levels;
    v.check(
        (1..=depth).contains(&f.depth_imbalance_levels),
        "preprocessing.feature_engineering.depth_imbalance_levels",
        || {
            format!(
                "must be in 1..={depth} (data.order_book.depth_levels), got {}",
                f.depth_imbalance_levels
            )
        },
    );
    let s = &p.train_test_split;
    v.unit_open(s.train_ratio, "preprocessing.train_test_split.train_ratio");
    v.unit_open(
        s.validation_ratio,
        "preprocessing.train_test_split.validation_ratio",
    );
    v.unit_open(s.test_ratio, "preprocessing.train_test_split.test_ratio");
    let sum = s.train_ratio + s.validation_ratio + s.test_ratio;
    v.check(
        (sum - 1.0).abs() < 1e-6,
        "preprocessing.train_test_split",
        || format!("train_ratio + validation_ratio + test_ratio must be 1, got {sum}"),
    );
    if s.method == SplitMethod::WalkForward {
        v.check(
            s.n_folds >= 2,
            "preprocessing.train_test_split.n_folds",
            || "walk_forward needs at least 2 folds".into(),
        );
    }
    v.check(
        s.degradation_slices >= 1,
        "preprocessing.train_test_split.degradation_slices",
        || "must be >= 1".into(),
    );
    if p.time_weighting.enabled {
        v.positive(
            p.time_weighting.half_life_days,
            "preprocessing.time_weighting.half_life_days",
        );
    }
    if p.regime_detection.enabled {
        v.check(
            p.regime_detection.n_regimes >= 2,
            "preprocessing.regime_detection.n_regimes",
            || "must be >= 2".into(),
        );
        v.check(
            p.regime_detection.volatility_window_seconds > 0,
            "preprocessing.regime_detection.volatility_window_seconds",
            || "must be > 0".into(),
        );
    }
    v.check(
        p.memory.max_bytes > 0,
        "preprocessing.memory.max_bytes",
        || "must be > 0".into(),
    );
}

fn diagnostics(v: &mut Validator, d: &DiagnosticsConfig) {
    v.positive(d.wide_spread_bps, "diagnostics.wide_spread_bps");
    v.check(d.psi_bins >= 2, "diagnostics.psi_bins", || {
        "must be >= 2".into()
    });
}

fn model(v: &mut Validator, m: &ModelConfig) {
    v.check(m.framework == "burn", "model.framework", || {
        format!(
            "{:?} is not supported: binance-ml trains with Burn; set \"burn\" and pick model.backend (flex, tch, cuda)",
            m.framework
        )
    });
    let device_ok = m.device == "cpu"
        || m.device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
    v.check(device_ok, "model.device", || {
        format!("{:?}: expected \"cpu\" or \"cuda:N\"", m.device)
    });
    v.check(
        m.backend != Backend::Flex || m.device == "cpu",
        "model.device",
        || "the flex backend runs on the CPU only; use model.backend: tch for cuda:N".into(),
    );
    v.one_of(&m.architecture, ARCHITECTURES, "model.architecture");

    let cnn = &m.cnn;
    let n = cnn.num_layers as usize;
    v.check(n >= 1, "model.cnn.num_layers", || "must be >= 1".into());
    v.same_len(
        cnn.filters.len(),
        n,
        "model.cnn.filters",
        "model.cnn.num_layers",
    );
    v.same_len(
        cnn.kernel_sizes.len(),
        n,
        "model.cnn.kernel_sizes",
        "model.cnn.num_layers",
    );
    v.same_len(
        cnn.pool_sizes.len(),
        n,
        "model.cnn.pool_sizes",
        "model.cnn.num_layers",
    );
    v.same_len(
        cnn.dropout_rates.len(),
        n,
        "model.cnn.dropout_rates",
        "model.cnn.num_layers",
    );
    v.check(
        cnn.filters.iter().all(|f| *f > 0),
        "model.cnn.filters",
        || "every layer needs >= 1 filter".into(),
    );
    for (list, key) in [
        (&cnn.kernel_sizes, "model.cnn.kernel_sizes"),
        (&cnn.pool_sizes, "model.cnn.pool_sizes"),
    ] {
        v.check(list.iter().flatten().all(|k| *k > 0), key, || {
            "sizes must be >= 1".into()
        });
    }
    for (i, r) in cnn.dropout_rates.iter().enumerate() {
        v.dropout(*r, &format!("model.cnn.dropout_rates[{i}]"));
    }
    v.check(m.lstm.units > 0, "model.lstm.units", || {
        "must be >= 1".into()
    });
    v.dropout(m.lstm.dropout, "model.lstm.dropout");
    v.dropout(m.lstm.recurrent_dropout, "model.lstm.recurrent_dropout");
    v.same_len(
        m.dense.dropout_rates.len(),
        m.dense.layers.len(),
        "model.dense.dropout_rates",
        "len(model.dense.layers)",
    );
    v.check(
        m.dense.layers.iter().all(|u| *u > 0),
        "model.dense.layers",
        || "units must be >= 1".into(),
    );
    for (i, r) in m.dense.dropout_rates.iter().enumerate() {
        v.dropout(*r, &format!("model.dense.dropout_rates[{i}]"));
    }
    v.one_of(
        &m.output.activation,
        &["softmax"],
        "model.output.activation",
    );
    v.one_of(
        &m.compilation.optimizer,
        &["adam"],
        "model.compilation.optimizer",
    );
    v.one_of(
        &m.compilation.loss,
        &["categorical_crossentropy"],
        "model.compilation.loss",
    );
    v.positive(
        m.compilation.learning_rate,
        "model.compilation.learning_rate",
    );
    v.known(
        &m.compilation.metrics,
        COMPILATION_METRICS,
        "model.compilation.metrics",
    );
}

fn training(v: &mut Validator, t: &TrainingConfig) {
    v.check(t.epochs >= 1, "training.epochs", || "must be >= 1".into());
    v.check(t.batch_size >= 1, "training.batch_size", || {
        "must be >= 1".into()
    });
    v.check(
        t.validation_split == 0.0,
        "training.validation_split",
        || "must be 0.0: the validation split comes from preprocessing.train_test_split".into(),
    );
    v.check(t.shuffle_buffer >= 1, "training.shuffle_buffer", || {
        "must be >= 1".into()
    });
    let es = &t.callbacks.early_stopping;
    if es.enabled {
        v.one_of(
            &es.monitor,
            EPOCH_METRICS,
            "training.callbacks.early_stopping.monitor",
        );
    }
    let rl = &t.callbacks.reduce_lr;
    if rl.enabled {
        v.one_of(
            &rl.monitor,
            EPOCH_METRICS,
            "training.callbacks.reduce_lr.monitor",
        );
        v.unit_open(rl.factor, "training.callbacks.reduce_lr.factor");
        v.positive(rl.min_lr, "training.callbacks.reduce_lr.min_lr");
    }
    let ft = &t.fine_tuning;
    if ft.enabled {
        let has_base = ft
            .base_model_run_id
            .as_deref()
            .is_some_and(|s| !s.is_empty())
            || ft
                .base_model_alias
                .as_deref()
                .is_some_and(|s| !s.is_empty());
        v.check(has_base, "training.fine_tuning.base_model_run_id", || {
            "required when training.fine_tuning.enabled is true (or set base_model_alias)".into()
        });
        if let Some(lr) = ft.learning_rate {
            v.positive(lr, "training.fine_tuning.learning_rate");
        }
        v.check(ft.epochs != Some(0), "training.fine_tuning.epochs", || {
            "must be >= 1".into()
        });
    }
    v.one_of(
        &ft.promotion.metric,
        PROMOTION_METRICS,
        "training.fine_tuning.promotion.metric",
    );
    v.check(t.memory.max_bytes > 0, "training.memory.max_bytes", || {
        "must be > 0".into()
    });
}

fn hpo(v: &mut Validator, c: &Config) {
    let h = &c.hyperparameter_optimization;
    v.one_of(
        &h.framework,
        &["optuna"],
        "hyperparameter_optimization.framework",
    );
    v.one_of(
        &h.metric,
        EPOCH_METRICS,
        "hyperparameter_optimization.metric",
    );
    v.check(
        h.n_trials >= 1,
        "hyperparameter_optimization.n_trials",
        || "must be >= 1".into(),
    );
    v.check(
        h.n_folds >= 1,
        "hyperparameter_optimization.n_folds",
        || "must be >= 1".into(),
    );
    for (name, param) in &h.search_space {
        let key = format!("hyperparameter_optimization.search_space.{name}");
        v.one_of(&search_param_family(name), SEARCH_PARAMS, &key);
        match param {
            SearchParam::Choices(items) => {
                if items.len() == 2 && items.iter().all(|x| x.is_number()) {
                    let (lo, hi) = (
                        items[0].as_f64().unwrap_or(0.0),
                        items[1].as_f64().unwrap_or(0.0),
                    );
                    v.check(lo < hi, &key, || {
                        format!("range [{lo}, {hi}]: low must be < high")
                    });
                } else {
                    v.check(!items.is_empty(), &key, || {
                        "needs [low, high] or at least one choice".into()
                    });
                }
            }
            SearchParam::Explicit {
                kind: ParamKind::Categorical,
                choices,
                ..
            } => {
                v.check(
                    choices.as_ref().is_some_and(|c| !c.is_empty()),
                    &key,
                    || "categorical parameters need a non-empty `choices` list".into(),
                );
            }
            SearchParam::Explicit { low, high, log, .. } => match (low, high) {
                (Some(lo), Some(hi)) => {
                    v.check(lo < hi, &key, || {
                        format!("range [{lo}, {hi}]: low must be < high")
                    });
                    v.check(!*log || *lo > 0.0, &key, || {
                        "log scale needs low > 0".into()
                    });
                }
                _ => v.problems.push(Problem::new(
                    &key,
                    "int and float parameters need `low` and `high`",
                )),
            },
        }
    }
}

/// `cnn_filters_2` -> `cnn_filters_N`: the per-layer family of a search-space name.
fn search_param_family(name: &str) -> String {
    match name.rsplit_once('_') {
        Some((stem, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{stem}_N")
        }
        _ => name.to_owned(),
    }
}

fn mlflow(v: &mut Validator, m: &MlflowConfig) {
    let uri = &m.tracking_uri;
    v.check(
        uri.is_empty() || uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file:"),
        "mlflow.tracking_uri",
        || "expected http(s)://host:port, file:<dir>, or empty for the local store under the workdir".into(),
    );
    placeholders(
        v,
        &m.run_naming.pattern,
        &["asset", "model", "timestamp"],
        "mlflow.run_naming.pattern",
    );
    placeholders(
        v,
        &m.model_registry.model_name_pattern,
        &["asset", "model"],
        "mlflow.model_registry.model_name_pattern",
    );
    v.check(
        m.client.timeout_seconds > 0,
        "mlflow.client.timeout_seconds",
        || "must be > 0".into(),
    );
}

fn placeholders(v: &mut Validator, pattern: &str, known: &[&str], key: &str) {
    v.check(!pattern.trim().is_empty(), key, || {
        "must not be empty".into()
    });
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            v.problems
                .push(Problem::new(key, format!("unclosed `{{` in {pattern:?}")));
            return;
        };
        let name = &rest[open + 1..open + close];
        v.one_of(name, known, key);
        rest = &rest[open + close + 1..];
    }
}

fn evaluation(v: &mut Validator, e: &EvaluationConfig) {
    v.known(&e.metrics, EVALUATION_METRICS, "evaluation.metrics");
    v.check(
        e.calibration_analysis.n_bins >= 2,
        "evaluation.calibration_analysis.n_bins",
        || "must be >= 2".into(),
    );
    let b = &e.backtesting;
    v.positive(b.initial_capital, "evaluation.backtesting.initial_capital");
    v.check(
        (0.0..1.0).contains(&b.transaction_cost),
        "evaluation.backtesting.transaction_cost",
        || format!("must be a fraction in [0, 1), got {}", b.transaction_cost),
    );
    v.check(e.batch_size >= 1, "evaluation.batch_size", || {
        "must be >= 1".into()
    });
    let p = &e.explainability.permutation;
    for (n, key) in [
        (
            p.n_samples,
            "evaluation.explainability.permutation.n_samples",
        ),
        (p.repeats, "evaluation.explainability.permutation.repeats"),
        (
            e.linear_baseline.max_train_samples,
            "evaluation.linear_baseline.max_train_samples",
        ),
    ] {
        v.check(n >= 1, key, || "must be >= 1".into());
    }
    let l2 = e.linear_baseline.l2;
    v.check(
        l2 >= 0.0 && l2.is_finite(),
        "evaluation.linear_baseline.l2",
        || format!("must be >= 0, got {l2}"),
    );
}

fn logging(v: &mut Validator, l: &LoggingConfig) {
    let c = &l.colors;
    for (value, key) in [
        (&c.function_names, "function_names"),
        (&c.parameter_names, "parameter_names"),
        (&c.parameter_values, "parameter_values"),
        (&c.info, "info"),
        (&c.warning, "warning"),
        (&c.error, "error"),
        (&c.debug, "debug"),
    ] {
        v.one_of(value, COLORS, &format!("logging.colors.{key}"));
    }
}

fn security(v: &mut Validator, s: &SecurityConfig, env: &dyn Fn(&str) -> bool) {
    if !(s.validation.check_env_vars_at_startup && s.validation.fail_if_missing) {
        return;
    }
    for (i, name) in s.environment_variables.iter().enumerate() {
        v.check(env(name), &format!("security.environment_variables[{i}]"), || {
            format!("environment variable {name} is required but not set (export it or put it in .env)")
        });
    }
}

fn record(v: &mut Validator, r: &RecordConfig) {
    for (url, key, schemes) in [
        (&r.rest_url, "record.rest_url", ["http://", "https://"]),
        (&r.ws_url, "record.ws_url", ["ws://", "wss://"]),
    ] {
        v.check(
            url.is_empty() || schemes.iter().any(|s| url.starts_with(s)),
            key,
            || {
                format!(
                    "expected {} or {}, or empty for Binance's endpoint",
                    schemes[0], schemes[1]
                )
            },
        );
    }
    for (value, key) in [
        (r.rotate_seconds, "record.rotate_seconds"),
        (r.batch_id_seconds, "record.batch_id_seconds"),
        (r.queue_capacity as u64, "record.queue_capacity"),
        (r.insert_batch_rows as u64, "record.insert_batch_rows"),
        (r.db_retry_seconds, "record.db_retry_seconds"),
        (r.request_timeout_seconds, "record.request_timeout_seconds"),
        (r.max_backoff_seconds, "record.max_backoff_seconds"),
        (
            u64::from(r.weight_limit_per_minute),
            "record.weight_limit_per_minute",
        ),
        (r.status_interval_seconds, "record.status_interval_seconds"),
        (r.reconnect_after_seconds, "record.reconnect_after_seconds"),
    ] {
        v.check(value > 0, key, || "must be > 0".into());
    }
}

/// Variables listed under `security.environment_variables` that are unset, for a warning
/// when `fail_if_missing` is false.
/// A `data.files.paths` entry that names a directory: what to write instead.
pub fn directory_path_message(pattern: &str) -> String {
    format!(
        "{pattern:?} is a directory; name its files or a glob such as \"{}/*.csv\"",
        pattern.trim_end_matches('/')
    )
}

/// `data.files.paths` entries that match no file now: a warning, not an error, because
/// `record` writes the files a later `fetch` reads (which then names the pattern, exit 3).
pub fn unmatched_file_warnings(d: &DataConfig) -> Vec<String> {
    if d.source_type != SourceType::File {
        return Vec::new();
    }
    d.files
        .paths
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            let path = std::path::Path::new(p.as_str());
            !path.is_file()
                && !path.is_dir()
                && glob::glob(p)
                    .map(|mut m| !m.any(|f| f.is_ok_and(|f| f.is_file())))
                    .unwrap_or(true)
        })
        .map(|(i, p)| format!("data.files.paths[{i}]: {p:?} matches no file (yet)"))
        .collect()
}

pub fn missing_env_warnings(s: &SecurityConfig, env: &dyn Fn(&str) -> bool) -> Vec<String> {
    if !s.validation.check_env_vars_at_startup || s.validation.fail_if_missing {
        return Vec::new();
    }
    s.environment_variables
        .iter()
        .filter(|n| !env(n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_param_families() {
        assert_eq!(search_param_family("cnn_filters_12"), "cnn_filters_N");
        assert_eq!(search_param_family("learning_rate"), "learning_rate");
        assert_eq!(search_param_family("lstm_units"), "lstm_units");
    }
}
