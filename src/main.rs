//! The `binance-ml` binary: parse the command line, load the configuration, set up logging,
//! dispatch, and map errors to documented exit codes.

use clap::Parser;

use binance_ml::cli::{Cli, CliLogLevel, Command};
use binance_ml::commands::Error;
use binance_ml::config::{self, ConfigError, LogFormat, LogLevel, Overrides};
use binance_ml::exit::ExitCode;
use binance_ml::interrupt;
use binance_ml::logging::{self, LogSettings};

fn main() {
    binance_ml::allocator::tune();
    let cli = Cli::parse();
    let g = &cli.global;
    let format = g.log_format.unwrap_or(LogFormat::Text);
    let fail = |message: &str, code: ExitCode| -> ! {
        logging::report_error(
            format,
            logging::color_allowed(true, g.no_color),
            message,
            code.code(),
        );
        std::process::exit(code.code())
    };

    if let Err(e) = config::load_dotenv(&g.env_file) {
        fail(&e.to_string(), ExitCode::Usage);
    }
    let (backend, device) = match &cli.command {
        Command::Train(a) => (a.backend.backend, a.backend.device.clone()),
        Command::Finetune(a) => (a.backend.backend, a.backend.device.clone()),
        Command::Evaluate(a) => (a.backend.backend, a.backend.device.clone()),
        Command::Predict(a) => (a.backend.backend, a.backend.device.clone()),
        Command::Run(a) => (a.backend.backend, a.backend.device.clone()),
        _ => (None, None),
    };
    let overrides = Overrides {
        workdir: g.workdir.clone(),
        backend,
        device,
        offline: g.offline,
    };
    let loaded = match config::load(g.config.as_deref(), &overrides, &config::process_env) {
        Ok(l) => l,
        Err(e) => {
            if let (true, ConfigError::Invalid { problems, .. }) = (g.json, &e) {
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "problems": problems })
                );
            }
            fail(&Error::from(e).to_string(), ExitCode::Usage);
        }
    };

    let c = &loaded.config.logging;
    let settings = LogSettings {
        level: match g.log_level {
            Some(CliLogLevel::Debug) => LogLevel::Debug,
            Some(CliLogLevel::Info) => LogLevel::Info,
            Some(CliLogLevel::Warning) => LogLevel::Warning,
            Some(CliLogLevel::Error) => LogLevel::Error,
            None => c.level,
        },
        format: g.log_format.unwrap_or(c.format),
        color: logging::color_allowed(c.colored_output, g.no_color),
        function_names: c.log_function_names,
        colors: c.colors.clone(),
    };
    let format = settings.format;
    logging::init(settings, loaded.redactor.clone());
    // SIGINT/SIGTERM: training stops after its batch with a checkpoint, runs end KILLED, and
    // the exit code is 130/143; a stage that does not poll the flag is stopped 5 s later.
    // `record` treats the signal as its normal end and flushes first.
    let _signals = interrupt::Guard::install();
    if !matches!(cli.command, Command::Record(_)) {
        interrupt::exit_if_still_running_after(std::time::Duration::from_secs(5));
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(config = %loaded.origin, command = cli.command.name(), "configuration loaded");

    match binance_ml::commands::execute(&cli, &loaded) {
        Ok(outcome) => {
            if g.json {
                // A list (predictions) prints as JSON lines, one object per line.
                match &outcome.json {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            println!("{item}");
                        }
                    }
                    other => println!("{other}"),
                }
            } else {
                println!("{}", outcome.text.trim_end());
            }
        }
        Err(e) => {
            let code = e.exit_code();
            logging::report_error(
                format,
                logging::color_allowed(c.colored_output, g.no_color),
                &e.to_string(),
                code.code(),
            );
            std::process::exit(code.code());
        }
    }
}
