//! Serde types for every key of `training_config.yaml` (spec §2.2 plus the keys decided in
//! ARCHITECTURE.md). Every struct denies unknown fields; every section but `data` has a
//! default equal to the spec's value, so a short file is a complete configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::types::{Cadence, DateBound, Symbol};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where stage outputs, caches, locks and the local MLflow store live.
    #[serde(default = "default_workdir")]
    pub workdir: PathBuf,
    /// Data source, assets, time range, book depth.
    pub data: DataConfig,
    /// Prediction horizon and class definition.
    #[serde(default)]
    pub targets: TargetsConfig,
    /// Features, normalisation, splits, weighting.
    #[serde(default)]
    pub preprocessing: PreprocessingConfig,
    /// Checks run by `diagnose` before training.
    #[serde(default)]
    pub diagnostics: DiagnosticsConfig,
    /// Network architecture and backend.
    #[serde(default)]
    pub model: ModelConfig,
    /// Optimisation loop, callbacks, fine-tuning.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Optional TPE search.
    #[serde(default)]
    pub hyperparameter_optimization: HpoConfig,
    /// Tracking server, experiments, registry.
    #[serde(default)]
    pub mlflow: MlflowConfig,
    /// Metrics, calibration, backtest.
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    /// Log level, format and colours.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Environment variables checked at start-up.
    #[serde(default)]
    pub security: SecurityConfig,
    /// How `record` collects order books from Binance.
    #[serde(default)]
    pub record: RecordConfig,
}

fn default_workdir() -> PathBuf {
    PathBuf::from("binance-ml-work")
}

// ---------------------------------------------------------------------------------------------
// data

/// Where snapshots come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    /// GreptimeDB or PostgreSQL over the PostgreSQL wire protocol.
    Database,
    /// CSV files (optionally gzip) in the tall or wide layout.
    File,
    /// A seeded synthetic market; needs nothing installed.
    Synthetic,
}

/// `data`: the source and the shape of the order-book data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Which source `fetch` reads.
    pub source_type: SourceType,
    /// A label for the data source (e.g. `greptime-prod`), recorded in lineage; fine-tuning
    /// may override it.
    #[serde(default)]
    pub source_name: Option<String>,
    /// Database source options.
    #[serde(default)]
    pub connection: ConnectionConfig,
    /// Column names of the tall table.
    #[serde(default)]
    pub columns: ColumnsConfig,
    /// File source options.
    #[serde(default)]
    pub files: FilesConfig,
    /// Synthetic source options.
    #[serde(default)]
    pub synthetic: SyntheticConfig,
    /// Target and correlated assets.
    pub asset_pairs: AssetPairs,
    /// Time span and cadence.
    pub time_range: TimeRange,
    /// Depth and representation of the book.
    #[serde(default)]
    pub order_book: OrderBookConfig,
    /// Calendar features.
    #[serde(default)]
    pub temporal_features: TemporalFeaturesConfig,
    /// Data validity rules.
    #[serde(default)]
    pub validation: DataValidationConfig,
    /// The on-disk shard cache written by `fetch`.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `data.connection`: the database source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// `postgresql://user:pass@host:port/db[?sslmode=require]`; usually `${DATABASE_URI}`.
    pub database_uri: Option<String>,
    /// The tall table holding one row per snapshot x symbol x level.
    pub table_name: String,
    /// Length of one query chunk in seconds (results are streamed chunk by chunk).
    pub query_chunk_seconds: u64,
    /// Connect timeout in seconds.
    pub connect_timeout_seconds: u64,
    /// Connection attempts before giving up (exit 4).
    pub max_retries: u32,
    /// With `sslmode=require`: accept a server certificate that does not verify (self-signed;
    /// libpq's `require` behaviour). Default false: the certificate and host name are checked.
    pub tls_accept_invalid_certs: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            database_uri: None,
            table_name: "order_book_snapshots".into(),
            query_chunk_seconds: 86_400,
            connect_timeout_seconds: 10,
            max_retries: 3,
            tls_accept_invalid_certs: false,
        }
    }
}

/// `data.columns`: column names of the tall table (ARCHITECTURE.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnsConfig {
    /// Snapshot timestamp; snapshots are grouped by it.
    pub ts: String,
    /// Coarse time bucket (not an id).
    pub batch_id: String,
    /// Symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// Book level, 1 = best.
    pub level: String,
    /// Bid price at the level.
    pub bid_price: String,
    /// Bid quantity at the level.
    pub bid_qty: String,
    /// Ask price at the level.
    pub ask_price: String,
    /// Ask quantity at the level.
    pub ask_qty: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        Self {
            ts: "ts".into(),
            batch_id: "batch_id".into(),
            symbol: "symbol".into(),
            level: "level".into(),
            bid_price: "bid_price".into(),
            bid_qty: "bid_qty".into(),
            ask_price: "ask_price".into(),
            ask_qty: "ask_qty".into(),
        }
    }
}

impl ColumnsConfig {
    /// Every column as `(config key, column name)`, in table order.
    pub fn named(&self) -> [(&'static str, &str); 8] {
        [
            ("ts", &self.ts),
            ("batch_id", &self.batch_id),
            ("symbol", &self.symbol),
            ("level", &self.level),
            ("bid_price", &self.bid_price),
            ("bid_qty", &self.bid_qty),
            ("ask_price", &self.ask_price),
            ("ask_qty", &self.ask_qty),
        ]
    }
}

/// Row layout of CSV files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileLayout {
    /// One row per snapshot x symbol x level, the database's columns.
    Tall,
    /// One row per snapshot x symbol: `ts_s,symbol,bid_px_1,bid_qty_1,...,ask_px_N,ask_qty_N`.
    Wide,
}

/// `data.files`: the file source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Paths or glob patterns; `.gz` files are decompressed.
    pub paths: Vec<String>,
    /// Row layout of every file.
    pub layout: FileLayout,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            layout: FileLayout::Wide,
        }
    }
}

/// `data.synthetic`: the seeded synthetic market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Seed: same seed, same market.
    pub seed: u64,
    /// Annualised volatility of the calm regime.
    pub base_volatility: f64,
    /// Correlation of every correlated asset's returns with the target's.
    pub correlation: f64,
    /// Probability that a snapshot is missing (produces gaps).
    pub gap_probability: f64,
    /// Probability that a row is corrupt (NaN, zero price, crossed book).
    pub bad_row_probability: f64,
    /// A predictable order flow; absent (or zero strength throughout) = a pure random walk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalConfig>,
}

/// `data.synthetic.signal`: a latent order-flow imbalance `I` (AR(1), stationary N(0, 1))
/// that tilts the target's visible queues and drifts its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Drift of the target's next log return per unit of `I`, in units of its calm one-step
    /// volatility (0 = the imbalance is visible but predicts nothing).
    pub strength: f64,
    /// AR(1) coefficient of `I` per step, in [0, 1): how long the order flow persists.
    pub persistence: f64,
    /// Book levels 1..=levels of the target whose queues carry `I`.
    pub levels: u32,
    /// log(bid qty / ask qty) on a tilted level moves by `tilt x (I + noise)`.
    pub tilt: f64,
    /// Standard deviation of the per-level noise on the observed `I` (beyond the queues' own
    /// lognormal noise).
    pub observation_noise: f64,
    /// The target's next log return also gets `lead_lag x` the first correlated asset's last
    /// log return (0 = off).
    pub lead_lag: f64,
    /// From this instant on (`YYYY-MM-DD` or RFC 3339) the drift uses `strength_after`: a
    /// regime change.
    pub change_at: Option<DateBound>,
    /// The strength after `change_at` (required with it).
    pub strength_after: Option<f64>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            strength: 0.0,
            persistence: 0.95,
            levels: 3,
            tilt: 1.0,
            observation_noise: 0.5,
            lead_lag: 0.0,
            change_at: None,
            strength_after: None,
        }
    }
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            base_volatility: 0.6,
            correlation: 0.7,
            gap_probability: 0.001,
            bad_row_probability: 0.0005,
            signal: None,
        }
    }
}

/// `data.asset_pairs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetPairs {
    /// The asset whose price move is predicted.
    pub target_asset: Symbol,
    /// Assets used as extra inputs.
    #[serde(default)]
    pub correlated_assets: Vec<Symbol>,
}

impl AssetPairs {
    /// Target first, then the correlated assets, in configuration order.
    pub fn all(&self) -> Vec<Symbol> {
        std::iter::once(self.target_asset.clone())
            .chain(self.correlated_assets.iter().cloned())
            .collect()
    }
}

/// `data.time_range`. A date-only `end_date` includes that whole day (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    /// First instant (UTC), `YYYY-MM-DD` or RFC 3339.
    pub start_date: DateBound,
    /// Last day (date) or exclusive end instant (RFC 3339).
    pub end_date: DateBound,
    /// Snapshot cadence in seconds.
    pub cadence_seconds: Cadence,
}

/// How book depth is represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookRepresentation {
    /// Every level 1..=depth_levels.
    Full,
    /// Quantity in bands by distance from mid, computed in SQL.
    Aggregated,
    /// Full levels near the top, bands below.
    Hybrid,
}

/// `data.order_book`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderBookConfig {
    /// Levels per side read from the source.
    pub depth_levels: u32,
    /// Representation of depth (decided: `full` is implemented; see README).
    pub representation: BookRepresentation,
}

impl Default for OrderBookConfig {
    fn default() -> Self {
        Self {
            depth_levels: 10,
            representation: BookRepresentation::Full,
        }
    }
}

/// `data.temporal_features`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalFeaturesConfig {
    /// Cyclical (sin/cos) calendar features: hour_of_day, day_of_week, minute_of_hour.
    pub local: Vec<String>,
    /// days_since_start, market_session.
    pub global: Vec<String>,
}

impl Default for TemporalFeaturesConfig {
    fn default() -> Self {
        Self {
            local: vec![
                "hour_of_day".into(),
                "day_of_week".into(),
                "minute_of_hour".into(),
            ],
            global: vec!["days_since_start".into(), "market_session".into()],
        }
    }
}

/// `data.validation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataValidationConfig {
    /// Report missing snapshots.
    pub check_missing_data: bool,
    /// No window or label may span a gap longer than this.
    pub max_gap_seconds: u64,
    /// Exit 3 instead of warning when data checks fail.
    pub fail_on_invalid: bool,
}

impl Default for DataValidationConfig {
    fn default() -> Self {
        Self {
            check_missing_data: true,
            max_gap_seconds: 60,
            fail_on_invalid: true,
        }
    }
}

/// `data.cache`: the NPZ shard cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Time span of one shard in seconds (default one day).
    pub shard_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            shard_seconds: 86_400,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// record

/// Which Binance market `record` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMarket {
    /// Spot: `GET /api/v3/depth`, `<symbol>@depth@100ms` (consecutive `U`).
    Spot,
    /// USD-M perpetual futures: `GET /fapi/v1/depth`, `<symbol>@depth@100ms` (`pu` chain).
    UsdmFutures,
    /// COIN-M futures (`BTCUSD_PERP`, `ETHUSD_250328`): `GET /dapi/v1/depth`,
    /// `<symbol>@depth@100ms` (`pu` chain, as USD-M).
    CoinmFutures,
}

/// Where `record` writes the tall rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOutput {
    /// `database` when `data.source_type` is `database`, else `csv`.
    Auto,
    /// `data.connection.table_name` at `data.connection.database_uri`.
    Database,
    /// Rotating wide CSV files under `record.csv_dir`, the layout `fetch` reads.
    Csv,
}

/// `record`: the recorder's endpoints, output and buffering. Defaults are Binance's real
/// endpoints; tests point the URLs at local replay servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// spot | usdm_futures | coinm_futures.
    pub market: RecordMarket,
    /// REST base URL; empty = `https://api.binance.com` (spot), `https://fapi.binance.com`
    /// (USD-M) or `https://dapi.binance.com` (COIN-M).
    pub rest_url: String,
    /// WebSocket base URL; empty = `wss://stream.binance.com:9443` (spot),
    /// `wss://fstream.binance.com` (USD-M) or `wss://dstream.binance.com` (COIN-M).
    pub ws_url: String,
    /// auto | database | csv.
    pub output: RecordOutput,
    /// Directory of the CSV files (`output: csv`).
    pub csv_dir: PathBuf,
    /// Gzip the CSV files (`.csv.gz`; `fetch` reads both).
    pub csv_gzip: bool,
    /// A new CSV file starts every this many seconds (UTC-aligned).
    pub rotate_seconds: u64,
    /// Width of the coarse `batch_id` time bucket in seconds (`batch_id = ts / width`).
    pub batch_id_seconds: u64,
    /// Create the table (with a primary key on ts, symbol, level) if it does not exist.
    pub create_table: bool,
    /// Snapshots buffered between the collectors and the writer.
    pub queue_capacity: usize,
    /// Rows per multi-row INSERT.
    pub insert_batch_rows: usize,
    /// Where snapshots go while the database is down; empty = `<workdir>/record/spill`.
    pub spill_dir: PathBuf,
    /// Seconds between reconnect attempts while the database is down.
    pub db_retry_seconds: u64,
    /// Timeout of one REST request or WebSocket read, in seconds.
    pub request_timeout_seconds: u64,
    /// Upper bound of the network-error backoff, in seconds.
    pub max_backoff_seconds: u64,
    /// Request weight budget per minute (Binance: 6000 per IP).
    pub weight_limit_per_minute: u32,
    /// Seconds between status log lines.
    pub status_interval_seconds: u64,
    /// Reconnect the WebSocket after this many seconds (Binance closes it at 24 h).
    pub reconnect_after_seconds: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            market: RecordMarket::Spot,
            rest_url: String::new(),
            ws_url: String::new(),
            output: RecordOutput::Auto,
            csv_dir: PathBuf::from("recordings"),
            csv_gzip: false,
            rotate_seconds: 3_600,
            batch_id_seconds: 3_600,
            create_table: true,
            queue_capacity: 10_000,
            insert_batch_rows: 5_000,
            spill_dir: PathBuf::new(),
            db_retry_seconds: 5,
            request_timeout_seconds: 10,
            max_backoff_seconds: 60,
            weight_limit_per_minute: 6_000,
            status_interval_seconds: 60,
            reconnect_after_seconds: 23 * 3_600,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// targets

/// How class boundaries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassDefinition {
    /// Boundaries in percent of the current price.
    Percentage,
    /// Boundaries in quote currency.
    Absolute,
    /// Boundaries in units of trailing (past-only) volatility over the horizon.
    Adaptive,
}

/// How gaps in the cadence grid are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapHandling {
    /// Linear interpolation inside gaps up to `max_gap_seconds`.
    Interpolate,
    /// Drop every window and label touching a missing step.
    Skip,
    /// Repeat the last snapshot inside gaps up to `max_gap_seconds`.
    ForwardFill,
}

/// `targets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetsConfig {
    /// Horizon Δt of the predicted move; a multiple of the cadence.
    pub prediction_horizon_seconds: u64,
    /// Class boundaries.
    pub price_classes: PriceClasses,
    /// Label construction.
    pub labeling: LabelingConfig,
}

impl Default for TargetsConfig {
    fn default() -> Self {
        Self {
            prediction_horizon_seconds: 300,
            price_classes: PriceClasses::default(),
            labeling: LabelingConfig::default(),
        }
    }
}

/// `targets.price_classes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceClasses {
    /// percentage | absolute | adaptive.
    pub definition_type: ClassDefinition,
    /// Strictly increasing; n boundaries make n+1 classes.
    pub boundaries: Vec<f64>,
    /// Trailing window of the volatility estimate for `adaptive`.
    pub volatility_window_seconds: u64,
}

impl Default for PriceClasses {
    fn default() -> Self {
        Self {
            definition_type: ClassDefinition::Percentage,
            boundaries: vec![-10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0],
            volatility_window_seconds: 3_600,
        }
    }
}

/// `targets.labeling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelingConfig {
    /// Mid-price (true) or last trade price (false).
    pub use_midpoint: bool,
    /// interpolate | skip | forward_fill.
    pub handle_gaps: GapHandling,
    /// Smoothed labels: mean of the next k prices against the current one (0 = off).
    pub smoothing_steps: u32,
}

impl Default for LabelingConfig {
    fn default() -> Self {
        Self {
            use_midpoint: true,
            handle_gaps: GapHandling::Interpolate,
            smoothing_steps: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// preprocessing

/// Scaler family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizationMethod {
    /// Scale to [0, 1] with train min/max.
    MinMax,
    /// Zero mean, unit variance.
    Standard,
    /// Median and inter-quartile range.
    Robust,
}

/// Split strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// One train/validation/test cut by ratio.
    Chronological,
    /// Expanding-window folds moving forward in time, then the final test split.
    WalkForward,
}

/// Class balancing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancingMethod {
    /// Inverse-frequency weights in the loss.
    ClassWeights,
    /// Sample minority classes more often.
    Oversampling,
    /// Sample majority classes less often.
    Undersampling,
}

/// `preprocessing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessingConfig {
    /// Window length T in time steps fed to the model.
    pub window_steps: u32,
    /// Scalers.
    pub normalization: NormalizationConfig,
    /// Feature lists.
    pub feature_engineering: FeatureEngineeringConfig,
    /// Splits.
    pub train_test_split: SplitConfig,
    /// Class balancing.
    pub class_balancing: ClassBalancingConfig,
    /// Exponential time-decay sample weights.
    pub time_weighting: TimeWeightingConfig,
    /// Volatility-regime tags.
    pub regime_detection: RegimeDetectionConfig,
    /// Memory budget.
    pub memory: MemoryBudget,
}

impl Default for PreprocessingConfig {
    fn default() -> Self {
        Self {
            window_steps: 100,
            normalization: NormalizationConfig::default(),
            feature_engineering: FeatureEngineeringConfig::default(),
            train_test_split: SplitConfig::default(),
            class_balancing: ClassBalancingConfig::default(),
            time_weighting: TimeWeightingConfig::default(),
            regime_detection: RegimeDetectionConfig::default(),
            memory: MemoryBudget { max_bytes: 2 * GIB },
        }
    }
}

const GIB: u64 = 1 << 30;

/// A memory budget in bytes; stages fail fast when a plan would exceed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBudget {
    /// Upper bound on the stage's working memory.
    pub max_bytes: u64,
}

/// `preprocessing.normalization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizationConfig {
    /// min_max | standard | robust.
    pub method: NormalizationMethod,
    /// One scaler per asset (true) or one for all assets (false).
    pub per_asset: bool,
    /// Must be true: scalers are fit on the training split only (no look-ahead).
    pub fit_on_train_only: bool,
}

impl Default for NormalizationConfig {
    fn default() -> Self {
        Self {
            method: NormalizationMethod::MinMax,
            per_asset: true,
            fit_on_train_only: true,
        }
    }
}

/// `preprocessing.feature_engineering`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureEngineeringConfig {
    /// bid_ask_spread, volume_imbalance, depth_imbalance, weighted_mid_price.
    pub order_book_features: Vec<String>,
    /// price_momentum, volume_momentum.
    pub derived_features: Vec<String>,
    /// Look-back windows of the momentum features, in time steps.
    pub momentum_windows: Vec<u32>,
    /// Levels summed by depth_imbalance (<= data.order_book.depth_levels).
    pub depth_imbalance_levels: u32,
    /// Add per-level price offsets from mid (bps) and quantities.
    pub level_features: bool,
}

impl Default for FeatureEngineeringConfig {
    fn default() -> Self {
        Self {
            order_book_features: vec![
                "bid_ask_spread".into(),
                "volume_imbalance".into(),
                "depth_imbalance".into(),
                "weighted_mid_price".into(),
            ],
            derived_features: vec!["price_momentum".into(), "volume_momentum".into()],
            momentum_windows: vec![10, 60],
            depth_imbalance_levels: 5,
            level_features: true,
        }
    }
}

/// `preprocessing.train_test_split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// chronological | walk_forward.
    pub method: SplitMethod,
    /// Share of time steps for training.
    pub train_ratio: f64,
    /// Share for validation.
    pub validation_ratio: f64,
    /// Share for the final test.
    pub test_ratio: f64,
    /// Number of walk-forward folds (walk_forward only).
    pub n_folds: u32,
    /// Consecutive test slices for the temporal-degradation report.
    pub degradation_slices: u32,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            method: SplitMethod::Chronological,
            train_ratio: 0.70,
            validation_ratio: 0.15,
            test_ratio: 0.15,
            n_folds: 5,
            degradation_slices: 4,
        }
    }
}

/// `preprocessing.class_balancing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassBalancingConfig {
    /// Balance classes at all.
    pub enabled: bool,
    /// class_weights | oversampling | undersampling.
    pub method: BalancingMethod,
}

impl Default for ClassBalancingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            method: BalancingMethod::ClassWeights,
        }
    }
}

/// `preprocessing.time_weighting`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeWeightingConfig {
    /// Weight recent samples more.
    pub enabled: bool,
    /// A sample this many days older than the newest weighs half as much.
    pub half_life_days: f64,
}

impl Default for TimeWeightingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            half_life_days: 30.0,
        }
    }
}

/// `preprocessing.regime_detection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegimeDetectionConfig {
    /// Tag samples with a volatility regime.
    pub enabled: bool,
    /// Trailing window of the volatility estimate.
    pub volatility_window_seconds: u64,
    /// Number of regimes (quantile buckets of trailing volatility).
    pub n_regimes: u32,
}

impl Default for RegimeDetectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            volatility_window_seconds: 3_600,
            n_regimes: 3,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// diagnostics

/// `diagnostics`: checks run by the `diagnose` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Spreads wider than this (bps) count as suspicious.
    pub wide_spread_bps: f64,
    /// A class with fewer training samples than this is reported (exit 3 under fail_on_invalid).
    pub min_class_samples: u64,
    /// Rows in the sampled CSV artifact.
    pub sample_rows: u64,
    /// Bins of the population stability index.
    pub psi_bins: u32,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            wide_spread_bps: 50.0,
            min_class_samples: 30,
            sample_rows: 1_000,
            psi_bins: 10,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// model

/// Compute backend (Cargo features decide which are compiled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Pure-Rust CPU backend, always available.
    Flex,
    /// libtorch on CPU or one CUDA GPU (feature `tch`).
    Tch,
    /// burn-cuda (feature `cuda`).
    Cuda,
}

/// Multi-asset input layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputStrategy {
    /// One tensor `[batch, assets, T, features_per_asset]`, assets as channels.
    StackedChannels,
    /// One CNN branch per asset, concatenated before the LSTM.
    SeparateBranches,
}

/// Pooling kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Max pooling.
    Max,
    /// Average pooling.
    Avg,
}

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit.
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// x * sigmoid(x).
    Silu,
    /// Leaky ReLU (slope 0.01).
    LeakyRelu,
}

/// `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Always `burn` (the spec's `keras` is replaced; see README).
    pub framework: String,
    /// flex | tch | cuda.
    pub backend: Backend,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Model family key in the registry, e.g. `CNN_LSTM_MultiClass`.
    pub architecture: String,
    /// Input layout.
    pub input_representation: InputRepresentation,
    /// Convolution block.
    pub cnn: CnnConfig,
    /// Recurrent block.
    pub lstm: LstmConfig,
    /// Dense head.
    pub dense: DenseConfig,
    /// Output layer.
    pub output: OutputConfig,
    /// Optimiser and loss.
    pub compilation: CompilationConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            framework: "burn".into(),
            backend: Backend::Flex,
            device: "cpu".into(),
            architecture: "CNN_LSTM_MultiClass".into(),
            input_representation: InputRepresentation::default(),
            cnn: CnnConfig::default(),
            lstm: LstmConfig::default(),
            dense: DenseConfig::default(),
            output: OutputConfig::default(),
            compilation: CompilationConfig::default(),
        }
    }
}

/// `model.input_representation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputRepresentation {
    /// stacked_channels | separate_branches.
    pub strategy: InputStrategy,
}

impl Default for InputRepresentation {
    fn default() -> Self {
        Self {
            strategy: InputStrategy::StackedChannels,
        }
    }
}

/// `model.cnn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Number of conv blocks; every list below has this length.
    pub num_layers: u32,
    /// Output channels per block.
    pub filters: Vec<u32>,
    /// `[time, feature]` kernel per block.
    pub kernel_sizes: Vec<[u32; 2]>,
    /// max | avg.
    pub pooling: Pooling,
    /// `[time, feature]` pool per block.
    pub pool_sizes: Vec<[u32; 2]>,
    /// Activation after each conv.
    pub activation: Activation,
    /// Dropout after each block, in [0, 1).
    pub dropout_rates: Vec<f64>,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            num_layers: 2,
            filters: vec![64, 128],
            kernel_sizes: vec![[3, 3], [3, 3]],
            pooling: Pooling::Max,
            pool_sizes: vec![[2, 2], [2, 2]],
            activation: Activation::Relu,
            dropout_rates: vec![0.2, 0.3],
        }
    }
}

/// `model.lstm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LstmConfig {
    /// Hidden size.
    pub units: u32,
    /// Dropout on the LSTM output, in [0, 1).
    pub dropout: f64,
    /// Dropout on the recurrent state, in [0, 1).
    pub recurrent_dropout: f64,
}

impl Default for LstmConfig {
    fn default() -> Self {
        Self {
            units: 96,
            dropout: 0.3,
            recurrent_dropout: 0.2,
        }
    }
}

/// `model.dense`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseConfig {
    /// Units per hidden dense layer.
    pub layers: Vec<u32>,
    /// Dropout after each, same length as `layers`.
    pub dropout_rates: Vec<f64>,
}

impl Default for DenseConfig {
    fn default() -> Self {
        Self {
            layers: vec![64],
            dropout_rates: vec![0.2],
        }
    }
}

/// `model.output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Must equal `len(targets.price_classes.boundaries) + 1`.
    pub num_classes: u32,
    /// Always `softmax`.
    pub activation: String,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            num_classes: 8,
            activation: "softmax".into(),
        }
    }
}

/// `model.compilation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompilationConfig {
    /// Always `adam`.
    pub optimizer: String,
    /// Initial learning rate.
    pub learning_rate: f64,
    /// Always `categorical_crossentropy`.
    pub loss: String,
    /// Metrics reported per epoch: accuracy, precision, recall, f1.
    pub metrics: Vec<String>,
}

impl Default for CompilationConfig {
    fn default() -> Self {
        Self {
            optimizer: "adam".into(),
            learning_rate: 0.001,
            loss: "categorical_crossentropy".into(),
            metrics: vec!["accuracy".into(), "precision".into(), "recall".into()],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// training

/// `training`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Maximum epochs.
    pub epochs: u32,
    /// Samples per batch.
    pub batch_size: u32,
    /// Must be 0.0: the validation set comes from preprocessing.
    pub validation_split: f64,
    /// Seed of weights init, shuffling and dropout; same seed, same weights on CPU.
    pub seed: u64,
    /// Samples held by the bounded shuffle buffer.
    pub shuffle_buffer: u32,
    /// Batches prepared ahead on a background thread.
    pub prefetch_batches: u32,
    /// Early stopping and LR reduction.
    pub callbacks: CallbacksConfig,
    /// Loss class weights.
    pub class_weights: ClassWeightsConfig,
    /// Continue from a previous model.
    pub fine_tuning: FineTuningConfig,
    /// Memory budget.
    pub memory: MemoryBudget,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 32,
            validation_split: 0.0,
            seed: 42,
            shuffle_buffer: 10_000,
            prefetch_batches: 4,
            callbacks: CallbacksConfig::default(),
            class_weights: ClassWeightsConfig::default(),
            fine_tuning: FineTuningConfig::default(),
            memory: MemoryBudget { max_bytes: 4 * GIB },
        }
    }
}

/// `training.callbacks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksConfig {
    /// Stop when the monitored metric stops improving.
    pub early_stopping: EarlyStoppingConfig,
    /// Reduce the learning rate on a plateau.
    pub reduce_lr: ReduceLrConfig,
}

/// `training.callbacks.early_stopping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStoppingConfig {
    /// On or off.
    pub enabled: bool,
    /// Epoch metric watched, e.g. `val_loss` (lower is better) or `val_accuracy`.
    pub monitor: String,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    /// Restore the best epoch's weights at the end.
    pub restore_best_weights: bool,
}

impl Default for EarlyStoppingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            monitor: "val_loss".into(),
            patience: 10,
            restore_best_weights: true,
        }
    }
}

/// `training.callbacks.reduce_lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReduceLrConfig {
    /// On or off.
    pub enabled: bool,
    /// Epoch metric watched.
    pub monitor: String,
    /// New LR = LR x factor, factor in (0, 1).
    pub factor: f64,
    /// Epochs without improvement before reducing.
    pub patience: u32,
    /// Floor of the learning rate.
    pub min_lr: f64,
}

impl Default for ReduceLrConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            monitor: "val_loss".into(),
            factor: 0.5,
            patience: 5,
            min_lr: 0.00001,
        }
    }
}

/// `training.class_weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassWeightsConfig {
    /// Inverse-frequency weights from the training split's class counts.
    pub compute_from_train: bool,
}

impl Default for ClassWeightsConfig {
    fn default() -> Self {
        Self {
            compute_from_train: true,
        }
    }
}

/// `training.fine_tuning`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FineTuningConfig {
    /// Resume from a previous model instead of training from scratch.
    pub enabled: bool,
    /// MLflow run id of the base model (required when enabled, unless an alias is given).
    pub base_model_run_id: Option<String>,
    /// Registry alias of the base model, e.g. `champion`.
    pub base_model_alias: Option<String>,
    /// Experiment where the base model run lives.
    pub base_model_stage: String,
    /// Epochs of fine-tuning (default: training.epochs).
    pub epochs: Option<u32>,
    /// Learning rate of fine-tuning (default: model.compilation.learning_rate).
    pub learning_rate: Option<f64>,
    /// When the new version becomes `champion`.
    pub promotion: PromotionConfig,
}

impl Default for FineTuningConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_model_run_id: None,
            base_model_alias: None,
            base_model_stage: "binance-model-training".into(),
            epochs: None,
            learning_rate: None,
            promotion: PromotionConfig::default(),
        }
    }
}

/// `training.fine_tuning.promotion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionConfig {
    /// Holdout metric compared between base and fine-tuned model (higher is better).
    pub metric: String,
    /// The fine-tuned model must beat the base by at least this much.
    pub min_improvement: f64,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        Self {
            metric: "macro_f1".into(),
            min_improvement: 0.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// hyperparameter optimisation

/// Search direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher is better.
    Maximize,
    /// Lower is better.
    Minimize,
}

impl Direction {
    /// Whether `a` is strictly better than `b` in this direction.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Maximize => a > b,
            Direction::Minimize => a < b,
        }
    }
}

/// Sampler of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Tree-structured Parzen estimator.
    Tpe,
    /// Uniform random sampling.
    Random,
}

/// `hyperparameter_optimization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpoConfig {
    /// Run a search before the final training.
    pub enabled: bool,
    /// `optuna`: the algorithms are Optuna's (TPE + median pruner), implemented natively.
    pub framework: String,
    /// Trials in the study.
    pub n_trials: u32,
    /// maximize | minimize.
    pub direction: Direction,
    /// Validation metric optimised, e.g. `val_accuracy`.
    pub metric: String,
    /// tpe | random.
    pub sampler: SamplerKind,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop starting trials after this many seconds (none = no limit).
    pub timeout_seconds: Option<u64>,
    /// Rolling-window validation folds inside the training span.
    pub n_folds: u32,
    /// Median pruning of trials on per-epoch values.
    pub pruning: PruningConfig,
    /// Parameter name -> `[low, high]`, `[a, b, c]` or `{type, low, high, log, choices}`.
    pub search_space: BTreeMap<String, SearchParam>,
}

impl Default for HpoConfig {
    fn default() -> Self {
        let range = |low: f64, high: f64, kind| SearchParam::Explicit {
            kind,
            low: Some(low),
            high: Some(high),
            log: false,
            choices: None,
        };
        Self {
            enabled: false,
            framework: "optuna".into(),
            n_trials: 30,
            direction: Direction::Maximize,
            metric: "val_accuracy".into(),
            sampler: SamplerKind::Tpe,
            seed: 42,
            timeout_seconds: None,
            n_folds: 3,
            pruning: PruningConfig::default(),
            search_space: BTreeMap::from([
                ("cnn_filters_1".into(), range(16.0, 128.0, ParamKind::Int)),
                ("cnn_filters_2".into(), range(64.0, 256.0, ParamKind::Int)),
                ("lstm_units".into(), range(32.0, 256.0, ParamKind::Int)),
                (
                    "learning_rate".into(),
                    SearchParam::Explicit {
                        kind: ParamKind::Float,
                        low: Some(0.0001),
                        high: Some(0.01),
                        log: true,
                        choices: None,
                    },
                ),
                (
                    "batch_size".into(),
                    SearchParam::Choices(vec![16.into(), 32.into(), 64.into()]),
                ),
            ]),
        }
    }
}

/// `hyperparameter_optimization.pruning`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruningConfig {
    /// Prune trials worse than the median of finished trials at the same epoch.
    pub enabled: bool,
    /// Trials completed before pruning starts.
    pub n_startup_trials: u32,
    /// Epochs of a trial before it can be pruned.
    pub n_warmup_steps: u32,
}

impl Default for PruningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            n_startup_trials: 5,
            n_warmup_steps: 2,
        }
    }
}

/// Kind of a search-space parameter in the explicit form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Integer in [low, high].
    Int,
    /// Real in [low, high].
    Float,
    /// One of `choices`.
    Categorical,
}

/// One search-space entry. `[low, high]` of two numbers is a range (int when both are
/// integers); a list of any other length, or of non-numbers, is a categorical choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SearchParam {
    /// The explicit form, the only one that can say `log: true`.
    Explicit {
        /// int | float | categorical.
        #[serde(rename = "type")]
        kind: ParamKind,
        /// Lower bound (ranges).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        low: Option<f64>,
        /// Upper bound (ranges).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        high: Option<f64>,
        /// Sample on a log scale (ranges with low > 0).
        #[serde(default)]
        log: bool,
        /// Options (categorical).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        choices: Option<Vec<serde_yaml_ng::Value>>,
    },
    /// The spec's short list form.
    Choices(Vec<serde_yaml_ng::Value>),
}

// ---------------------------------------------------------------------------------------------
// mlflow

/// `mlflow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowConfig {
    /// `http(s)://host:port`, or `file:<dir>`; empty = local store `<workdir>/mlruns`.
    pub tracking_uri: String,
    /// Experiment of `run` parent runs.
    pub experiment_name: String,
    /// One experiment per stage.
    pub experiments: StageExperiments,
    /// Run names.
    pub run_naming: RunNaming,
    /// Which artifacts are logged.
    pub artifact_logging: ArtifactLogging,
    /// Registered models.
    pub model_registry: ModelRegistryConfig,
    /// HTTP behaviour of the client.
    pub client: MlflowClientConfig,
}

impl Default for MlflowConfig {
    fn default() -> Self {
        Self {
            tracking_uri: String::new(),
            experiment_name: "binance-price-prediction".into(),
            experiments: StageExperiments::default(),
            run_naming: RunNaming::default(),
            artifact_logging: ArtifactLogging::default(),
            model_registry: ModelRegistryConfig::default(),
            client: MlflowClientConfig::default(),
        }
    }
}

/// `mlflow.experiments`: the experiment each stage logs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageExperiments {
    /// `record` and `fetch`.
    pub data_collection: String,
    /// `preprocess`.
    pub preprocessing: String,
    /// `diagnose`.
    pub diagnostics: String,
    /// `train`, `finetune`.
    pub training: String,
    /// `evaluate`.
    pub evaluation: String,
    /// Hyperparameter studies.
    pub hyperparameter_optimization: String,
}

impl Default for StageExperiments {
    fn default() -> Self {
        Self {
            data_collection: "binance-data-collection".into(),
            preprocessing: "binance-preprocessing".into(),
            diagnostics: "binance-data-diagnostics".into(),
            training: "binance-model-training".into(),
            evaluation: "binance-model-evaluation".into(),
            hyperparameter_optimization: "binance-hyperparameter-optimization".into(),
        }
    }
}

/// `mlflow.run_naming`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunNaming {
    /// Placeholders `{asset}`, `{model}`, `{timestamp}` (`%Y%m%d-%H%M%S` UTC).
    pub pattern: String,
}

impl Default for RunNaming {
    fn default() -> Self {
        Self {
            pattern: "{asset}_{model}_{timestamp}".into(),
        }
    }
}

/// `mlflow.artifact_logging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactLogging {
    /// Per-layer summary text and diagram PNG.
    pub model_architecture_plot: bool,
    /// Loss/accuracy curves.
    pub training_plots: bool,
    /// Confusion matrix CSV + heatmap.
    pub confusion_matrix: bool,
    /// Class distribution per split.
    pub class_distribution: bool,
    /// Saliency ranking and heatmaps.
    pub feature_importance: bool,
}

impl Default for ArtifactLogging {
    fn default() -> Self {
        Self {
            model_architecture_plot: true,
            training_plots: true,
            confusion_matrix: true,
            class_distribution: true,
            feature_importance: false,
        }
    }
}

/// `mlflow.model_registry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelRegistryConfig {
    /// Register every trained model.
    pub register_model: bool,
    /// Placeholders `{asset}`, `{model}`.
    pub model_name_pattern: String,
}

impl Default for ModelRegistryConfig {
    fn default() -> Self {
        Self {
            register_model: true,
            model_name_pattern: "{asset}_predictor".into(),
        }
    }
}

/// `mlflow.client`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowClientConfig {
    /// Per-request timeout.
    pub timeout_seconds: u64,
    /// Retries on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// Journal everything locally instead of contacting the server.
    pub offline: bool,
}

impl Default for MlflowClientConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 30,
            max_retries: 5,
            offline: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// evaluation

/// `evaluation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Metrics reported (all are computed; this selects the summary).
    pub metrics: Vec<String>,
    /// Reliability and temperature scaling.
    pub calibration_analysis: CalibrationConfig,
    /// Simulated P&L.
    pub backtesting: BacktestConfig,
    /// Permutation importance and gradient x input saliency.
    pub explainability: ExplainabilityConfig,
    /// The multinomial logistic regression baseline.
    pub linear_baseline: LinearBaselineConfig,
    /// Samples per evaluation batch.
    pub batch_size: u32,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            metrics: [
                "accuracy",
                "precision_per_class",
                "recall_per_class",
                "f1_per_class",
                "confusion_matrix",
                "calibration_error",
            ]
            .map(String::from)
            .to_vec(),
            calibration_analysis: CalibrationConfig::default(),
            backtesting: BacktestConfig::default(),
            explainability: ExplainabilityConfig::default(),
            linear_baseline: LinearBaselineConfig::default(),
            batch_size: 256,
        }
    }
}

/// `evaluation.calibration_analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// Compute ECE/MCE and the reliability diagram.
    pub enabled: bool,
    /// Confidence bins.
    pub n_bins: u32,
    /// Fit a temperature on the validation split.
    pub temperature_scaling: bool,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            n_bins: 10,
            temperature_scaling: true,
        }
    }
}

/// `evaluation.backtesting`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BacktestConfig {
    /// Run the backtest.
    pub enabled: bool,
    /// Starting equity in quote currency.
    pub initial_capital: f64,
    /// Cost per unit of turnover (0.001 = 10 bps).
    pub transaction_cost: f64,
}

impl Default for BacktestConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            initial_capital: 10_000.0,
            transaction_cost: 0.001,
        }
    }
}

/// `evaluation.explainability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplainabilityConfig {
    /// Compute permutation importance and saliency maps.
    pub enabled: bool,
    /// Test samples used for saliency.
    pub n_samples: u32,
    /// Permutation importance.
    pub permutation: PermutationConfig,
}

impl Default for ExplainabilityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            n_samples: 512,
            permutation: PermutationConfig::default(),
        }
    }
}

/// `evaluation.explainability.permutation`: what one feature's shuffling costs the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermutationConfig {
    /// Test windows (evenly spaced) scored with each feature shuffled.
    pub n_samples: u32,
    /// Shuffles per feature, each with its own seed (the spread is their standard deviation).
    pub repeats: u32,
}

impl Default for PermutationConfig {
    fn default() -> Self {
        Self {
            n_samples: 512,
            repeats: 3,
        }
    }
}

/// `evaluation.linear_baseline`: multinomial logistic regression on the last step's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearBaselineConfig {
    /// Training windows it is fit on at most (evenly spaced over the training split).
    pub max_train_samples: u32,
    /// L2 penalty on the weights (`l2 / 2 x |W|^2` added to the mean cross-entropy).
    pub l2: f64,
}

impl Default for LinearBaselineConfig {
    fn default() -> Self {
        Self {
            max_train_samples: 50_000,
            l2: 1e-3,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// logging and security

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Progress.
    Info,
    /// Problems that do not stop the run.
    #[serde(alias = "WARN")]
    Warning,
    /// Failures.
    Error,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// `logging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// DEBUG | INFO | WARNING | ERROR.
    pub level: LogLevel,
    /// text | json.
    pub format: LogFormat,
    /// Colours when stderr is a terminal and NO_COLOR is unset.
    pub colored_output: bool,
    /// Prefix each line with the stage/function name.
    pub log_function_names: bool,
    /// Colour scheme.
    pub colors: LogColors,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Text,
            colored_output: true,
            log_function_names: true,
            colors: LogColors::default(),
        }
    }
}

/// `logging.colors`: colour names (black, red, green, yellow, blue, magenta, cyan, white,
/// and `bright_` variants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogColors {
    /// Stage/function names.
    pub function_names: String,
    /// Field names.
    pub parameter_names: String,
    /// Field values.
    pub parameter_values: String,
    /// INFO level.
    pub info: String,
    /// WARN level.
    pub warning: String,
    /// ERROR level.
    pub error: String,
    /// DEBUG level.
    pub debug: String,
}

impl Default for LogColors {
    fn default() -> Self {
        Self {
            function_names: "cyan".into(),
            parameter_names: "yellow".into(),
            parameter_values: "green".into(),
            info: "white".into(),
            warning: "yellow".into(),
            error: "red".into(),
            debug: "blue".into(),
        }
    }
}

/// `security`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Variables that must be set (values are never printed).
    pub environment_variables: Vec<String>,
    /// When to check them.
    pub validation: SecurityValidation,
}

/// `security.validation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityValidation {
    /// Check the variables before any stage runs.
    pub check_env_vars_at_startup: bool,
    /// A missing variable is a config error (exit 2), not a warning.
    pub fail_if_missing: bool,
}

impl Default for SecurityValidation {
    fn default() -> Self {
        Self {
            check_env_vars_at_startup: true,
            fail_if_missing: true,
        }
    }
}
