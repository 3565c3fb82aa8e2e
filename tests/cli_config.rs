//! The binary's command line, configuration loading and validation, end to end: every bad
//! input exits 2 with a message naming the key, and no secret is ever printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

const QUICKSTART: &str = include_str!("../config/quickstart.yaml");
const SPEC_CONFIG: &str = "config/training_config.yaml";

/// Variables the tests control; removed from the child's environment unless set per test.
const CONTROLLED: &[&str] = &[
    "DATABASE_URI",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "BINANCE_ML_CONFIG",
    "BINANCE_ML_WORKDIR",
    "NO_COLOR",
];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs the binary in `cwd` (a temp dir, so no stray `.env` is read) with `env` set.
fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_binance-ml"));
    cmd.current_dir(cwd).args(args);
    for name in CONTROLLED {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs").into()
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn quickstart() -> Value {
    serde_yaml_ng::from_str(QUICKSTART).unwrap()
}

/// Sets `dotted.path` (creating mappings) in a YAML tree.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if node.get(*part).is_none() {
            node[*part] = Value::Mapping(Default::default());
        }
        node = node.get_mut(*part).unwrap();
    }
    node[*parts.last().unwrap()] = value;
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// Writes `config` to a temp dir and runs `validate-config` on it.
fn validate(config: &Value, env: &[(&str, &str)]) -> (tempfile::TempDir, Run) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(config).unwrap()).unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--config", path.to_str().unwrap()],
        env,
    );
    (dir, run)
}

fn assert_config_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "expected exit 2; stderr:\n{}", run.stderr);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "stderr lacks {n:?}:\n{}",
            run.stderr
        );
    }
}

/// One test per validation rule: set `path` to `value` in the quickstart config, expect exit 2
/// and a message naming `key` and containing `expect`.
macro_rules! rejects {
    ($($name:ident: $path:literal = $value:literal => $key:literal, $expect:literal;)*) => {$(
        #[test]
        fn $name() {
            let mut c = quickstart();
            set(&mut c, $path, yaml($value));
            let (_dir, run) = validate(&c, &[]);
            assert_config_error(&run, &[concat!($key, ":"), $expect]);
        }
    )*};
}

rejects! {
    boundaries_must_increase: "targets.price_classes.boundaries" = "[0.05, -0.05]"
        => "targets.price_classes.boundaries", "strictly increasing";
    num_classes_must_match_boundaries: "model.output.num_classes" = "4"
        => "model.output.num_classes", "make 3 classes";
    split_ratios_must_sum_to_one: "preprocessing.train_test_split.test_ratio" = "0.3"
        => "preprocessing.train_test_split", "must be 1";
    split_ratio_must_be_in_unit_interval: "preprocessing.train_test_split.train_ratio" = "1.0"
        => "preprocessing.train_test_split.train_ratio", "(0, 1)";
    filters_must_match_num_layers: "model.cnn.filters" = "[16]"
        => "model.cnn.filters", "model.cnn.num_layers is 2";
    kernel_sizes_must_match_num_layers: "model.cnn.kernel_sizes" = "[[3, 3], [3, 3], [3, 3]]"
        => "model.cnn.kernel_sizes", "has 3 entries";
    pool_sizes_must_match_num_layers: "model.cnn.pool_sizes" = "[[2, 1]]"
        => "model.cnn.pool_sizes", "has 1 entries";
    cnn_dropouts_must_match_num_layers: "model.cnn.dropout_rates" = "[0.1]"
        => "model.cnn.dropout_rates", "has 1 entries";
    dense_dropouts_must_match_layers: "model.dense.dropout_rates" = "[0.1, 0.2]"
        => "model.dense.dropout_rates", "len(model.dense.layers)";
    dropout_below_one: "model.lstm.dropout" = "1.0"
        => "model.lstm.dropout", "[0, 1)";
    dropout_not_negative: "model.cnn.dropout_rates" = "[0.1, -0.2]"
        => "model.cnn.dropout_rates[1]", "[0, 1)";
    cadence_positive: "data.time_range.cadence_seconds" = "0"
        => "data.time_range.cadence_seconds", "positive";
    horizon_multiple_of_cadence: "targets.prediction_horizon_seconds" = "65"
        => "targets.prediction_horizon_seconds", "not a multiple";
    start_before_end: "data.time_range.end_date" = "'2024-07-01'"
        => "data.time_range.end_date", "must be after start_date";
    known_order_book_feature: "preprocessing.feature_engineering.order_book_features" = "[bid_ask_sprad]"
        => "preprocessing.feature_engineering.order_book_features[0]", "did you mean \"bid_ask_spread\"";
    known_derived_feature: "preprocessing.feature_engineering.derived_features" = "[rsi]"
        => "preprocessing.feature_engineering.derived_features[0]", "price_momentum";
    known_temporal_feature: "data.temporal_features.local" = "[hour_of_week]"
        => "data.temporal_features.local[0]", "unknown name";
    fine_tuning_needs_base: "training.fine_tuning.enabled" = "true"
        => "training.fine_tuning.base_model_run_id", "required";
    hpo_range_low_below_high: "hyperparameter_optimization.search_space" = "{lstm_units: [64, 32]}"
        => "hyperparameter_optimization.search_space.lstm_units", "low must be < high";
    hpo_explicit_range_low_below_high: "hyperparameter_optimization.search_space" = "{learning_rate: {type: float, low: 0.1, high: 0.01, log: true}}"
        => "hyperparameter_optimization.search_space.learning_rate", "low must be < high";
    hpo_log_needs_positive_low: "hyperparameter_optimization.search_space" = "{learning_rate: {type: float, low: 0.0, high: 0.01, log: true}}"
        => "hyperparameter_optimization.search_space.learning_rate", "log scale";
    hpo_unknown_parameter: "hyperparameter_optimization.search_space" = "{lstm_unit: [32, 64]}"
        => "hyperparameter_optimization.search_space.lstm_unit", "did you mean \"lstm_units\"";
    fit_on_train_only_required: "preprocessing.normalization.fit_on_train_only" = "false"
        => "preprocessing.normalization.fit_on_train_only", "leaks the future";
    unknown_architecture: "model.architecture" = "CNN_LSTM_Multiclass"
        => "model.architecture", "did you mean \"CNN_LSTM_MultiClass\"";
    flex_runs_on_cpu_only: "model.device" = "cuda:0"
        => "model.device", "CPU only";
    database_source_needs_uri: "data.source_type" = "database"
        => "data.connection.database_uri", "required";
    file_source_needs_paths: "data.source_type" = "file"
        => "data.files.paths", "required";
    sql_identifiers_are_strict: "data.columns.ts" = "'ts; drop table x'"
        => "data.columns.ts", "invalid SQL identifier";
    correlated_asset_not_target: "data.asset_pairs.correlated_assets" = "[ETHUSDT, BTCUSDT]"
        => "data.asset_pairs.correlated_assets[1]", "is the target asset";
    run_name_placeholders_known: "mlflow.run_naming.pattern" = "'{asset}_{modle}'"
        => "mlflow.run_naming.pattern", "did you mean \"model\"";
    tracking_uri_scheme: "mlflow.tracking_uri" = "'ftp://host'"
        => "mlflow.tracking_uri", "expected http(s)://";
    log_color_known: "logging.colors.info" = "chartreuse"
        => "logging.colors.info", "unknown name";
    symbol_pattern: "data.asset_pairs.target_asset" = "btc-usdt"
        => "data.asset_pairs.target_asset", "uppercase";
    wrong_type_is_named: "training.epochs" = "many"
        => "training.epochs", "invalid type: string \"many\"";
    unknown_enum_value_suggests: "data.source_type" = "synthetc"
        => "data.source_type", "did you mean `synthetic`";
    representation_not_yet_supported: "data.order_book.representation" = "aggregated"
        => "data.order_book.representation", "only \"full\" is implemented";
    labels_from_mid_prices: "targets.labeling.use_midpoint" = "false"
        => "targets.labeling.use_midpoint", "no trade prices";
    memory_budget_positive: "training.memory.max_bytes" = "0"
        => "training.memory.max_bytes", "must be > 0";
}

#[test]
fn help_lists_the_ten_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &["--help"], &[]);
    assert_eq!(run.code, 0);
    for sub in [
        "record",
        "fetch",
        "preprocess",
        "diagnose",
        "train",
        "finetune",
        "evaluate",
        "predict",
        "run",
        "validate-config",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "--help lacks {sub}:\n{}",
            run.stdout
        );
        let sub_help = run_in(dir.path(), &[sub, "--help"], &[]);
        assert_eq!(sub_help.code, 0, "{sub} --help");
        assert!(
            sub_help.stdout.contains("Example:"),
            "{sub} --help has no example"
        );
    }
}

#[test]
fn spec_config_validates_with_its_variables_and_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "DATABASE_URI",
            "postgresql://trader:db-pa55word@db.internal:4003/public",
        ),
        ("MLFLOW_TRACKING_URI", "https://mlflow.internal"),
        ("MLFLOW_TRACKING_USERNAME", "trader"),
        ("MLFLOW_TRACKING_PASSWORD", "mlflow-s3cret-value"),
    ];
    let config = repo_file(SPEC_CONFIG);
    for json in [false, true] {
        let mut args = vec!["validate-config", "--config", config.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let run = run_in(dir.path(), &args, &env);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        for secret in ["db-pa55word", "mlflow-s3cret-value"] {
            assert!(!run.stdout.contains(secret), "stdout leaks {secret}");
            assert!(!run.stderr.contains(secret), "stderr leaks {secret}");
        }
        if json {
            let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
            assert_eq!(v["valid"], true);
            assert_eq!(
                v["config"]["data"]["connection"]["database_uri"],
                "postgresql://trader:***@db.internal:4003/public"
            );
            assert_eq!(
                v["config"]["model"]["cnn"]["filters"],
                serde_json::json!([64, 128])
            );
        } else {
            assert!(
                run.stdout
                    .contains("postgresql://trader:***@db.internal:4003/public")
            );
            // The printed configuration is itself a valid configuration.
            let printed: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
            assert_eq!(
                printed["targets"]["prediction_horizon_seconds"],
                Value::from(300)
            );
        }
    }
}

#[test]
fn spec_config_without_its_variables_names_each_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_file(SPEC_CONFIG);
    let run = run_in(
        dir.path(),
        &["validate-config", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_config_error(
        &run,
        &[
            "data.connection.database_uri: environment variable DATABASE_URI is not set",
            "security.environment_variables[2]: environment variable MLFLOW_TRACKING_USERNAME is required",
            "security.environment_variables[3]: environment variable MLFLOW_TRACKING_PASSWORD is required",
        ],
    );
}

#[test]
fn embedded_quickstart_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &["validate-config"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("embedded quickstart"));
    assert!(run.stdout.contains("source_type: synthetic"));
}

#[test]
fn config_from_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, QUICKSTART.replace("seed: 42", "seed: 7")).unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--json"],
        &[("BINANCE_ML_CONFIG", path.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["config"]["data"]["synthetic"]["seed"], 7);
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--config", "nope.yaml"],
        &[],
    );
    assert_config_error(&run, &["config file nope.yaml not found"]);
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "data:\n  source_type: synthetic\n  asset_pairs: [unclosed\n",
    )
    .unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_config_error(&run, &["bad.yaml:", "YAML syntax error"]);
    let location = run.stderr.split("bad.yaml:").nth(1).unwrap();
    let mut parts = location.split(':');
    let line: usize = parts.next().unwrap().parse().expect("line number");
    let column: usize = parts.next().unwrap().parse().expect("column number");
    assert!(line >= 3 && column >= 1, "location {line}:{column}");
}

#[test]
fn empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    std::fs::write(&path, "# nothing\n").unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_config_error(&run, &["the file is empty"]);
}

#[test]
fn unknown_key_is_named_with_a_suggestion() {
    let mut c = quickstart();
    set(&mut c, "training.epocs", Value::from(3));
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(
        &run,
        &["training: unknown key `epocs` (did you mean `epochs`?)"],
    );

    let mut c = quickstart();
    set(&mut c, "colour_scheme", Value::from("dark"));
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(
        &run,
        &[
            "unknown key `colour_scheme`",
            "expected one of: workdir, data",
        ],
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut c = quickstart();
    set(&mut c, "targets.price_classes.boundaries", yaml("[1, 1]"));
    set(&mut c, "model.cnn.filters", yaml("[8]"));
    set(&mut c, "model.lstm.recurrent_dropout", yaml("1.5"));
    set(
        &mut c,
        "preprocessing.train_test_split.validation_ratio",
        yaml("0.5"),
    );
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(
        &run,
        &[
            "problems in the configuration",
            "targets.price_classes.boundaries:",
            "model.cnn.filters:",
            "model.lstm.recurrent_dropout:",
            "preprocessing.train_test_split:",
        ],
    );
}

#[test]
fn invalid_config_with_json_lists_problems_on_stdout() {
    let mut c = quickstart();
    set(&mut c, "model.output.num_classes", Value::from(9));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&c).unwrap()).unwrap();
    let run = run_in(
        dir.path(),
        &[
            "validate-config",
            "--json",
            "--log-format",
            "json",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 2);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["key"], "model.output.num_classes");
    let err: serde_json::Value = serde_json::from_str(run.stderr.trim()).expect("JSON log line");
    assert_eq!(err["level"], "ERROR");
    assert_eq!(err["exit_code"], 2);
}

#[test]
fn missing_required_env_var_is_named_not_printed() {
    let mut c = quickstart();
    set(
        &mut c,
        "security.environment_variables",
        yaml("[DATABASE_URI, MLFLOW_TRACKING_PASSWORD]"),
    );
    let (_dir, run) = validate(&c, &[("MLFLOW_TRACKING_PASSWORD", "only-this-one-is-set")]);
    assert_config_error(
        &run,
        &["security.environment_variables[0]: environment variable DATABASE_URI is required"],
    );
    assert!(!run.stderr.contains("only-this-one-is-set"));
    assert!(!run.stderr.contains("environment_variables[1]"));
}

#[test]
fn interpolation_defaults_types_and_missing_variables() {
    let mut c = quickstart();
    set(&mut c, "training.epochs", Value::from("${EPOCHS:-9}"));
    set(
        &mut c,
        "data.source_name",
        Value::from("src-${SOURCE_SUFFIX}"),
    );
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(
        &run,
        &["data.source_name: environment variable SOURCE_SUFFIX is not set"],
    );

    let mut c = quickstart();
    set(&mut c, "training.epochs", Value::from("${EPOCHS:-9}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&c).unwrap()).unwrap();
    let args = [
        "validate-config",
        "--json",
        "--config",
        path.to_str().unwrap(),
    ];
    let v: serde_json::Value =
        serde_json::from_str(&run_in(dir.path(), &args, &[]).stdout).unwrap();
    assert_eq!(v["config"]["training"]["epochs"], 9);
    let run = run_in(dir.path(), &args, &[("EPOCHS", "12")]);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["config"]["training"]["epochs"], 12);
}

#[test]
fn dotenv_file_supplies_variables_without_overriding() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "DATABASE_URI=postgresql://u:from-dotenv-pw@h:5432/d\nMLFLOW_TRACKING_URI=http://from-dotenv\n",
    )
    .unwrap();
    let mut c = quickstart();
    set(&mut c, "data.source_type", Value::from("database"));
    set(
        &mut c,
        "data.connection.database_uri",
        Value::from("${DATABASE_URI}"),
    );
    set(
        &mut c,
        "mlflow.tracking_uri",
        Value::from("${MLFLOW_TRACKING_URI}"),
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&c).unwrap()).unwrap();
    let run = run_in(
        dir.path(),
        &[
            "validate-config",
            "--json",
            "--config",
            path.to_str().unwrap(),
        ],
        &[("MLFLOW_TRACKING_URI", "http://from-env")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v["config"]["data"]["connection"]["database_uri"],
        "postgresql://u:***@h:5432/d"
    );
    assert_eq!(v["config"]["mlflow"]["tracking_uri"], "http://from-env");
    assert!(!run.stdout.contains("from-dotenv-pw"));
}

#[test]
fn malformed_dotenv_is_an_error_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "GOOD=1\nthis is not valid secret-ish-line\n",
    )
    .unwrap();
    let run = run_in(dir.path(), &["validate-config"], &[]);
    assert_config_error(&run, &[".env", "expected NAME=value"]);
    assert!(!run.stderr.contains("secret-ish-line"));
}

#[test]
fn secrets_in_error_paths_are_redacted() {
    // A URI with a password where a plain word was expected: serde echoes the value.
    let mut c = quickstart();
    set(
        &mut c,
        "data.source_type",
        Value::from("postgres://admin:hunter2hunter2@db/x"),
    );
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(&run, &["data.source_type", "postgres://admin:***@db/x"]);
    assert!(!run.stderr.contains("hunter2hunter2"));

    // A non-postgres URI: the message explains the expected form without the password.
    let mut c = quickstart();
    set(&mut c, "data.source_type", Value::from("database"));
    set(
        &mut c,
        "data.connection.database_uri",
        Value::from("mysql://root:toor-secret@db/x"),
    );
    let (_dir, run) = validate(&c, &[]);
    assert_config_error(
        &run,
        &["data.connection.database_uri", "expected a postgresql://"],
    );
    assert!(!run.stderr.contains("toor-secret"));

    // The value of a secret environment variable, reaching a message through interpolation.
    let mut c = quickstart();
    set(
        &mut c,
        "training.epochs",
        Value::from("x${MLFLOW_TRACKING_PASSWORD}"),
    );
    let (_dir, run) = validate(&c, &[("MLFLOW_TRACKING_PASSWORD", "pw-from-environment")]);
    assert_config_error(&run, &["training.epochs", "***"]);
    assert!(!run.stderr.contains("pw-from-environment"));
}

#[test]
fn finetune_without_a_base_model_says_how_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &["finetune"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--base-run-id or --base-model-alias"),
        "{}",
        run.stderr
    );
}

#[test]
fn cli_overrides_replace_config_values_before_validation() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(
        dir.path(),
        &["validate-config", "--json", "--workdir", "/tmp/elsewhere"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["config"]["workdir"], "/tmp/elsewhere");
    // --device cuda:0 with the flex backend is caught by validation, naming the key.
    let run = run_in(dir.path(), &["train", "--device", "cuda:0"], &[]);
    assert_config_error(&run, &["model.device", "CPU only"]);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &["train", "--backend", "tensorflow"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("invalid value 'tensorflow'"));
    let run = run_in(dir.path(), &["frobnicate"], &[]);
    assert_eq!(run.code, 2);
}

#[test]
fn logs_without_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &["train", "--log-level", "debug"], &[]);
    assert!(
        run.stderr.contains("configuration loaded"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains('\x1b'), "escape codes in piped stderr");
    let run = run_in(
        dir.path(),
        &["train", "--log-level", "debug", "--log-format", "json"],
        &[],
    );
    for line in run.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
        assert!(v["level"].is_string() && v["message"].is_string());
    }
}
