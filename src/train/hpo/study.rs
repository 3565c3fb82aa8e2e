//! A study: every trial of one search, persisted as JSON after each change so that an
//! interrupted search resumes where it stopped.
//!
//! Resuming: a study file whose key (see [`study_key`]) or direction differs from this run's
//! is an error, never silently replaced, because it holds the results of finished trials that
//! may have cost hours; the message says to delete it to start over. A trial still `Running`
//! in the file was cut short by a stopped process: it is marked `Failed` and its parameters
//! are asked again by the next [`Study::ask`], once (a retry that is cut short again is not
//! retried, in case those parameters are what stops the process, e.g. out of memory).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::{HpoError, Params, SearchSpace};
use crate::config::{Direction, HpoConfig};

/// Version of the study file layout, bumped when it changes incompatibly.
const FORMAT: u32 = 1;

/// Proposes the parameters of the next trial.
pub trait Sampler {
    /// Parameters for a new trial, given every trial so far (any state).
    fn sample(&mut self, space: &SearchSpace, history: &[Trial]) -> Params;
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Asked and not finished yet.
    Running,
    /// Finished with an objective value.
    Complete,
    /// Stopped early by the pruner.
    Pruned,
    /// Ended by an error, a non-finite objective, or a stopped process.
    Failed,
}

/// One trial of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based position in the study.
    pub number: u32,
    /// The parameters it was asked to train with.
    pub params: Params,
    /// Where it stands.
    pub state: TrialState,
    /// The objective (mean over folds) of a complete trial.
    pub value: Option<f64>,
    /// Per-step (1-based epoch) values reported for pruning; NaN is kept (written as null).
    #[serde(default, deserialize_with = "null_as_nan_pairs")]
    pub intermediate: Vec<(u32, f64)>,
    /// The objective of each fold, in fold order; NaN is kept (written as null).
    #[serde(default, deserialize_with = "null_as_nan")]
    pub fold_values: Vec<f64>,
    /// The trial's tracking run.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// This trial re-runs the parameters of that interrupted trial.
    #[serde(default)]
    pub retry_of: Option<u32>,
    /// Interrupted, and its parameters were asked again by a later trial: that one replaces
    /// it, so it does not count toward the study's trial budget.
    #[serde(default)]
    pub requeued: bool,
}

impl Trial {
    /// The value reported at `step`, if any.
    pub fn value_at(&self, step: u32) -> Option<f64> {
        self.intermediate
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, v)| *v)
    }
}

fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

fn null_as_nan_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, f64)>, D::Error> {
    let v: Vec<(u32, Option<f64>)> = Deserialize::deserialize(d)?;
    Ok(v.into_iter()
        .map(|(s, x)| (s, x.unwrap_or(f64::NAN)))
        .collect())
}

/// The key of a study: what makes earlier trials' values comparable with new ones. It covers
/// the search space, direction, metric and fold count, plus `data_key`, which the caller
/// builds from whatever identifies the data and how trials are validated (the preprocessed
/// store's key, window, horizon). Trial budget, timeout, sampler, seed and pruning are left
/// out on purpose: changing them continues the same study.
pub fn study_key(hpo: &HpoConfig, data_key: &str) -> String {
    let space = serde_yaml_ng::to_string(&hpo.search_space).unwrap_or_default();
    let relevant = serde_json::json!({
        "search_space": space,
        "direction": hpo.direction,
        "metric": hpo.metric,
        "n_folds": hpo.n_folds,
        "data": data_key,
    });
    crate::data::cache::sha256_hex(relevant.to_string().as_bytes())[..16].to_owned()
}

/// All trials of one search and the file they are kept in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// Layout version of the file.
    format: u32,
    /// See [`study_key`].
    pub key: String,
    /// Whether higher or lower values are better.
    pub direction: Direction,
    /// Every trial, in the order asked (`trials[i].number == i`).
    pub trials: Vec<Trial>,
    /// Interrupted trials whose parameters are asked again before anything new is sampled:
    /// (interrupted trial's number, its parameters).
    #[serde(default)]
    queue: VecDeque<(u32, Params)>,
    #[serde(skip)]
    path: PathBuf,
}

impl Study {
    /// Loads the study in `path`, or starts an empty one there when the file does not exist.
    /// Errors when the file is unreadable or was written for another key or direction.
    /// Trials found `Running` become `Failed` and are queued to be asked again (see the module
    /// documentation); the file is rewritten when that happens.
    pub fn load_or_new(path: &Path, key: &str, direction: Direction) -> Result<Self, HpoError> {
        let file_err = |reason: String| HpoError::StudyFile {
            path: path.to_owned(),
            reason,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    format: FORMAT,
                    key: key.to_owned(),
                    direction,
                    trials: Vec::new(),
                    queue: VecDeque::new(),
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(file_err(e.to_string())),
        };
        let mut study: Study =
            serde_json::from_slice(&bytes).map_err(|e| file_err(e.to_string()))?;
        study.path = path.to_owned();
        if study.format != FORMAT {
            return Err(file_err(format!(
                "layout version {} is not the supported {FORMAT}",
                study.format
            )));
        }
        let mismatch = |what: &str, found: String, expected: String| HpoError::Mismatch {
            path: path.to_owned(),
            what: what.into(),
            found,
            expected,
        };
        if study.key != key {
            return Err(mismatch("key", study.key, key.to_owned()));
        }
        if study.direction != direction {
            return Err(mismatch(
                "direction",
                format!("{:?}", study.direction).to_lowercase(),
                format!("{direction:?}").to_lowercase(),
            ));
        }
        if study.recover_interrupted() {
            study.save()?;
        }
        Ok(study)
    }

    /// Marks `Running` trials `Failed`, queueing their parameters once; true if any was found.
    fn recover_interrupted(&mut self) -> bool {
        let mut changed = false;
        for t in &mut self.trials {
            if t.state != TrialState::Running {
                continue;
            }
            changed = true;
            t.state = TrialState::Failed;
            t.error = Some("interrupted: the process stopped while the trial was running".into());
            if t.retry_of.is_none() {
                t.requeued = true;
                self.queue.push_back((t.number, t.params.clone()));
            }
        }
        changed
    }

    /// The file the study is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the study to its file atomically (temporary file, then rename).
    pub fn save(&self) -> Result<(), HpoError> {
        let file_err = |reason: String| HpoError::StudyFile {
            path: self.path.clone(),
            reason,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| file_err(e.to_string()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(e.to_string()))?;
        }
        crate::data::cache::write_atomic(&self.path, &bytes).map_err(|e| file_err(e.to_string()))
    }

    /// Starts a trial: the parameters of an interrupted trial if one is queued, else new ones
    /// from `sampler`. The trial is saved as `Running`; returns its number.
    pub fn ask(&mut self, sampler: &mut dyn Sampler, space: &SearchSpace) -> Result<u32, HpoError> {
        let (params, retry_of) = match self.queue.pop_front() {
            Some((from, params)) => (params, Some(from)),
            None => (sampler.sample(space, &self.trials), None),
        };
        let number = self.trials.len() as u32;
        self.trials.push(Trial {
            number,
            params,
            state: TrialState::Running,
            value: None,
            intermediate: Vec::new(),
            fold_values: Vec::new(),
            run_id: None,
            error: None,
            retry_of,
            requeued: false,
        });
        self.save()?;
        Ok(number)
    }

    /// The trial numbered `number`.
    pub fn trial(&self, number: u32) -> Option<&Trial> {
        self.trials.get(number as usize)
    }

    fn trial_mut(&mut self, number: u32) -> Result<&mut Trial, HpoError> {
        self.trials
            .get_mut(number as usize)
            .ok_or_else(|| HpoError::Trial {
                number,
                reason: "the study has no such trial".into(),
            })
    }

    fn running(&mut self, number: u32) -> Result<&mut Trial, HpoError> {
        let t = self.trial_mut(number)?;
        if t.state != TrialState::Running {
            return Err(HpoError::Trial {
                number,
                reason: format!("is {:?}, not running", t.state).to_lowercase(),
            });
        }
        Ok(t)
    }

    /// Records a running trial's value at `step` (1-based epoch). Not saved: a trial that
    /// does not finish is failed on resume, so its intermediate values would never be used.
    pub fn report(&mut self, number: u32, step: u32, value: f64) -> Result<(), HpoError> {
        self.running(number)?.intermediate.push((step, value));
        Ok(())
    }

    /// Records the tracking run of a trial, and saves.
    pub fn set_run_id(&mut self, number: u32, run_id: &str) -> Result<(), HpoError> {
        self.trial_mut(number)?.run_id = Some(run_id.to_owned());
        self.save()
    }

    /// Finishes a running trial with its objective `value` (the mean over `fold_values`), and
    /// saves. A non-finite value fails the trial instead, as Optuna does, since it cannot be
    /// ranked.
    pub fn complete(
        &mut self,
        number: u32,
        value: f64,
        fold_values: Vec<f64>,
    ) -> Result<(), HpoError> {
        let t = self.running(number)?;
        t.fold_values = fold_values;
        if value.is_finite() {
            t.state = TrialState::Complete;
            t.value = Some(value);
        } else {
            t.state = TrialState::Failed;
            t.error = Some(format!("objective is not finite ({value})"));
        }
        self.save()
    }

    /// Marks a running trial pruned, and saves.
    pub fn prune(&mut self, number: u32) -> Result<(), HpoError> {
        self.running(number)?.state = TrialState::Pruned;
        self.save()
    }

    /// Marks a running trial failed with `reason`, and saves.
    pub fn fail(&mut self, number: u32, reason: &str) -> Result<(), HpoError> {
        let t = self.running(number)?;
        t.state = TrialState::Failed;
        t.error = Some(reason.to_owned());
        self.save()
    }

    /// Trials that count toward the budget `n_trials`: every finished one except interrupted
    /// trials replaced by a retry.
    pub fn n_done(&self) -> usize {
        self.trials
            .iter()
            .filter(|t| t.state != TrialState::Running && !t.requeued)
            .count()
    }

    /// The best complete trial (the earliest on ties).
    pub fn best(&self) -> Option<&Trial> {
        self.trials
            .iter()
            .filter(|t| t.state == TrialState::Complete)
            .filter_map(|t| Some((t, t.value?)))
            .fold(None, |best: Option<(&Trial, f64)>, (t, v)| match best {
                Some((_, bv)) if !self.direction.better(v, bv) => best,
                _ => Some((t, v)),
            })
            .map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::SearchParam;
    use crate::train::hpo::ParamValue;

    /// Proposes `lstm_units = 8 + trials so far`: distinct, in range and deterministic, so
    /// these tests exercise the study alone.
    struct Counting;

    impl Sampler for Counting {
        fn sample(&mut self, _: &SearchSpace, history: &[Trial]) -> Params {
            Params::from([
                (
                    "lstm_units".to_string(),
                    ParamValue::Int(8 + history.len() as i64),
                ),
                ("learning_rate".to_string(), ParamValue::Float(0.001)),
            ])
        }
    }

    fn space() -> SearchSpace {
        let map: BTreeMap<String, SearchParam> = serde_yaml_ng::from_str(
            "lstm_units: [8, 64]\nlearning_rate: {type: float, low: 0.0001, high: 0.1, log: true}\n",
        )
        .unwrap();
        SearchSpace::from_config(&map).unwrap()
    }

    #[test]
    fn a_killed_study_resumes_without_repeating_finished_trials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hpo/study.json");
        let space = space();
        let mut sampler = Counting;
        let mut s = Study::load_or_new(&path, "k1", Direction::Minimize).unwrap();
        let a = s.ask(&mut sampler, &space).unwrap();
        s.report(a, 1, 0.9).unwrap();
        s.report(a, 2, f64::NAN).unwrap();
        s.complete(a, 0.5, vec![0.4, f64::NAN]).unwrap();
        let b = s.ask(&mut sampler, &space).unwrap();
        s.set_run_id(b, "run-b").unwrap();
        s.prune(b).unwrap();
        let c = s.ask(&mut sampler, &space).unwrap();
        s.complete(c, 0.2, vec![0.2]).unwrap();
        let killed = s.ask(&mut sampler, &space).unwrap();
        s.report(killed, 1, 0.3).unwrap();
        let finished: Vec<Trial> = s.trials[..3].to_vec();
        drop(s); // the process dies with trial 3 running

        let mut r = Study::load_or_new(&path, "k1", Direction::Minimize).unwrap();
        assert_eq!(r.trials.len(), 4);
        // NaN survives the JSON round trip as NaN; compare the rest exactly.
        assert_eq!(r.trials[1..3], finished[1..3]);
        assert_eq!(r.trials[0].intermediate[0], (1, 0.9));
        assert!(r.trials[0].intermediate[1].1.is_nan());
        assert!(r.trials[0].fold_values[1].is_nan());
        assert_eq!(r.trials[1].run_id.as_deref(), Some("run-b"));
        let k = &r.trials[killed as usize];
        assert_eq!(k.state, TrialState::Failed);
        assert!(k.requeued && k.error.as_deref().unwrap().contains("interrupted"));
        assert_eq!(r.n_done(), 3, "the interrupted trial does not count");
        assert_eq!(r.best().unwrap().number, c);

        // The interrupted parameters are asked again, then new ones follow.
        let retry = r.ask(&mut sampler, &space).unwrap();
        assert_eq!(retry, 4);
        assert_eq!(r.trials[4].params, r.trials[killed as usize].params);
        assert_eq!(r.trials[4].retry_of, Some(killed));
        let fresh = r.ask(&mut sampler, &space).unwrap();
        let fresh_params = &r.trials[fresh as usize].params;
        assert!(r.trials[..5].iter().all(|t| &t.params != fresh_params));
        assert!(matches!(
            fresh_params["lstm_units"],
            ParamValue::Int(8..=64)
        ));
        // Both die: the retry is not retried again, the fresh one is.
        drop(r);
        let r = Study::load_or_new(&path, "k1", Direction::Minimize).unwrap();
        assert_eq!(r.trials[4].state, TrialState::Failed);
        assert!(!r.trials[4].requeued);
        assert!(r.trials[5].requeued);
        assert_eq!(r.n_done(), 4);
        assert_eq!(r.queue.len(), 1);
        assert_eq!(r.queue[0].0, fresh);
    }

    #[test]
    fn a_study_of_another_search_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.json");
        let mut s = Study::load_or_new(&path, "k1", Direction::Maximize).unwrap();
        s.ask(&mut Counting, &space()).unwrap();
        let err = Study::load_or_new(&path, "k2", Direction::Maximize).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("study.json") && msg.contains("k1") && msg.contains("k2"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), crate::exit::ExitCode::Usage);
        let err = Study::load_or_new(&path, "k1", Direction::Minimize).unwrap_err();
        assert!(err.to_string().contains("direction"), "{err}");
        // The refused file is left as it was.
        let again = Study::load_or_new(&path, "k1", Direction::Maximize).unwrap();
        assert_eq!(again.trials.len(), 1);
    }

    #[test]
    fn best_follows_the_direction_and_finished_trials_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let space = space();
        for (direction, best) in [(Direction::Maximize, 1), (Direction::Minimize, 0)] {
            let path = dir.path().join(format!("{direction:?}.json"));
            let mut s = Study::load_or_new(&path, "k", direction).unwrap();
            let mut sampler = Counting;
            for v in [0.1, 0.7, f64::INFINITY] {
                let n = s.ask(&mut sampler, &space).unwrap();
                s.complete(n, v, vec![v]).unwrap();
            }
            assert_eq!(
                s.trials[2].state,
                TrialState::Failed,
                "non-finite objective"
            );
            assert_eq!(s.best().unwrap().number, best);
            assert!(
                s.complete(0, 9.0, vec![]).is_err(),
                "finished trials are final"
            );
            assert!(s.report(7, 1, 0.0).is_err());
        }
    }

    #[test]
    fn the_key_follows_the_search_not_the_budget() {
        let h = HpoConfig::default();
        let k = study_key(&h, "data");
        assert_ne!(k, study_key(&h, "other data"));
        let more = HpoConfig {
            n_trials: 99,
            seed: 1,
            ..h.clone()
        };
        assert_eq!(k, study_key(&more, "data"));
        let mut narrower = h.clone();
        narrower.search_space.remove("batch_size");
        assert_ne!(k, study_key(&narrower, "data"));
    }
}
