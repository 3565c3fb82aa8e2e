//! README "Running nightly, from an empty MLflow server", followed as a user would: the
//! configuration keys and the commands are taken from the README itself, the nights run
//! through `examples/nightly.sh` against a real MLflow server and a real PostgreSQL source,
//! seven consecutive UTC days with the usual accidents (a repeated night, MLflow down, the
//! database down, a day with too little data, a back-filled day). Afterwards the versions,
//! aliases, lineage and each night's scores are read back with MLflow's Python client.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

const README: &str = include_str!("../README.md");

/// The README section on running nightly.
fn nightly_section() -> &'static str {
    let start = README
        .find("### Running nightly, from an empty MLflow server")
        .expect("README has no 'Running nightly' section");
    let rest = &README[start..];
    &rest[..rest[4..].find("\n## ").map_or(rest.len(), |e| e + 4)]
}

/// The section's fenced blocks of `lang`.
fn blocks(lang: &str) -> Vec<&'static str> {
    let fence = format!("```{lang}\n");
    nightly_section()
        .split(&fence)
        .skip(1)
        .map(|b| &b[..b.find("```").expect("unclosed code block")])
        .collect()
}

/// The README's command line that starts with `prefix`.
fn readme_command(prefix: &str) -> String {
    blocks("sh")
        .iter()
        .flat_map(|b| b.lines())
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no README command starting with {prefix:?}"))
        .to_owned()
}

/// `overlay` merged into `base`, mapping by mapping.
fn merge(base: &mut Yaml, overlay: &Yaml) {
    match (base, overlay) {
        (Yaml::Mapping(b), Yaml::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Runs one README command line with bash in `cwd`, the binary on PATH.
struct Shell {
    cwd: PathBuf,
    path: String,
    env: BTreeMap<&'static str, String>,
}

impl Shell {
    fn run(&self, line: &str) -> (i32, String, String) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(line)
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env_remove("BINANCE_ML_CONFIG")
            .env_remove("FINETUNE_DAY")
            .envs(&self.env)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The JSON summary `finetune --json` prints last.
fn summary(out: &str) -> Value {
    let last = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn runs_left_running(python: &str, uri: &str) -> Vec<String> {
    let script = format!(
        "import mlflow, sys\nmlflow.set_tracking_uri({uri:?})\nc = mlflow.MlflowClient()\n\
         ids = [e.experiment_id for e in c.search_experiments()]\n\
         print(len([r for r in c.search_runs(ids, \"attributes.status = 'RUNNING'\")]))\n"
    );
    let out = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() != "0")
        .map(str::to_owned)
        .collect()
}

#[test]
fn seven_nights_from_the_readme_run_unattended() {
    let test = "seven_nights_from_the_readme_run_unattended";
    let (Some(python), Some(db)) = (common::python(test), common::database_uri()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let table = common::unique("nightly").replace('-', "_");
    common::synthetic_table(
        &db,
        &table,
        &dir.path().join("generate"),
        ["2024-07-31", "2024-08-10"],
        "{strength: 0.3}",
        Some("2024-08-09"),
    );

    // The user's training configuration: a PostgreSQL source, a small model. The README's
    // keys go on top of it, exactly as written there.
    let base = common::tiny_config(
        &dir.path().join("work"),
        "2024-08-01",
        "  epochs: 2",
        "evaluation: {explainability: {n_samples: 16}}\nmlflow:\n  client: {max_retries: 0, timeout_seconds: 2}\n  model_registry: {model_name_pattern: \"nightly_{asset}\"}",
    )
    .replace(
        "  source_type: synthetic\n  synthetic: {seed: 7}\n",
        &format!(
            "  source_type: database\n  connection:\n    database_uri: \"${{NIGHTLY_DATABASE_URI}}\"\n    \
             table_name: {table}\n    connect_timeout_seconds: 2\n    max_retries: 1\n"
        ),
    );
    assert!(base.contains("source_type: database"), "{base}");
    let mut config: Yaml = serde_yaml_ng::from_str(&base).unwrap();
    let keys = blocks("yaml");
    let keys = keys
        .iter()
        .find(|b| b.contains("base_model_alias: champion"))
        .expect("the README's nightly keys");
    merge(&mut config, &serde_yaml_ng::from_str(keys).unwrap());
    let nightly = serde_yaml_ng::to_string(&config).unwrap();
    assert!(nightly.contains("${FINETUNE_DAY:-2024-08-01}"), "{nightly}");

    let cwd = dir.path().join("user");
    std::fs::create_dir_all(cwd.join("bin")).unwrap();
    std::fs::write(cwd.join("nightly.yaml"), &nightly).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(repo.join("examples"), cwd.join("examples")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_binance-ml"), cwd.join("bin/binance-ml"))
        .unwrap();

    // README step 1: a real server (ours, so that it can be stopped for a night).
    let server_dir = dir.path().join("server");
    let port = common::free_port();
    let mut server = common::Server::start(&python, &server_dir, port, false);
    let uri = server.uri.clone();
    let mut sh = Shell {
        cwd: cwd.clone(),
        path: format!(
            "{}:{}",
            cwd.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        env: BTreeMap::from([
            ("MLFLOW_TRACKING_URI", uri.clone()),
            ("NIGHTLY_DATABASE_URI", db.clone()),
        ]),
    };
    assert!(
        readme_command("export MLFLOW_TRACKING_URI=").contains("MLFLOW_TRACKING_URI"),
        "the README exports the tracking URI"
    );
    let night_cmd = readme_command("BINANCE_ML_CONFIG=nightly.yaml examples/nightly.sh");
    let night = |sh: &Shell, day: &str| {
        let (_, readme_day) = night_cmd.rsplit_once(' ').unwrap();
        sh.run(&night_cmd.replace(readme_day, day))
    };

    // Before any model: a usage error that says what to run.
    let (code, _, err) = night(&sh, "2024-08-04");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("binance-ml run"), "{err}");

    // README step 2: the base model; its first version becomes champion.
    let (code, _, err) = sh.run(&readme_command("binance-ml run --config nightly.yaml"));
    assert_eq!(code, 0, "base run failed:\n{err}");
    let tracker = binance_ml::tracking::Tracker::open(&common::settings(&uri, dir.path())).unwrap();
    let name = "nightly_BTCUSDT";
    assert_eq!(
        tracker.version_by_alias(name, "champion").unwrap().version,
        "1"
    );

    // Night 1, as in README step 3, then the same night again.
    let (code, out, err) = night(&sh, "2024-08-04");
    assert_eq!(code, 0, "night 1:\n{err}");
    let n1 = summary(&out);
    assert_eq!(n1["new_version"], "2", "{n1}");
    assert_eq!(n1["already_done"], false);
    let (code, out, err) = night(&sh, "2024-08-04");
    assert_eq!(code, 0, "night 1 again:\n{err}");
    let again = summary(&out);
    assert_eq!(again["already_done"], true, "{again}");
    assert_eq!(again["new_version"], "2");
    let champion_after = |s: &Value, before: &str| {
        if s["decision"] == "champion" {
            s["new_version"].as_str().unwrap().to_owned()
        } else {
            before.to_owned()
        }
    };
    let mut champion = champion_after(&n1, "1");

    // Night 2: MLflow is down. The champion last seen is fine-tuned, everything journaled.
    server.kill();
    let (code, out, err) = night(&sh, "2024-08-05");
    assert_eq!(code, 0, "night 2 (MLflow down):\n{err}");
    let n2 = summary(&out);
    assert!(
        n2["new_version"].as_str().unwrap().starts_with("local-"),
        "{n2}"
    );
    assert!(err.contains("when last seen"), "{err}");

    // Night 3: back up. nightly.sh syncs the journal first: version 3 is night 2's, and the
    // champion is right before night 3 fine-tunes it.
    let server = common::Server::start(&python, &server_dir, port, false);
    let (code, out, err) = night(&sh, "2024-08-06");
    assert_eq!(code, 0, "night 3:\n{err}");
    let n3 = summary(&out);
    let v3 = tracker.model_version(name, "3").unwrap();
    assert_eq!(
        tracker
            .get_run(&v3.run_id)
            .unwrap()
            .data
            .tag("binance_ml.client_id"),
        n2["new_run_id"].as_str()
    );
    champion = if n2["decision"] == "champion" {
        "3".to_owned()
    } else {
        champion
    };
    let parent3 = tracker.get_run(n3["run_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        parent3.data.tag("binance_ml.base_model_version"),
        Some(champion.as_str()),
        "night 3 fine-tuned the wrong champion"
    );
    assert_eq!(n3["new_version"], "4", "{n3}");
    champion = champion_after(&n3, &champion);

    // Night 4: the database is down: exit 4, nothing written, no version.
    sh.env.insert(
        "NIGHTLY_DATABASE_URI",
        db.replace(
            &format!(":{}", db_port(&db)),
            &format!(":{}", common::free_port()),
        ),
    );
    let (code, _, err) = night(&sh, "2024-08-07");
    assert_eq!(code, 4, "night 4 (database down):\n{err}");
    let pw = password(&db);
    assert!(
        pw.is_empty() || !err.contains(&pw),
        "the password leaked:\n{err}"
    );
    assert!(tracker.model_version(name, "5").is_err());
    assert!(common::files_containing(&dir.path().join("work"), ".tmp-").is_empty());
    sh.env.insert("NIGHTLY_DATABASE_URI", db.clone());

    // A night that goes well: a new version, exit 0.
    let good = |sh: &Shell, day: &str, version: &str| {
        let (code, out, err) = night(sh, day);
        assert_eq!(code, 0, "night of {day}:\n{err}");
        let s = summary(&out);
        assert_eq!(s["new_version"], version, "{s}");
        s
    };
    // Night 5: fine.
    let n5 = good(&sh, "2024-08-08", "5");
    champion = champion_after(&n5, &champion);

    // Night 6: two minutes of data: exit 3 naming what a window needs.
    let (code, _, err) = night(&sh, "2024-08-09");
    assert_eq!(code, 3, "night 6 (too little data):\n{err}");
    assert!(err.contains("window"), "{err}");
    assert!(tracker.model_version(name, "6").is_err());

    // Night 7, then the day the database was down, back-filled.
    let n7 = good(&sh, "2024-08-10", "6");
    champion = champion_after(&n7, &champion);
    let fill = good(&sh, "2024-08-07", "7");
    champion = champion_after(&fill, &champion);

    // Read back with MLflow's own client: seven versions, one champion, lineage and scores.
    let r = common::readback(
        &python,
        None,
        serde_json::json!({"uri": server.uri, "versions_of": name}),
    );
    let versions = r["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 7, "{r}");
    let champions: Vec<&str> = versions
        .iter()
        .filter(|v| {
            v["aliases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "champion")
        })
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(champions, vec![champion.as_str()], "{r}");
    for v in &versions[1..] {
        let p = &v["parent_tags"];
        assert!(p["binance_ml.base_run"].is_string(), "{v}");
        for k in ["binance_ml.base_score", "binance_ml.new_score"] {
            let score: f64 = p[k].as_str().unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&score), "{k} {score}");
        }
        assert_eq!(
            p["binance_ml.promotion"], v["tags"]["binance_ml.promotion"],
            "{v}"
        );
    }
    assert!(runs_left_running(&python, &server.uri).is_empty());
}

fn db_port(uri: &str) -> String {
    let host = uri.rsplit_once('@').map_or(uri, |(_, h)| h);
    let port = host.split(['/', '?']).next().unwrap_or_default();
    port.rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| "5432".into())
}

fn password(uri: &str) -> String {
    uri.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default()
}
