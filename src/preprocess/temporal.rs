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

/// The temporal features of instant `t_ms`, appended to `out` in `columns` order.
pub fn compute(local: &[String], global: &[String], start_ms: i64, t_ms: i64, out: &mut Vec<f64>) {
    const DAY: i64 = 86_400_000;
    let ms_of_day = t_ms.rem_euclid(DAY);
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (t_ms.div_euclid(DAY) + 3).rem_euclid(7);
    let tau = std::f64::consts::TAU;
    for name in local {
        let phase = match name.as_str() {
            "hour_of_day" => ms_of_day as f64 / DAY as f64,
            "day_of_week" => (weekday as f64 + ms_of_day as f64 / DAY as f64) / 7.0,
            "minute_of_hour" => (t_ms.rem_euclid(3_600_000)) as f64 / 3_600_000.0,
            other => unreachable!("temporal feature {other} passed config validation"),
        };
        out.push((tau * phase).sin());
        out.push((tau * phase).cos());
    }
    for name in global {
        match name.as_str() {
            "days_since_start" => out.push((t_ms - start_ms) as f64 / DAY as f64),
            "market_session" => {
                let s = session((ms_of_day / 3_600_000) as u32);
                out.extend((0..SESSIONS.len()).map(|i| if i == s { 1.0 } else { 0.0 }));
            }
            other => unreachable!("temporal feature {other} passed config validation"),
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
        let mut out = Vec::new();
        compute(&local, &global, start, t, &mut out);
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
