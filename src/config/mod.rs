//! The `training_config.yaml` schema, loading, interpolation, validation and redaction.
//!
//! Loading is: read -> parse YAML (syntax errors with line/column) -> interpolate `${VAR}`
//! (problems named by key) -> deserialize into [`Config`] (unknown keys and wrong types named
//! by key path, with a "did you mean") -> semantic validation (every problem at once).

mod interpolate;
mod params;
pub mod redact;
mod schema;
mod types;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use interpolate::expand;
pub use params::flatten;
pub use redact::Redactor;
pub use schema::*;
pub use types::{Cadence, DateBound, Symbol};

use serde_yaml_ng::Value;

/// The embedded default configuration (`config/quickstart.yaml`): synthetic data, local
/// MLflow store, a small model. Used when no `--config` is given.
pub const QUICKSTART_YAML: &str = include_str!("../../config/quickstart.yaml");

/// One problem found in a configuration, at a key path such as
/// `targets.price_classes.boundaries`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Dotted key path; empty for the top level.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() {
            "(top level)"
        } else {
            &self.key
        };
        write!(f, "{key}: {}", self.message)
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// The built-in quickstart configuration.
    Embedded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Embedded => f.write_str("<embedded quickstart.yaml>"),
        }
    }
}

/// Why a configuration could not be used. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("config file {0} not found (pass --config <file> or set BINANCE_ML_CONFIG)")]
    NotFound(PathBuf),
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{origin}:{line}:{column}: YAML syntax error: {message}")]
    Syntax {
        /// The file.
        origin: Origin,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The `.env` file could not be parsed.
    #[error("{path}: {message}")]
    DotEnv {
        /// The `.env` file.
        path: PathBuf,
        /// What is wrong (never the line's content, which may hold a secret).
        message: String,
    },
    /// Keys, types or values are wrong; every problem found is listed.
    #[error("{origin}: {} problem{} in the configuration:\n{}", .problems.len(),
        if .problems.len() == 1 { "" } else { "s" },
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        origin: Origin,
        /// Every problem, in file order where possible.
        problems: Vec<Problem>,
    },
}

/// A validated configuration with what is needed to print or snapshot it safely.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The effective configuration (after interpolation and defaults).
    pub config: Config,
    /// Where it came from.
    pub origin: Origin,
    /// Non-fatal findings (e.g. unset variables when `fail_if_missing` is false).
    pub warnings: Vec<String>,
    /// Scrubs secrets from text derived from this configuration.
    pub redactor: Redactor,
}

impl LoadedConfig {
    /// First 16 hex digits of the sha256 of the redacted effective configuration: the
    /// `binance_ml.config_hash` tag of every stage run.
    pub fn config_hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.redacted_yaml().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The effective configuration as YAML, every secret masked: what `validate-config`
    /// prints and what every MLflow run stores as `training_config.yaml`.
    pub fn redacted_yaml(&self) -> String {
        let mut value = serde_yaml_ng::to_value(&self.config).expect("config serialises");
        self.redactor.redact_value(&mut value);
        serde_yaml_ng::to_string(&value).expect("YAML value serialises")
    }
}

/// Command-line values that replace configuration keys before validation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--workdir`.
    pub workdir: Option<PathBuf>,
    /// `--backend`.
    pub backend: Option<Backend>,
    /// `--device`.
    pub device: Option<String>,
    /// `--offline`.
    pub offline: bool,
}

impl Overrides {
    fn apply(&self, c: &mut Config) {
        if let Some(w) = &self.workdir {
            c.workdir = w.clone();
        }
        if let Some(b) = self.backend {
            c.model.backend = b;
        }
        if let Some(d) = &self.device {
            c.model.device = d.clone();
        }
        if self.offline {
            c.mlflow.client.offline = true;
        }
    }
}

/// Environment lookup, injectable for tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads `.env` from `path` if it exists, without overriding variables already set.
pub fn load_dotenv(path: &Path) -> Result<(), ConfigError> {
    if !path.exists() {
        return Ok(());
    }
    dotenvy::from_path(path).map_err(|e| ConfigError::DotEnv {
        path: path.to_owned(),
        message: match e {
            dotenvy::Error::LineParse(_, index) => {
                format!("cannot parse line at byte {index}: expected NAME=value")
            }
            dotenvy::Error::Io(io) => io.to_string(),
            _ => "cannot parse the file".into(),
        },
    })
}

/// Loads and validates the configuration at `path`, or the embedded quickstart when `None`.
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<LoadedConfig, ConfigError> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ConfigError::NotFound(p.to_owned())
                } else {
                    ConfigError::Read {
                        path: p.to_owned(),
                        source,
                    }
                }
            })?;
            parse(&text, Origin::File(p.to_owned()), overrides, env)
        }
        None => parse(QUICKSTART_YAML, Origin::Embedded, overrides, env),
    }
}

/// Parses, interpolates, deserializes and validates configuration text.
pub fn parse(
    text: &str,
    origin: Origin,
    overrides: &Overrides,
    env: EnvLookup<'_>,
) -> Result<LoadedConfig, ConfigError> {
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let message = strip_location(&e.to_string());
        // An integer beyond 64 bits is valid YAML that no key can hold, not a syntax error.
        if let Some(n) = huge_integer(&message) {
            return ConfigError::Invalid {
                origin: origin.clone(),
                problems: vec![Problem::new(
                    &key_at_line(text, line).unwrap_or_default(),
                    format!(
                        "{n} is out of range: no key takes a number above {}",
                        u64::MAX
                    ),
                )],
            };
        }
        ConfigError::Syntax {
            origin: origin.clone(),
            line,
            column,
            message,
        }
    })?;
    if value.is_null() {
        return Err(ConfigError::Invalid {
            origin,
            problems: vec![Problem::new(
                "",
                "the file is empty; expected a `data:` section at least",
            )],
        });
    }

    let mut problems = Vec::new();
    interpolate::interpolate(&mut value, env, &mut problems);

    let mut redactor = Redactor::from_env();
    learn_uris(&value, &mut redactor);
    check_symbols(&mut value, &mut problems);

    let config = match serde_path_to_error::deserialize::<_, Config>(value) {
        Ok(mut c) => {
            overrides.apply(&mut c);
            resolve_file_paths(&mut c, &origin);
            Some(c)
        }
        Err(e) => {
            problems.push(schema_problem(&e));
            None
        }
    };
    let env_set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    let mut warnings = Vec::new();
    if let Some(c) = &config {
        problems.extend(validate::validate(c, &env_set));
        warnings.extend(validate::unmatched_file_warnings(&c.data));
        warnings.extend(
            validate::missing_env_warnings(&c.security, &env_set)
                .into_iter()
                .map(|n| {
                    format!(
                        "environment variable {n} is not set (security.fail_if_missing is false)"
                    )
                }),
        );
    }
    match config {
        Some(config) if problems.is_empty() => Ok(LoadedConfig {
            config,
            origin,
            warnings,
            redactor,
        }),
        _ => {
            // One problem per key: an unset variable already explains a missing value.
            let mut seen = std::collections::HashSet::new();
            problems.retain(|p| p.key.is_empty() || seen.insert(p.key.clone()));
            for p in &mut problems {
                p.message = redactor.scrub(&p.message);
            }
            Err(ConfigError::Invalid { origin, problems })
        }
    }
}

/// Relative `data.files.paths` are read against the configuration file's directory (as
/// compose files and Cargo do), not against wherever the command happens to start.
fn resolve_file_paths(c: &mut Config, origin: &Origin) {
    let Origin::File(file) = origin else {
        return;
    };
    let base = file.parent().unwrap_or(Path::new(""));
    for p in &mut c.data.files.paths {
        if Path::new(p.as_str()).is_relative() {
            *p = base.join(&*p).display().to_string();
        }
    }
}

fn learn_uris(value: &Value, redactor: &mut Redactor) {
    match value {
        Value::String(s) => redactor.learn_from(s),
        Value::Sequence(items) => items.iter().for_each(|v| learn_uris(v, redactor)),
        Value::Mapping(map) => map.values().for_each(|v| learn_uris(v, redactor)),
        Value::Tagged(t) => learn_uris(&t.value, redactor),
        _ => {}
    }
}

/// Names every bad symbol of `data.asset_pairs` and puts a valid stand-in in its place, so
/// that deserialization goes on and the other problems are reported with it (a failing
/// `Symbol` would stop serde at the first one).
fn check_symbols(value: &mut Value, problems: &mut Vec<Problem>) {
    let Some(pairs) = value.get_mut("data").and_then(|d| d.get_mut("asset_pairs")) else {
        return;
    };
    let mut check = |key: String, v: &mut Value, stand_in: String| {
        if let Value::String(s) = v
            && let Err(e) = Symbol::new(s)
        {
            problems.push(Problem::new(&key, e));
            *v = Value::String(stand_in);
        }
    };
    if let Some(v) = pairs.get_mut("target_asset") {
        check(
            "data.asset_pairs.target_asset".into(),
            v,
            "INVALIDTARGET".into(),
        );
    }
    if let Some(Value::Sequence(items)) = pairs.get_mut("correlated_assets") {
        for (i, v) in items.iter_mut().enumerate() {
            let key = format!("data.asset_pairs.correlated_assets[{i}]");
            check(key, v, format!("INVALID{i}"));
        }
    }
}

/// The integer of serde's "integer `N` as u128" (or i128) message: YAML read a number that no
/// 64-bit type holds.
fn huge_integer(message: &str) -> Option<&str> {
    let rest = message.split_once("integer `")?.1;
    let (n, tail) = rest.split_once('`')?;
    (tail.starts_with(" as u128") || tail.starts_with(" as i128")).then_some(n)
}

/// The dotted key of the block-style mapping entry on `line` (1-based) of `text`: every less
/// indented `key:` line above it is a parent. `None` when the line holds no `key:`.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| {
        let entry = l.trim_start().trim_start_matches("- ");
        let (key, _) = entry.split_once(':')?;
        Some(key.trim().trim_matches(['"', '\'']).to_owned())
    };
    let target = lines.get(line.checked_sub(1)?)?;
    let mut path = vec![key_of(target)?];
    let mut level = indent(target);
    for l in lines[..line - 1].iter().rev() {
        if level == 0 {
            break;
        }
        if l.trim().is_empty() || l.trim_start().starts_with('#') || indent(l) >= level {
            continue;
        }
        if let Some(k) = key_of(l) {
            path.push(k);
        }
        level = indent(l);
    }
    path.reverse();
    Some(path.join("."))
}

/// serde_yaml's messages end with " at line L column C"; the location is reported separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Turns a deserialization error into a problem at its key path, adding a "did you mean"
/// for unknown keys and variants.
fn schema_problem(e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> Problem {
    let path = e.path().to_string();
    let key = if path == "." { String::new() } else { path };
    let raw = e.inner().to_string();
    let message = raw.clone();
    // serde: "unknown field `x`, expected one of `a`, `b`" / "unknown variant `x`, expected `a` or `b`"
    let ticked: Vec<&str> = raw.split('`').skip(1).step_by(2).collect();
    let unknown = raw.starts_with("unknown field") || raw.starts_with("unknown variant");
    let message = match ticked.split_first() {
        Some((bad, expected)) if unknown => {
            let hint = suggest(bad, expected.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let what = if raw.starts_with("unknown field") {
                "key"
            } else {
                "value"
            };
            if expected.is_empty() {
                format!("unknown {what} `{bad}`: this section takes no keys")
            } else {
                format!(
                    "unknown {what} `{bad}`{hint}; expected one of: {}",
                    expected.join(", ")
                )
            }
        }
        _ => readable_types(&message),
    };
    // The unknown key's own path segment is already in the message.
    let key = match key.rsplit_once('.') {
        Some((parent, last)) if unknown && message.contains(&format!("`{last}`")) => {
            parent.to_owned()
        }
        _ if unknown && ticked.first().is_some_and(|b| key == *b) => String::new(),
        _ => key,
    };
    Problem { key, message }
}

/// serde names Rust types ("expected u32"); users read YAML. An integer too large for its key
/// is out of range, not of the wrong kind.
fn readable_types(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid value: integer `")
        && let Some((n, ty)) = rest.split_once("`, expected ")
        && let Some(max) = unsigned_max(ty)
    {
        return format!("{n} is out of range: expected a whole number from 0 to {max}");
    }
    [
        ("expected u32", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ]
    .iter()
    .fold(message.to_owned(), |m, (from, to)| m.replace(from, to))
}

/// The largest value of an unsigned integer type serde names.
fn unsigned_max(ty: &str) -> Option<u64> {
    match ty {
        "u8" => Some(u8::MAX.into()),
        "u16" => Some(u16::MAX.into()),
        "u32" => Some(u32::MAX.into()),
        "u64" | "usize" => Some(u64::MAX),
        _ => None,
    }
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        let known = ["bid_ask_spread", "volume_imbalance", "depth_imbalance"];
        assert_eq!(
            suggest("bid_ask_sprad", known.iter().copied()),
            Some("bid_ask_spread")
        );
        assert_eq!(
            suggest("voume_imbalance", known.iter().copied()),
            Some("volume_imbalance")
        );
        assert_eq!(suggest("rsi", known.iter().copied()), None);
    }

    #[test]
    fn the_key_of_a_line_follows_the_indentation() {
        let text =
            "data:\n  x: 1\ntraining:\n  # note\n  callbacks:\n    patience: 3\n\n  epochs: 5\n";
        assert_eq!(key_at_line(text, 2).as_deref(), Some("data.x"));
        assert_eq!(
            key_at_line(text, 6).as_deref(),
            Some("training.callbacks.patience")
        );
        assert_eq!(key_at_line(text, 8).as_deref(), Some("training.epochs"));
        assert_eq!(key_at_line(text, 4), None);
    }

    #[test]
    fn embedded_quickstart_is_valid() {
        let loaded =
            load(None, &Overrides::default(), &|_| None).expect("quickstart must validate");
        assert_eq!(loaded.config.data.source_type, SourceType::Synthetic);
        assert_eq!(loaded.origin, Origin::Embedded);
    }
}
