//! Dispatch of subcommands to stages, and the commands that are not stages.

use serde_json::json;

use crate::cli::{Cli, Command, TrackingCommand};
use crate::config::LoadedConfig;
use crate::tracking::{self, TrackingSettings};
use crate::{Error, Result};

/// What a command produced: a human summary and the same as JSON for `--json`.
#[derive(Debug)]
pub struct Outcome {
    /// Printed on stdout without `--json`.
    pub text: String,
    /// Printed on stdout with `--json`.
    pub json: serde_json::Value,
}

/// Runs `cli.command` with an already loaded and validated configuration.
pub fn execute(cli: &Cli, loaded: &LoadedConfig) -> Result<Outcome> {
    match &cli.command {
        Command::ValidateConfig => Ok(validate_config(loaded)),
        Command::Tracking(TrackingCommand::Sync) => tracking_sync(loaded),
        Command::Fetch(args) => {
            let summary = crate::data::fetch::fetch(&loaded.config, args.force)?;
            Ok(crate::data::fetch::outcome(&summary))
        }
        other => Err(Error::NotImplemented(other.name())),
    }
}

fn validate_config(loaded: &LoadedConfig) -> Outcome {
    let yaml = loaded.redacted_yaml();
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("our own YAML parses");
    Outcome {
        text: format!(
            "# effective configuration of {} (valid)\n{yaml}",
            loaded.origin
        ),
        json: json!({
            "valid": true,
            "origin": loaded.origin.to_string(),
            "warnings": loaded.warnings,
            "config": config,
        }),
    }
}

fn tracking_sync(loaded: &LoadedConfig) -> Result<Outcome> {
    let _span = tracing::info_span!("tracking_sync").entered();
    let settings = TrackingSettings::from_config(&loaded.config);
    let spool = settings.effective_spool_dir();
    let report = tracking::sync(&spool, &settings)?;
    tracing::info!(
        journals = report.journals,
        replayed = report.ops_replayed,
        busy = report.journals_busy,
        "sync finished"
    );
    Ok(Outcome {
        text: format!(
            "synced {} journal(s) from {}: {} operation(s) replayed, {} already done, {} busy",
            report.journals_completed,
            spool.display(),
            report.ops_replayed,
            report.ops_already_done,
            report.journals_busy
        ),
        json: serde_json::to_value(&report).expect("report serialises"),
    })
}
