//! Small value types that carry meaning (and their invariants) through the configuration.

use std::fmt;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Binance symbol such as `BTCUSDT`, `BTCUSD_PERP` or `ETHUSD_250328`: 2-20 characters,
/// uppercase ASCII letters, digits and `_`, the first a letter or digit. That covers every
/// spot, USD-M and COIN-M symbol, and the strict pattern is what makes a symbol safe to inline
/// into SQL and to use in file and stream names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Symbol(String);

impl Symbol {
    /// Checks the pattern.
    pub fn new(s: &str) -> Result<Self, String> {
        let allowed = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
        let ok = (2..=20).contains(&s.len())
            && s.bytes().next().is_some_and(allowed)
            && s.bytes().all(|b| allowed(b) || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "invalid symbol {s:?}: expected 2-20 uppercase letters, digits or `_` starting \
                 with a letter or digit, e.g. \"BTCUSDT\" or \"BTCUSD_PERP\""
            ))
        }
    }

    /// The symbol text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by Symbol be looked up with a plain `&str` (same Eq/Ord/Hash as the text).
impl std::borrow::Borrow<str> for Symbol {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Symbol::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Snapshot cadence in whole seconds (validated positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cadence(u32);

impl Cadence {
    /// A cadence of `seconds`.
    pub fn from_seconds(seconds: u32) -> Self {
        Self(seconds)
    }

    /// Seconds between snapshots.
    pub fn seconds(self) -> u32 {
        self.0
    }
}

/// A date bound of `data.time_range`: `YYYY-MM-DD` (UTC midnight) or an RFC 3339 instant.
/// The text is kept as written so snapshots of the configuration round-trip exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateBound {
    raw: String,
    instant: DateTime<Utc>,
    date_only: bool,
}

impl DateBound {
    /// Parses `YYYY-MM-DD` or RFC 3339.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            let instant = date
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc();
            return Ok(Self {
                raw: raw.to_owned(),
                instant,
                date_only: true,
            });
        }
        DateTime::parse_from_rfc3339(raw)
            .map(|t| Self {
                raw: raw.to_owned(),
                instant: t.with_timezone(&Utc),
                date_only: false,
            })
            .map_err(|_| {
                format!(
                    "invalid date {raw:?}: expected YYYY-MM-DD or RFC 3339 (2024-01-31T12:00:00Z)"
                )
            })
    }

    /// The instant, used as an inclusive start.
    pub fn start(&self) -> DateTime<Utc> {
        self.instant
    }

    /// The exclusive end: a date-only bound includes its whole day.
    pub fn end_exclusive(&self) -> DateTime<Utc> {
        if self.date_only {
            self.instant + TimeDelta::days(1)
        } else {
            self.instant
        }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl Serialize for DateBound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for DateBound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateBound::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_strict() {
        assert!(Symbol::new("BTCUSDT").is_ok());
        assert!(Symbol::new("1000PEPEUSDT").is_ok());
        assert!(Symbol::new("BTCUSD_PERP").is_ok());
        assert!(Symbol::new("ETHUSD_250328").is_ok());
        for bad in [
            "btcusdt",
            "BTC-USDT",
            "B",
            "_BTCUSDT",
            "BTCUSD_PERP_TOO_LONG_1",
            "BTC'; DROP TABLE x;--",
            "",
        ] {
            assert!(Symbol::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn date_only_end_includes_the_day() {
        let d = DateBound::parse("2024-12-31").unwrap();
        assert_eq!(d.start().to_rfc3339(), "2024-12-31T00:00:00+00:00");
        assert_eq!(d.end_exclusive().to_rfc3339(), "2025-01-01T00:00:00+00:00");
        let t = DateBound::parse("2024-12-31T12:00:00+02:00").unwrap();
        assert_eq!(t.end_exclusive().to_rfc3339(), "2024-12-31T10:00:00+00:00");
        assert!(DateBound::parse("31/12/2024").is_err());
    }
}
