//! HTTP Basic auth against a real MLflow server started with `--app-name basic-auth`
//! (BINANCE_ML_TEST_MLFLOW_AUTH_URI + _USER + _PASSWORD), and the rule that no credential
//! ever appears in what the client writes or logs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use binance_ml::exit::ExitCode;
use binance_ml::tracking::*;
use serde_json::json;

struct Auth {
    uri: String,
    creds: Credentials,
    python: String,
}

fn auth_server(test: &str) -> Option<Auth> {
    Some(Auth {
        uri: common::env_or_skip("BINANCE_ML_TEST_MLFLOW_AUTH_URI", test)?,
        creds: common::admin_credentials(test)?,
        python: common::python(test)?,
    })
}

/// Log output captured from `tracing` at DEBUG level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_captured_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn right_credentials_log_everything_and_leak_nothing() {
    let Some(a) = auth_server("right_credentials_log_everything_and_leak_nothing") else {
        return;
    };
    let password = a.creds.password.expose().to_string();
    let work = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&a.uri, work.path());
    settings.credentials = Some(a.creds.clone());
    settings.experiments.training = common::unique("auth-training");
    let ((run_id, tracker_debug), logs) = with_captured_logs(|| {
        let tracker = Tracker::open(&settings).unwrap();
        let run = StageRun::start(
            &tracker,
            &settings,
            &StageRunSpec {
                stage: Some(Stage::ModelTraining),
                asset: "BTCUSDT",
                model: "cnn_lstm",
                config_hash: "auth-h",
                config_yaml: "mlflow:\n  password: '***'\n",
                ..StageRunSpec::default()
            },
        )
        .unwrap();
        let id = run.run_id().to_string();
        tracker.log_metric(&id, "loss", 0.5, 0).unwrap();
        tracker.log_params(&id, &[("lr", "0.1")]).unwrap();
        run.finish().unwrap();
        (id, format!("{tracker:?} {settings:?}"))
    });
    let dst = tempfile::tempdir().unwrap();
    let py = common::readback(
        &a.python,
        Some(&a.creds),
        json!({"uri": a.uri, "run_id": run_id, "metric_keys": ["loss"],
               "artifact_path": CONFIG_ARTIFACT, "dst": dst.path()}),
    );
    assert_eq!(py["run"]["status"], "FINISHED");
    assert_eq!(py["run"]["params"]["lr"], "0.1");
    assert_eq!(py["history"]["loss"][0][1], "0.5");
    assert!(
        !tracker_debug.contains(&password),
        "Debug output leaks the password"
    );
    assert!(!logs.contains(&password), "logs leak the password");
    assert!(common::files_containing(work.path(), &password).is_empty());
    if let Ok(dir) = std::env::var("BINANCE_ML_TEST_MLFLOW_AUTH_DIR") {
        let hits =
            common::files_containing(&std::path::Path::new(&dir).join("artifacts"), &password);
        assert!(
            hits.is_empty(),
            "server-side artifacts contain the password: {hits:?}"
        );
    }
}

#[test]
fn wrong_password_is_a_clear_error_with_exit_code_4() {
    let Some(a) = auth_server("wrong_password_is_a_clear_error_with_exit_code_4") else {
        return;
    };
    let wrong = "definitely-Wrong-password-987";
    let work = tempfile::tempdir().unwrap();
    let mut settings = common::settings(&a.uri, work.path());
    settings.credentials = Some(Credentials {
        username: a.creds.username.clone(),
        password: Secret::new(wrong),
    });
    let (err, logs) = with_captured_logs(|| {
        let tracker = Tracker::open(&settings).unwrap();
        tracker.experiment_id("auth-wrong").unwrap_err()
    });
    assert!(
        matches!(err, TrackingError::Auth { status: 401, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("MLFLOW_TRACKING_USERNAME") && msg.contains("MLFLOW_TRACKING_PASSWORD"),
        "{msg}"
    );
    assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert!(!logs.contains(wrong));
    assert_eq!(
        binance_ml::commands::Error::from(err).exit_code(),
        ExitCode::External
    );
    // An auth failure is not "unreachable": nothing was journaled.
    let spool = settings.effective_spool_dir();
    let journaled = std::fs::read_dir(&spool)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(journaled, 0);
    assert!(common::files_containing(work.path(), wrong).is_empty());
}

#[test]
fn credentials_in_the_uri_work_and_never_show() {
    let Some(a) = auth_server("credentials_in_the_uri_work_and_never_show") else {
        return;
    };
    let password = a.creds.password.expose();
    let with_creds = a.uri.replacen(
        "://",
        &format!("://{}:{}@", a.creds.username, percent_encode(password)),
        1,
    );
    let work = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(&common::settings(&with_creds, work.path())).unwrap();
    let exp = tracker.experiment_id(&common::unique("auth-uri")).unwrap();
    let err = tracker
        .get_run("00000000000000000000000000000000")
        .unwrap_err();
    assert!(matches!(err, TrackingError::NotFound { .. }), "{err:?}");
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{tracker:?}"),
        exp,
    ] {
        assert!(!text.contains(password), "{text}");
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
