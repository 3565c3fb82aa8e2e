//! Calendar features, all in UTC: cyclical sin/cos encodings (so 23:59 is next to 00:00),
//! days since the start of the data, and a one-hot trading session.

/// Column names for the configured local (cyclical) and global features.
pub fn columns(local: &[String], global: &[String]) -> Vec<String> {
    let mut cols = Vec::new();
    for name in local {
        cols.push(format!("{name}_sin"));
        cols.push(format!("{name}_cos"));
    }
    for name in global {
        match name.as_str() {
            "market_session" => cols.extend(SESSIONS.iter().map(|s| format!("session_{s}"))),
            _ => cols.push(name.clone()),
        }
    }
    cols
}

/// Sessions by UTC hour: Asian [00, 08), European [08, 14), American [14, 24).
const SESSIONS: [&str; 3] = ["asian", "european", "american"];

fn session(hour: u32) -> usize {
    match hour {
        0..=7 => 0,
        8..=13 => 1,
        _ => 2,
    }
}

/// The configured temporal features, resolved once so rows are written without string
/// matches.
#[derive(Debug, Clone)]
pub struct TemporalPlan {
    local: Vec<Cycle>,
    global: Vec<Global>,
    columns: usize,
}

#[derive(Debug, Clone, Copy)]
enum Cycle {
    HourOfDay,
    DayOfWeek,
    MinuteOfHour,
}

#[derive(Debug, Clone, Copy)]
enum Global {
    DaysSinceStart,
    MarketSession,
}

impl TemporalPlan {
    /// Resolves the names (validated by the config, so every name is known).
    pub fn new(local: &[String], global: &[String]) -> Self {
        Self {
            local: local
                .iter()
                .map(|name| match name.as_str() {
                    "hour_of_day" => Cycle::HourOfDay,
                    "day_of_week" => Cycle::DayOfWeek,
                    "minute_of_hour" => Cycle::MinuteOfHour,
                    other => unreachable!("temporal feature {other} passed config validation"),
                })
                .collect(),
            global: global
                .iter()
                .map(|name| match name.as_str() {
                    "days_since_start" => Global::DaysSinceStart,
                    "market_session" => Global::MarketSession,
                    other => unreachable!("temporal feature {other} passed config validation"),
                })
                .collect(),
            columns: columns(local, global).len(),
        }
    }

    /// Values per step.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The features of instant `t_ms` into `out` (`columns()` values, in `columns` order).
    pub fn write(&self, start_ms: i64, t_ms: i64, out: &mut [f64]) {
        const DAY: i64 = 86_400_000;
        let ms_of_day = t_ms.rem_euclid(DAY);
        // 1970-01-01 was a Thursday; Monday = 0.
        let weekday = (t_ms.div_euclid(DAY) + 3).rem_euclid(7);
        let tau = std::f64::consts::TAU;
        let mut o = 0;
        for cycle in &self.local {
            let phase = match cycle {
                Cycle::HourOfDay => ms_of_day as f64 / DAY as f64,
                Cycle::DayOfWeek => (weekday as f64 + ms_of_day as f64 / DAY as f64) / 7.0,
                Cycle::MinuteOfHour => (t_ms.rem_euclid(3_600_000)) as f64 / 3_600_000.0,
            };
            let (sin, cos) = (tau * phase).sin_cos();
            out[o] = sin;
            out[o + 1] = cos;
            o += 2;
        }
        for g in &self.global {
            match g {
                Global::DaysSinceStart => {
                    out[o] = (t_ms - start_ms) as f64 / DAY as f64;
                    o += 1;
                }
                Global::MarketSession => {
                    let s = session((ms_of_day / 3_600_000) as u32);
                    for (i, y) in out[o..o + SESSIONS.len()].iter_mut().enumerate() {
                        *y = if i == s { 1.0 } else { 0.0 };
                    }
                    o += SESSIONS.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_at_known_instants() {
        let local = vec![
            "hour_of_day".to_string(),
            "day_of_week".into(),
            "minute_of_hour".into(),
        ];
        let global = vec!["days_since_start".to_string(), "market_session".into()];
        assert_eq!(columns(&local, &global).len(), 6 + 1 + 3);
        // 2024-08-05 is a Monday; 18:15 UTC.
        let t = chrono::DateTime::parse_from_rfc3339("2024-08-05T18:15:00Z")
            .unwrap()
            .timestamp_millis();
        let start = t - 2 * 86_400_000;
        let plan = TemporalPlan::new(&local, &global);
        let mut out = vec![0.0; plan.columns()];
        plan.write(start, t, &mut out);
        let hour_phase = (18.25 / 24.0) * std::f64::consts::TAU;
        assert!(
            (out[0] - hour_phase.sin()).abs() < 1e-12 && (out[1] - hour_phase.cos()).abs() < 1e-12
        );
        let dow_phase = (18.25 / 24.0) / 7.0 * std::f64::consts::TAU;
        assert!((out[2] - dow_phase.sin()).abs() < 1e-12, "Monday is day 0");
        assert!(
            (out[4] - 1.0).abs() < 1e-12 && out[5].abs() < 1e-12,
            "minute 15 = quarter turn"
        );
        assert_eq!(out[6], 2.0);
        assert_eq!(
            &out[7..],
            &[0.0, 0.0, 1.0],
            "18:15 UTC is the American session"
        );
    }
}
