//! Samplers: uniform random search, and Optuna's tree-structured Parzen estimator (TPE) in its
//! default, independent (univariate) form.
//!
//! TPE ranks the finished trials, calls the best `gamma(n) = min(ceil(0.1 n), 25)` of them
//! good and the rest bad, fits one Parzen estimator per parameter to each group (`l` to the
//! good values, `g` to the bad), draws `n_ei_candidates` values from `l` and keeps the one
//! with the largest `l(x) / g(x)`, which maximises expected improvement under TPE's model.
//!
//! Both samplers seed their generator from the sampler seed and the number of trials already
//! in the study, so a resumed study draws exactly what an uninterrupted one with the same
//! history would.

use super::space::{Dist, ParamValue, Params, SearchSpace};
use super::study::{Sampler, Trial, TrialState};
use crate::config::{Direction, HpoConfig, SamplerKind};
use crate::model::Rng;

/// The sampler `hyperparameter_optimization.sampler` names, seeded with its `seed`.
pub fn sampler_from_config(hpo: &HpoConfig) -> Box<dyn Sampler> {
    match hpo.sampler {
        SamplerKind::Tpe => Box::new(TpeSampler::new(hpo.seed, hpo.direction)),
        SamplerKind::Random => Box::new(RandomSampler::new(hpo.seed)),
    }
}

/// Uniform in [0, 1) with 53 bits, finer than `Rng::next_f32` for narrow float ranges.
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal deviate (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u = 1.0 - unit(rng); // (0, 1]: ln is finite
    let v = unit(rng);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One uniform draw from `dist` (log-uniform on a log scale).
fn draw_uniform(dist: &Dist, rng: &mut Rng) -> ParamValue {
    match dist {
        Dist::Int {
            low,
            high,
            log: false,
        } => ParamValue::Int(low + rng.below((high - low) as usize + 1) as i64),
        Dist::Categorical(choices) => ParamValue::Choice(choices[rng.below(choices.len())].clone()),
        numeric => {
            let (lo, hi) = numeric.internal_bounds().unwrap_or((0.0, 1.0));
            numeric
                .from_internal(lo + unit(rng) * (hi - lo))
                .unwrap_or(ParamValue::Float(lo))
        }
    }
}

fn draw_all_uniform(space: &SearchSpace, rng: &mut Rng) -> Params {
    space
        .params()
        .iter()
        .map(|(name, dist)| (name.clone(), draw_uniform(dist, rng)))
        .collect()
}

/// Uniform random search.
#[derive(Debug, Clone)]
pub struct RandomSampler {
    seed: u64,
}

impl RandomSampler {
    /// A sampler drawing from streams of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl Sampler for RandomSampler {
    fn sample(&mut self, space: &SearchSpace, history: &[Trial]) -> Params {
        let mut rng = Rng::new(self.seed, &format!("hpo-random-{}", history.len()));
        draw_all_uniform(space, &mut rng)
    }
}

/// Optuna's TPE sampler (univariate, with the prior, magic clip and Optuna's default
/// weights).
#[derive(Debug, Clone)]
pub struct TpeSampler {
    /// Sampler seed.
    pub seed: u64,
    /// Whether higher or lower objective values are better.
    pub direction: Direction,
    /// Finished trials drawn uniformly before TPE takes over (Optuna: 10).
    pub n_startup_trials: usize,
    /// Candidates drawn from `l(x)` per parameter (Optuna: 24).
    pub n_ei_candidates: usize,
    /// Weight of the prior component, a wide kernel over the whole range (Optuna: 1).
    pub prior_weight: f64,
}

impl TpeSampler {
    /// Optuna's defaults for `direction`.
    pub fn new(seed: u64, direction: Direction) -> Self {
        Self {
            seed,
            direction,
            n_startup_trials: 10,
            n_ei_candidates: 24,
            prior_weight: 1.0,
        }
    }

    /// Finished trials best first, split into (good, bad). Complete trials rank by value;
    /// pruned ones come after every complete one, those that got further first, then by their
    /// last value, as Optuna ranks them. Running and failed trials are ignored.
    fn split<'a>(&self, history: &'a [Trial]) -> (Vec<&'a Trial>, Vec<&'a Trial>) {
        // Lower sign * value is better.
        let sign = match self.direction {
            Direction::Minimize => 1.0,
            Direction::Maximize => -1.0,
        };
        let score = |v: f64| if v.is_nan() { f64::INFINITY } else { sign * v };
        let mut ranked: Vec<(&Trial, (u8, i64, f64))> = history
            .iter()
            .filter_map(|t| match (t.state, t.value) {
                (TrialState::Complete, Some(v)) if v.is_finite() => Some((t, (0, 0, sign * v))),
                (TrialState::Pruned, _) => {
                    let (step, v) = t.intermediate.last().copied().unwrap_or((0, f64::NAN));
                    Some((t, (1, -i64::from(step), score(v))))
                }
                _ => None,
            })
            .collect();
        ranked.sort_by(|a, b| {
            (a.1.0, a.1.1)
                .cmp(&(b.1.0, b.1.1))
                .then(a.1.2.total_cmp(&b.1.2))
                .then(a.0.number.cmp(&b.0.number))
        });
        let n_good = gamma(ranked.len()).min(ranked.len());
        let bad = ranked.split_off(n_good);
        (
            ranked.into_iter().map(|(t, _)| t).collect(),
            bad.into_iter().map(|(t, _)| t).collect(),
        )
    }
}

/// Size of the good group among `n` finished trials (Optuna's default gamma).
fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// Optuna's default observation weights, for observations in trial order: older trials fade
/// linearly once there are more than 25, so that the estimators follow the search's recent
/// focus.
fn default_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let start = 1.0 / n as f64;
    (0..ramp)
        .map(|i| {
            if ramp == 1 {
                start
            } else {
                start + (1.0 - start) * i as f64 / (ramp - 1) as f64
            }
        })
        .chain(std::iter::repeat_n(1.0, 25))
        .collect()
}

/// `(internal value, weight)` of each trial in `group` that has parameter `name` inside
/// `dist`, the weights following trial order.
fn observations(group: &[&Trial], name: &str, dist: &Dist) -> Vec<(f64, f64)> {
    let mut xs: Vec<(u32, f64)> = group
        .iter()
        .filter_map(|t| Some((t.number, dist.to_internal(t.params.get(name)?)?)))
        .collect();
    xs.sort_by_key(|(n, _)| *n);
    xs.iter()
        .zip(default_weights(xs.len()))
        .map(|((_, x), w)| (*x, w))
        .collect()
}

/// Complementary error function (Numerical Recipes' `erfcc`, relative error < 1.2e-7: far
/// below what ranking candidates needs).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Standard normal CDF.
fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// A mixture of Gaussians truncated to `[low, high]`: one kernel per observation plus the
/// prior kernel.
struct Parzen {
    low: f64,
    high: f64,
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    /// Normalised.
    weights: Vec<f64>,
}

impl Parzen {
    /// Optuna's univariate bandwidths: each kernel is as wide as the larger gap to its
    /// neighbours (the outermost ones use their inner gap rather than the distance to the
    /// bound), clipped to `[(high - low) / min(100, 1 + kernels), high - low]` ("magic clip":
    /// no kernel so narrow the search collapses). The prior is centred with width
    /// `high - low`.
    fn new(obs: &[(f64, f64)], low: f64, high: f64, prior_weight: f64) -> Self {
        let n = obs.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| obs[a].0.total_cmp(&obs[b].0));
        let sorted: Vec<f64> = std::iter::once(low)
            .chain(order.iter().map(|&i| obs[i].0))
            .chain(std::iter::once(high))
            .collect();
        let mut sorted_sigmas: Vec<f64> = (1..=n)
            .map(|j| (sorted[j] - sorted[j - 1]).max(sorted[j + 1] - sorted[j]))
            .collect();
        if n >= 2 {
            sorted_sigmas[0] = sorted[2] - sorted[1];
            sorted_sigmas[n - 1] = sorted[n] - sorted[n - 1];
        }
        let range = high - low;
        let min_sigma = range / 100f64.min(1.0 + (n + 1) as f64);
        let mut sigmas = vec![0.0; n];
        for (rank, &i) in order.iter().enumerate() {
            sigmas[i] = sorted_sigmas[rank].clamp(min_sigma, range);
        }
        let mut mus: Vec<f64> = obs.iter().map(|o| o.0).collect();
        let mut weights: Vec<f64> = obs.iter().map(|o| o.1).collect();
        mus.push(0.5 * (low + high));
        sigmas.push(range);
        weights.push(prior_weight);
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        Self {
            low,
            high,
            mus,
            sigmas,
            weights,
        }
    }

    fn draw(&self, rng: &mut Rng) -> f64 {
        let mut u = unit(rng);
        let k = self
            .weights
            .iter()
            .position(|w| {
                u -= w;
                u < 0.0
            })
            .unwrap_or(self.weights.len() - 1);
        let (mu, sigma) = (self.mus[k], self.sigmas[k]);
        // Rejection: every kernel is centred inside the range and at most as wide as it, so
        // at least about a third of the draws land inside; 100 misses in a row do not happen
        // in practice, and clamping then is harmless.
        for _ in 0..100 {
            let x = mu + sigma * normal(rng);
            if (self.low..=self.high).contains(&x) {
                return x;
            }
        }
        mu.clamp(self.low, self.high)
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let terms: Vec<f64> = (0..self.mus.len())
            .map(|k| {
                let (mu, s) = (self.mus[k], self.sigmas[k]);
                let mass = (phi((self.high - mu) / s) - phi((self.low - mu) / s)).max(1e-300);
                let z = (x - mu) / s;
                self.weights[k].ln()
                    - 0.5 * z * z
                    - s.ln()
                    - 0.5 * std::f64::consts::TAU.ln()
                    - mass.ln()
            })
            .collect();
        log_sum_exp(&terms)
    }
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Choice probabilities from weighted counts smoothed by the prior spread evenly over the
/// choices, so no choice ever has probability zero.
fn choice_probs(obs: &[(f64, f64)], k: usize, prior_weight: f64) -> Vec<f64> {
    let mut p = vec![prior_weight / k as f64; k];
    for &(i, w) in obs {
        p[i as usize] += w;
    }
    let total: f64 = p.iter().sum();
    p.iter().map(|x| x / total).collect()
}

impl Sampler for TpeSampler {
    fn sample(&mut self, space: &SearchSpace, history: &[Trial]) -> Params {
        let mut rng = Rng::new(self.seed, &format!("hpo-tpe-{}", history.len()));
        let (good, bad) = self.split(history);
        if good.len() + bad.len() < self.n_startup_trials.max(1) {
            return draw_all_uniform(space, &mut rng);
        }
        let n_cand = self.n_ei_candidates.max(1);
        space
            .params()
            .iter()
            .map(|(name, dist)| {
                let l_obs = observations(&good, name, dist);
                let g_obs = observations(&bad, name, dist);
                let value = match dist {
                    Dist::Categorical(choices) => {
                        let l = choice_probs(&l_obs, choices.len(), self.prior_weight);
                        let g = choice_probs(&g_obs, choices.len(), self.prior_weight);
                        let best = (0..n_cand)
                            .map(|_| {
                                let mut u = unit(&mut rng);
                                l.iter()
                                    .position(|p| {
                                        u -= p;
                                        u < 0.0
                                    })
                                    .unwrap_or(l.len() - 1)
                            })
                            .map(|i| (i, l[i].ln() - g[i].ln()))
                            .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
                        ParamValue::Choice(choices[best.0].clone())
                    }
                    numeric => {
                        let (lo, hi) = numeric.internal_bounds().unwrap_or((0.0, 1.0));
                        let l = Parzen::new(&l_obs, lo, hi, self.prior_weight);
                        let g = Parzen::new(&g_obs, lo, hi, self.prior_weight);
                        let best = (0..n_cand)
                            .map(|_| l.draw(&mut rng))
                            .map(|x| (x, l.log_pdf(x) - g.log_pdf(x)))
                            .fold(
                                (lo, f64::NEG_INFINITY),
                                |a, b| if b.1 > a.1 { b } else { a },
                            );
                        numeric
                            .from_internal(best.0)
                            .unwrap_or(ParamValue::Float(best.0))
                    }
                };
                (name.clone(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::SearchParam;

    fn space() -> SearchSpace {
        let map: BTreeMap<String, SearchParam> = serde_yaml_ng::from_str(
            "learning_rate: {type: float, low: 0.00001, high: 0.1, log: true}\n\
             lstm_units: [8, 256]\n\
             lstm_dropout: [0.0, 0.6]\n\
             activation: [relu, tanh, gelu, sigmoid]\n",
        )
        .unwrap();
        SearchSpace::from_config(&map).unwrap()
    }

    /// A cheap objective (lower is better, 0 at the optimum) with a log-scale optimum, an
    /// integer one, a float one and a categorical one.
    fn objective(p: &Params) -> f64 {
        let lr = p["learning_rate"].as_f64().unwrap();
        let units = p["lstm_units"].as_f64().unwrap();
        let dropout = p["lstm_dropout"].as_f64().unwrap();
        let act = match &p["activation"] {
            ParamValue::Choice(v) => v.as_str().unwrap().to_owned(),
            other => panic!("{other:?}"),
        };
        let penalty = match act.as_str() {
            "tanh" => 0.0,
            "relu" => 0.5,
            "gelu" => 1.0,
            _ => 1.5,
        };
        (lr.log10() + 3.0).powi(2)
            + ((units - 100.0) / 60.0).powi(2)
            + ((dropout - 0.2) / 0.2).powi(2)
            + penalty
    }

    /// Best objective after `n` trials, maximising `-objective` when `direction` says so.
    fn run(sampler: &mut dyn Sampler, direction: Direction, n: usize) -> (f64, Vec<Params>) {
        let space = space();
        let mut history: Vec<Trial> = Vec::new();
        for number in 0..n {
            let params = sampler.sample(&space, &history);
            let v = objective(&params);
            history.push(Trial {
                number: number as u32,
                params,
                state: TrialState::Complete,
                value: Some(if direction == Direction::Maximize {
                    -v
                } else {
                    v
                }),
                intermediate: Vec::new(),
                fold_values: Vec::new(),
                run_id: None,
                error: None,
                retry_of: None,
                requeued: false,
            });
        }
        let best = history
            .iter()
            .map(|t| objective(&t.params))
            .fold(f64::INFINITY, f64::min);
        (best, history.into_iter().map(|t| t.params).collect())
    }

    #[test]
    fn tpe_beats_random_search() {
        let (trials, seeds) = (40, 10);
        let mean = |make: &dyn Fn(u64) -> Box<dyn Sampler>| {
            (0..seeds)
                .map(|s| run(make(s).as_mut(), Direction::Minimize, trials).0)
                .sum::<f64>()
                / seeds as f64
        };
        let random = mean(&|s| Box::new(RandomSampler::new(s)));
        let tpe = mean(&|s| Box::new(TpeSampler::new(s, Direction::Minimize)));
        eprintln!(
            "mean best over {seeds} seeds, {trials} trials: tpe {tpe:.4}, random {random:.4}"
        );
        // Measured: tpe 0.42, random 0.66 (ratio 0.64); fixed seeds make this exact, the margin
        // leaves room for harmless changes to the draws.
        assert!(tpe < 0.8 * random, "tpe {tpe} vs random {random}");
    }

    #[test]
    fn deterministic_and_direction_aware() {
        let a = run(
            &mut TpeSampler::new(5, Direction::Minimize),
            Direction::Minimize,
            25,
        );
        let b = run(
            &mut TpeSampler::new(5, Direction::Minimize),
            Direction::Minimize,
            25,
        );
        assert_eq!(a.1, b.1, "same seed, same draws");
        // Maximising the negated objective is the same search.
        let c = run(
            &mut TpeSampler::new(5, Direction::Maximize),
            Direction::Maximize,
            25,
        );
        assert_eq!(a.1, c.1);
        let d = run(
            &mut TpeSampler::new(6, Direction::Minimize),
            Direction::Minimize,
            25,
        );
        assert_ne!(a.1, d.1);
        // Every value inside the space.
        for p in &a.1 {
            let lr = p["learning_rate"].as_f64().unwrap();
            assert!((1e-5..=0.1).contains(&lr), "{lr}");
            assert!(matches!(p["lstm_units"], ParamValue::Int(8..=256)));
        }
    }

    #[test]
    fn the_split_ranks_complete_before_pruned() {
        let t = |number: u32, state, value: Option<f64>, last: Option<(u32, f64)>| Trial {
            number,
            params: Params::new(),
            state,
            value,
            intermediate: last.into_iter().collect(),
            fold_values: Vec::new(),
            run_id: None,
            error: None,
            retry_of: None,
            requeued: false,
        };
        let mut history = vec![
            t(0, TrialState::Pruned, None, Some((3, 0.99))),
            t(1, TrialState::Failed, None, None),
            t(2, TrialState::Running, None, None),
            t(3, TrialState::Pruned, None, Some((5, 0.1))),
        ];
        for i in 4..14 {
            history.push(t(i, TrialState::Complete, Some(f64::from(i) / 20.0), None));
        }
        let (good, bad) = TpeSampler::new(0, Direction::Maximize).split(&history);
        // 12 ranked trials: gamma = 2 good; failed and running ignored.
        let good: Vec<u32> = good.iter().map(|t| t.number).collect();
        let bad: Vec<u32> = bad.iter().map(|t| t.number).collect();
        assert_eq!(good, [13, 12]);
        assert_eq!(bad, [11, 10, 9, 8, 7, 6, 5, 4, 3, 0]);
        assert_eq!(gamma(1), 1);
        assert_eq!(gamma(300), 25);
        let w = default_weights(30);
        assert_eq!(w.len(), 30);
        assert!((w[0] - 1.0 / 30.0).abs() < 1e-12 && w[4] == 1.0 && w[29] == 1.0);
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (-1.0, 1.842_700_792_949_715),
            (3.0, 2.209_049_699_858_544e-5),
        ] {
            assert!(((erfc(x) - want) / want).abs() < 2e-7, "erfc({x})");
        }
    }
}
