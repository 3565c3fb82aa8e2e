//! The command line: global flags and one subcommand per stage (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Backend, LogFormat};
use crate::pipeline::Step;
use crate::record::RecordMode;

/// Turns Binance order-book snapshots into calibrated price-move classifiers.
///
/// Every stage reads `--config` (default: the embedded quickstart configuration), logs to
/// stderr and prints its result (paths, run ids) on stdout. Exit codes: 0 ok, 2 usage or
/// configuration, 3 data or input, 4 external service (database, MLflow, Binance),
/// 5 training or evaluation, 6 another run holds the lock.
#[derive(Debug, Parser)]
#[command(
    name = "binance-ml",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_help = "Example:\n  binance-ml run --config config/quickstart.yaml")]
pub struct Cli {
    /// Global flags, shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The stage or command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (YAML). Without it, the embedded quickstart configuration is used.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BINANCE_ML_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Work directory for caches, models, locks and the local MLflow store [default: `workdir` from the config].
    #[arg(long, global = true, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Log level [default: `logging.level` from the config].
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<CliLogLevel>,
    /// Log line format on stderr [default: `logging.format` from the config].
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Never colour output (also: the NO_COLOR variable, or stderr not a terminal).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Print the command's result on stdout as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never contact the MLflow server: journal everything for `binance-ml tracking sync`.
    #[arg(long, global = true)]
    pub offline: bool,
    /// Environment file loaded before the configuration (variables already set win).
    #[arg(long, global = true, default_value = ".env", value_name = "FILE")]
    pub env_file: PathBuf,
}

/// Log levels accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CliLogLevel {
    /// Everything.
    Debug,
    /// Progress.
    Info,
    /// Problems that do not stop the run.
    #[value(alias = "warn")]
    Warning,
    /// Failures only.
    Error,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record Binance order-book snapshots into the database or CSV files.
    #[command(
        after_help = "Example:\n  binance-ml record --config training_config.yaml --duration 1h --symbols BTCUSDT,ETHUSDT"
    )]
    Record(RecordArgs),
    /// Fetch snapshots from the configured source into the shard cache.
    #[command(after_help = "Example:\n  binance-ml fetch --config training_config.yaml --force")]
    Fetch(FetchArgs),
    /// Build leakage-free, ML-ready features, labels and splits from the shard cache.
    #[command(after_help = "Example:\n  binance-ml preprocess --config training_config.yaml")]
    Preprocess(ForceArgs),
    /// Check spreads, gaps, class balance and drift before training.
    #[command(after_help = "Example:\n  binance-ml diagnose --config training_config.yaml --json")]
    Diagnose,
    /// Train the configured model on the preprocessed data.
    #[command(
        after_help = "Example:\n  binance-ml train --config training_config.yaml --backend tch --device cuda:0"
    )]
    Train(TrainArgs),
    /// Continue training a registered model on new data; promote it if it is better.
    #[command(
        after_help = "Example:\n  binance-ml finetune --config nightly.yaml --base-model-alias champion"
    )]
    Finetune(FinetuneArgs),
    /// Evaluate a trained model: metrics, baselines, calibration, degradation, backtest.
    #[command(
        after_help = "Example:\n  binance-ml evaluate --config training_config.yaml --model-alias champion"
    )]
    Evaluate(EvaluateArgs),
    /// Predict class probabilities for the latest order books.
    #[command(
        after_help = "Example:\n  binance-ml predict --config training_config.yaml --model-alias champion --json"
    )]
    Predict(PredictArgs),
    /// Run the whole pipeline: fetch, preprocess, diagnose, train, evaluate.
    #[command(
        after_help = "Example:\n  binance-ml run --config config/quickstart.yaml\n  binance-ml run --config training_config.yaml --from preprocess --until train"
    )]
    Run(RunArgs),
    /// Simulate the nightly policy over history: fine-tune + promotion vs the frozen base vs a
    /// rolling retrain, scored out of sample day by day.
    #[command(
        after_help = "Example:\n  binance-ml replay --config training_config.yaml --train-days 7 --window-days 7"
    )]
    Replay(ReplayArgs),
    /// Validate the configuration and print it (after interpolation and defaults), secrets masked.
    #[command(
        after_help = "Example:\n  binance-ml validate-config --config config/training_config.yaml"
    )]
    ValidateConfig,
    /// MLflow housekeeping: replay what was journaled while the server was unreachable.
    #[command(subcommand)]
    Tracking(TrackingCommand),
}

/// `tracking` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrackingCommand {
    /// Replay the local journal (`<workdir>/mlflow-spool`) to the MLflow server; idempotent.
    #[command(after_help = "Example:\n  binance-ml tracking sync --config training_config.yaml")]
    Sync,
}

impl Command {
    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Record(_) => "record",
            Command::Fetch(_) => "fetch",
            Command::Preprocess(_) => "preprocess",
            Command::Diagnose => "diagnose",
            Command::Train(_) => "train",
            Command::Finetune(_) => "finetune",
            Command::Evaluate(_) => "evaluate",
            Command::Predict(_) => "predict",
            Command::Run(_) => "run",
            Command::Replay(_) => "replay",
            Command::ValidateConfig => "validate-config",
            Command::Tracking(TrackingCommand::Sync) => "tracking sync",
        }
    }
}

/// `record` options.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 90s, 10m, 24h); default: until SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Comma-separated symbols, replacing target + correlated assets of the config.
    #[arg(long, value_delimiter = ',', value_name = "SYMBOLS")]
    pub symbols: Vec<String>,
    /// REST polling or the diff-depth WebSocket with a local book.
    #[arg(long, value_enum, default_value = "websocket")]
    pub mode: RecordMode,
}

/// `fetch` options.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Refetch every shard even if a valid one is cached.
    #[arg(long)]
    pub force: bool,
}

/// Options of stages that cache their output.
#[derive(Debug, Args)]
pub struct ForceArgs {
    /// Recompute even if a valid cached output exists.
    #[arg(long)]
    pub force: bool,
}

/// Backend selection shared by the stages that run the model.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Compute backend [default: `model.backend` from the config].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// `cpu` or `cuda:N` [default: `model.device` from the config].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// `train` options.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Backend and device.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Continue from the last checkpoint of an interrupted training with the same config.
    #[arg(long)]
    pub resume: bool,
}

/// `replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Days of `data.time_range` (from its start) the base model trains on; every later day is
    /// replayed.
    #[arg(long, default_value_t = 3, value_name = "DAYS")]
    pub train_days: u32,
    /// Length of the rolling retrain's window in days [default: --train-days].
    #[arg(long, value_name = "DAYS")]
    pub window_days: Option<u32>,
}

/// `finetune` options.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Backend and device.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// MLflow run id of the base model.
    #[arg(long, conflicts_with = "base_model_alias", value_name = "RUN_ID")]
    pub base_run_id: Option<String>,
    /// Registry alias of the base model, e.g. champion.
    #[arg(long, value_name = "ALIAS")]
    pub base_model_alias: Option<String>,
}

/// Which model a command uses.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ModelSelector {
    /// The training run that produced the model.
    #[arg(long, value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// A registered model version number.
    #[arg(long, value_name = "VERSION")]
    pub model_version: Option<u32>,
    /// A registry alias, e.g. champion.
    #[arg(long, value_name = "ALIAS")]
    pub model_alias: Option<String>,
}

/// Which split `evaluate` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalSplit {
    /// The held-out test split.
    Test,
    /// The validation split.
    Val,
}

/// `evaluate` options.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Backend and device.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The model to evaluate [default: the latest training run for this config].
    #[command(flatten)]
    pub model: ModelSelector,
    /// The split to score.
    #[arg(long, value_enum, default_value = "test")]
    pub split: EvalSplit,
    /// Evaluate on new data from this instant (YYYY-MM-DD or RFC 3339) instead of a split;
    /// requires --end.
    #[arg(long, requires = "end", value_name = "START")]
    pub start: Option<String>,
    /// End of the new data range (exclusive; a date includes its whole day); requires --start.
    #[arg(long, requires = "start", value_name = "END")]
    pub end: Option<String>,
}

/// `predict` options.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Backend and device.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The model to use.
    #[command(flatten)]
    pub model: ModelSelector,
    /// Predict every window ending in [START, END) instead of the latest one (YYYY-MM-DD or
    /// RFC 3339); requires --end.
    #[arg(long, requires = "end", value_name = "START")]
    pub start: Option<String>,
    /// End of the range (exclusive; a date includes its whole day); requires --start.
    #[arg(long, requires = "start", value_name = "END")]
    pub end: Option<String>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Backend and device.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// First stage to execute (earlier ones must have cached outputs).
    #[arg(long, value_enum, value_name = "STAGE")]
    pub from: Option<Step>,
    /// Last stage to execute.
    #[arg(long, value_enum, value_name = "STAGE")]
    pub until: Option<Step>,
}
