//! Logging with `tracing`: coloured text on a terminal (the spec's colour scheme) or one JSON
//! object per line for cron and systemd. Logs go to stderr; results go to stdout. Every line
//! is scrubbed of secret values before it is written.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogColors, LogFormat, LogLevel, Redactor};

/// How logs are written.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Most verbose level written.
    pub level: LogLevel,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// ANSI colours (text only).
    pub color: bool,
    /// Prefix lines with the stage/function name.
    pub function_names: bool,
    /// Colour scheme.
    pub colors: LogColors,
}

/// Whether colour may be used: the config allows it, `--no-color` and `NO_COLOR` are absent,
/// and stderr is a terminal.
pub fn color_allowed(config_allows: bool, no_color_flag: bool) -> bool {
    config_allows
        && !no_color_flag
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal()
}

static REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// Installs the global subscriber; `redactor` scrubs every line. Call once.
pub fn init(settings: LogSettings, redactor: Redactor) {
    let _ = REDACTOR.set(redactor);
    let level = match settings.level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    };
    // Our crate at the chosen level; dependencies only when they warn.
    let filter = EnvFilter::new(format!("warn,binance_ml={level}"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(LineLayer { settings })
        .try_init();
}

/// Text `scrub`bed with the installed redactor (or URI passwords only, before `init`).
pub fn scrub(text: &str) -> String {
    match REDACTOR.get() {
        Some(r) => r.scrub(text),
        None => Redactor::default().scrub(text),
    }
}

/// ANSI SGR code of a colour name validated by the config.
fn ansi_code(name: &str) -> u8 {
    let (bright, base) = match name.strip_prefix("bright_") {
        Some(b) => (60, b),
        None => (0, name),
    };
    let code = match base {
        "black" => 30,
        "red" => 31,
        "green" => 32,
        "yellow" => 33,
        "blue" => 34,
        "magenta" | "purple" => 35,
        "cyan" => 36,
        _ => 37,
    };
    code + bright
}

/// Wraps `text` in the colour `name` when `on`.
pub fn paint(on: bool, name: &str, text: &str) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", ansi_code(name))
    } else {
        text.to_owned()
    }
}

struct LineLayer {
    settings: LogSettings,
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S> Layer<S> for LineLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The function name: the innermost span scope (stages open a span named after
        // themselves), or the module the event came from.
        let scope: Vec<&str> = ctx
            .event_scope(event)
            .map(|s| s.from_root().map(|span| span.name()).collect())
            .unwrap_or_default();
        let function = if scope.is_empty() {
            event
                .metadata()
                .target()
                .rsplit("::")
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            scope.join(":")
        };
        let level = *event.metadata().level();
        let line = match self.settings.format {
            LogFormat::Text => self.text_line(level, &function, &fields),
            LogFormat::Json => json_line(level, &function, &fields),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", scrub(&line));
    }
}

impl LineLayer {
    fn text_line(&self, level: Level, function: &str, fields: &Fields) -> String {
        let s = &self.settings;
        let c = &s.colors;
        let (name, color) = match level {
            Level::ERROR => ("ERROR", &c.error),
            Level::WARN => ("WARN ", &c.warning),
            Level::INFO => ("INFO ", &c.info),
            _ => ("DEBUG", &c.debug),
        };
        let mut line = format!(
            "{} {} ",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            paint(s.color, color, name)
        );
        if s.function_names && !function.is_empty() {
            let _ = write!(line, "{}: ", paint(s.color, &c.function_names, function));
        }
        line.push_str(&fields.message);
        for (key, value) in &fields.pairs {
            let _ = write!(
                line,
                " {}={}",
                paint(s.color, &c.parameter_names, key),
                paint(s.color, &c.parameter_values, value)
            );
        }
        line
    }
}

fn json_line(level: Level, function: &str, fields: &Fields) -> String {
    let mut map = serde_json::Map::new();
    map.insert(
        "timestamp".into(),
        chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
            .into(),
    );
    map.insert("level".into(), level.as_str().into());
    map.insert("function".into(), function.into());
    map.insert("message".into(), fields.message.clone().into());
    for (key, value) in &fields.pairs {
        map.insert((*key).into(), value.clone().into());
    }
    serde_json::Value::Object(map).to_string()
}

/// Writes a fatal error to stderr in the chosen format (used before and after `init`).
pub fn report_error(format: LogFormat, color: bool, message: &str, exit_code: i32) {
    let message = scrub(message);
    let mut err = std::io::stderr().lock();
    let _ = match format {
        LogFormat::Text => writeln!(err, "{} {message}", paint(color, "red", "error:")),
        LogFormat::Json => writeln!(
            err,
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                "level": "ERROR",
                "message": message,
                "exit_code": exit_code,
            })
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(color: bool) -> LineLayer {
        LineLayer {
            settings: LogSettings {
                level: LogLevel::Info,
                format: LogFormat::Text,
                color,
                function_names: true,
                colors: LogColors::default(),
            },
        }
    }

    fn fields() -> Fields {
        Fields {
            message: "shard written".into(),
            pairs: vec![("rows", "42".into())],
        }
    }

    #[test]
    fn text_lines_use_the_spec_colour_scheme_on_a_terminal() {
        let line = layer(true).text_line(Level::WARN, "fetch", &fields());
        assert!(
            line.contains("\x1b[33mWARN \x1b[0m"),
            "level yellow: {line:?}"
        );
        assert!(
            line.contains("\x1b[36mfetch\x1b[0m: "),
            "function cyan: {line:?}"
        );
        assert!(
            line.contains("\x1b[33mrows\x1b[0m=\x1b[32m42\x1b[0m"),
            "name yellow, value green: {line:?}"
        );
        let plain = layer(false).text_line(Level::WARN, "fetch", &fields());
        assert!(
            plain.ends_with("WARN  fetch: shard written rows=42"),
            "{plain:?}"
        );
        assert!(!plain.contains('\x1b'));
    }

    #[test]
    fn json_lines_carry_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&json_line(Level::INFO, "train", &fields())).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["function"], "train");
        assert_eq!(v["message"], "shard written");
        assert_eq!(v["rows"], "42");
    }

    #[test]
    fn colour_names_map_to_ansi_codes() {
        assert_eq!(ansi_code("cyan"), 36);
        assert_eq!(ansi_code("bright_red"), 91);
        assert_eq!(paint(false, "red", "x"), "x");
    }
}
