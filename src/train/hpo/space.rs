//! The search space: `hyperparameter_optimization.search_space` parsed into typed
//! distributions, and the parameter values a trial draws from them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::HpoError;
use crate::config::{ParamKind, SearchParam};

/// One parameter's distribution.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    /// An integer in `[low, high]` (both included).
    Int {
        /// Smallest value.
        low: i64,
        /// Largest value.
        high: i64,
        /// Sample uniformly in `ln(x)` instead of `x`.
        log: bool,
    },
    /// A real in `[low, high]`.
    Float {
        /// Smallest value.
        low: f64,
        /// Largest value.
        high: f64,
        /// Sample uniformly in `ln(x)` instead of `x`.
        log: bool,
    },
    /// One of a list of values.
    Categorical(Vec<serde_yaml_ng::Value>),
}

impl Dist {
    /// The range `[low, high]` the samplers work in for a numeric distribution: `ln` of the
    /// bounds on a log scale, and integers widened by half a step on each side so that, after
    /// rounding, `low` and `high` get as much mass as the values between them.
    pub fn internal_bounds(&self) -> Option<(f64, f64)> {
        let (low, high, log) = match *self {
            Dist::Int { low, high, log } => (low as f64 - 0.5, high as f64 + 0.5, log),
            Dist::Float { low, high, log } => (low, high, log),
            Dist::Categorical(_) => return None,
        };
        // A log-scale int with low = 1 would widen to 0.5: still > 0, so ln is defined.
        Some(if log {
            (low.ln(), high.ln())
        } else {
            (low, high)
        })
    }

    /// A value of this distribution from an internal-space coordinate (clamped into range).
    pub fn from_internal(&self, x: f64) -> Option<ParamValue> {
        match *self {
            Dist::Int { low, high, log } => {
                let v = if log { x.exp() } else { x };
                Some(ParamValue::Int((v.round() as i64).clamp(low, high)))
            }
            Dist::Float { low, high, log } => {
                let v = if log { x.exp() } else { x };
                Some(ParamValue::Float(v.clamp(low, high)))
            }
            Dist::Categorical(_) => None,
        }
    }

    /// The internal-space coordinate of a numeric value, or the index of a choice; `None`
    /// when the value does not belong to this distribution (e.g. an old trial's value that the
    /// space no longer contains).
    pub fn to_internal(&self, v: &ParamValue) -> Option<f64> {
        let x = match (self, v) {
            (Dist::Int { low, high, log }, ParamValue::Int(i)) if (low..=high).contains(&i) => {
                let x = *i as f64;
                if *log { x.ln() } else { x }
            }
            (Dist::Float { low, high, log }, ParamValue::Float(f))
                if (*low..=*high).contains(f) =>
            {
                if *log {
                    f.ln()
                } else {
                    *f
                }
            }
            (Dist::Categorical(choices), ParamValue::Choice(c)) => {
                choices.iter().position(|x| x == c)? as f64
            }
            _ => return None,
        };
        Some(x)
    }
}

/// The parsed search space, parameters in name order (the config's `BTreeMap` order), so that
/// samplers draw them in a reproducible order.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    params: Vec<(String, Dist)>,
}

impl SearchSpace {
    /// Parses every entry of `hyperparameter_optimization.search_space`. Short forms:
    /// `[low, high]` of two numbers is an int range when both are integers, a float range
    /// otherwise; any other list is a categorical choice. The explicit form
    /// `{type, low, high, log, choices}` is the only one that can ask for a log scale.
    pub fn from_config(space: &BTreeMap<String, SearchParam>) -> Result<Self, HpoError> {
        let params = space
            .iter()
            .map(|(name, p)| {
                parse_param(p)
                    .map(|d| (name.clone(), d))
                    .map_err(|reason| HpoError::Space {
                        param: name.clone(),
                        reason,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { params })
    }

    /// The parameters and their distributions, in name order.
    pub fn params(&self) -> &[(String, Dist)] {
        &self.params
    }

    /// True when the space has no parameter.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

fn parse_param(p: &SearchParam) -> Result<Dist, String> {
    match p {
        SearchParam::Choices(items) if items.len() == 2 && items.iter().all(|v| v.is_number()) => {
            if let (Some(low), Some(high)) = (items[0].as_i64(), items[1].as_i64()) {
                int_range(low as f64, high as f64, false)
            } else {
                // is_number guarantees as_f64 succeeds.
                let (low, high) = (
                    items[0].as_f64().unwrap_or(f64::NAN),
                    items[1].as_f64().unwrap_or(f64::NAN),
                );
                float_range(low, high, false)
            }
        }
        SearchParam::Choices(items) => choices(items),
        SearchParam::Explicit {
            kind,
            low,
            high,
            log,
            choices: list,
        } => match kind {
            ParamKind::Categorical => match list {
                Some(items) => choices(items),
                None => Err("categorical parameters need a `choices` list".into()),
            },
            ParamKind::Int | ParamKind::Float => {
                let (Some(low), Some(high)) = (*low, *high) else {
                    return Err("int and float parameters need `low` and `high`".into());
                };
                if *kind == ParamKind::Int {
                    int_range(low, high, *log)
                } else {
                    float_range(low, high, *log)
                }
            }
        },
    }
}

fn choices(items: &[serde_yaml_ng::Value]) -> Result<Dist, String> {
    if items.is_empty() {
        return Err("needs [low, high] or at least one choice".into());
    }
    Ok(Dist::Categorical(items.to_vec()))
}

fn check_range(low: f64, high: f64, log: bool) -> Result<(), String> {
    if !(low.is_finite() && high.is_finite()) {
        return Err(format!(
            "range [{low}, {high}]: bounds must be finite numbers"
        ));
    }
    if low >= high {
        return Err(format!("range [{low}, {high}]: low must be < high"));
    }
    if log && low <= 0.0 {
        return Err(format!("range [{low}, {high}]: log scale needs low > 0"));
    }
    Ok(())
}

fn int_range(low: f64, high: f64, log: bool) -> Result<Dist, String> {
    check_range(low, high, log)?;
    if low.fract() != 0.0 || high.fract() != 0.0 {
        return Err(format!(
            "range [{low}, {high}]: int parameters need integer bounds"
        ));
    }
    Ok(Dist::Int {
        low: low as i64,
        high: high as i64,
        log,
    })
}

fn float_range(low: f64, high: f64, log: bool) -> Result<Dist, String> {
    check_range(low, high, log)?;
    Ok(Dist::Float { low, high, log })
}

/// One drawn parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamValue {
    /// From an int range.
    Int(i64),
    /// From a float range.
    Float(f64),
    /// One of a categorical parameter's choices.
    Choice(serde_yaml_ng::Value),
}

impl ParamValue {
    /// The value as a number (ints and floats, and numeric choices such as a batch size).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(i) => Some(*i as f64),
            ParamValue::Float(f) => Some(*f),
            ParamValue::Choice(v) => v.as_f64(),
        }
    }

    /// The value as an integer (ints, and integer choices such as a batch size).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(i) => Some(*i),
            ParamValue::Float(_) => None,
            ParamValue::Choice(v) => v.as_i64(),
        }
    }
}

/// The plain text MLflow shows as a parameter value: numbers and strings bare, other YAML
/// values in their compact YAML form.
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use serde_yaml_ng::Value;
        match self {
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Choice(Value::String(s)) => f.write_str(s),
            ParamValue::Choice(Value::Number(n)) => write!(f, "{n}"),
            ParamValue::Choice(Value::Bool(b)) => write!(f, "{b}"),
            ParamValue::Choice(Value::Null) => f.write_str("null"),
            ParamValue::Choice(v) => {
                let s = serde_yaml_ng::to_string(v).map_err(|_| fmt::Error)?;
                f.write_str(s.trim_end())
            }
        }
    }
}

/// A trial's parameters by name.
pub type Params = BTreeMap<String, ParamValue>;

#[cfg(test)]
mod tests {
    use super::*;

    fn space(yaml: &str) -> Result<SearchSpace, HpoError> {
        let map: BTreeMap<String, SearchParam> = serde_yaml_ng::from_str(yaml).unwrap();
        SearchSpace::from_config(&map)
    }

    #[test]
    fn the_three_forms_parse() {
        let s = space(
            "lstm_units: [32, 256]\n\
             lstm_dropout: [0.1, 0.5]\n\
             batch_size: [16, 32, 64]\n\
             cnn_filters_1: [16, 'x']\n\
             learning_rate: {type: float, low: 0.0001, high: 0.01, log: true}\n\
             dense_units_1: {type: int, low: 8, high: 512, log: true}\n\
             window_steps: {type: categorical, choices: [50, 100]}\n",
        )
        .unwrap();
        let get = |n: &str| s.params().iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(
            get("lstm_units"),
            Dist::Int {
                low: 32,
                high: 256,
                log: false
            }
        );
        assert_eq!(
            get("lstm_dropout"),
            Dist::Float {
                low: 0.1,
                high: 0.5,
                log: false
            }
        );
        assert_eq!(
            get("batch_size"),
            Dist::Categorical(vec![16.into(), 32.into(), 64.into()])
        );
        // Two items but not both numbers: a choice, not a range.
        assert_eq!(
            get("cnn_filters_1"),
            Dist::Categorical(vec![16.into(), "x".into()])
        );
        assert_eq!(
            get("learning_rate"),
            Dist::Float {
                low: 0.0001,
                high: 0.01,
                log: true
            }
        );
        assert_eq!(
            get("dense_units_1"),
            Dist::Int {
                low: 8,
                high: 512,
                log: true
            }
        );
        assert_eq!(
            get("window_steps"),
            Dist::Categorical(vec![50.into(), 100.into()])
        );
        // Name order, whatever the YAML order.
        let names: Vec<&str> = s.params().iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn bad_forms_name_the_parameter() {
        for (yaml, needle) in [
            ("lstm_units: [256, 32]", "low must be < high"),
            ("batch_size: []", "at least one choice"),
            (
                "learning_rate: {type: float, low: 0.0, high: 0.1, log: true}",
                "log scale",
            ),
            (
                "lstm_units: {type: int, low: 1.5, high: 9}",
                "integer bounds",
            ),
            ("lstm_units: {type: int, low: 1}", "need `low` and `high`"),
            ("batch_size: {type: categorical}", "`choices`"),
        ] {
            let err = space(yaml).unwrap_err().to_string();
            let name = yaml.split(':').next().unwrap();
            assert!(err.contains(name), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn values_map_to_and_from_internal_space() {
        let d = Dist::Int {
            low: 8,
            high: 512,
            log: true,
        };
        let (lo, hi) = d.internal_bounds().unwrap();
        assert!(lo < 8f64.ln() && hi > 512f64.ln());
        assert_eq!(d.from_internal(lo), Some(ParamValue::Int(8)));
        assert_eq!(d.from_internal(hi), Some(ParamValue::Int(512)));
        assert_eq!(d.to_internal(&ParamValue::Int(64)), Some(64f64.ln()));
        assert_eq!(d.to_internal(&ParamValue::Int(4)), None);
        let c = Dist::Categorical(vec!["a".into(), "b".into()]);
        assert_eq!(c.to_internal(&ParamValue::Choice("b".into())), Some(1.0));
        assert_eq!(c.to_internal(&ParamValue::Choice("z".into())), None);
    }

    #[test]
    fn display_is_plain() {
        assert_eq!(ParamValue::Int(64).to_string(), "64");
        assert_eq!(ParamValue::Float(0.001).to_string(), "0.001");
        assert_eq!(ParamValue::Choice("relu".into()).to_string(), "relu");
        assert_eq!(ParamValue::Choice(32.into()).to_string(), "32");
        let json = serde_json::to_string(&ParamValue::Choice("relu".into())).unwrap();
        assert_eq!(
            serde_json::from_str::<ParamValue>(&json).unwrap(),
            ParamValue::Choice("relu".into())
        );
    }
}
