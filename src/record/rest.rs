//! Binance REST depth requests with the request-weight budget: `X-MBX-USED-WEIGHT-1M` is
//! tracked against the per-minute limit, 429 pauses every request for `Retry-After`, 418
//! (IP banned) is reported to the caller.

use std::io::Read;
use std::time::{Duration, Instant};

use super::book::DepthSnapshot;
use crate::config::RecordMarket;

/// The largest depth answer read.
const MAX_ANSWER: u64 = 64 << 20;

/// Why a depth request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RestError {
    /// 429: too many requests; nothing may be sent before `retry_after`.
    RateLimited {
        /// Seconds from `Retry-After`.
        retry_after: u64,
    },
    /// 418: the IP is banned (`Retry-After` says until when).
    Banned {
        /// Seconds from `Retry-After`.
        retry_after: u64,
    },
    /// Any other HTTP status (e.g. 400 unknown symbol).
    Status {
        /// The status.
        status: u16,
        /// The start of the body (Binance's `{"code":..,"msg":..}`).
        body: String,
    },
    /// Connection, timeout, TLS: retried with backoff.
    Network(String),
    /// The body is not a depth snapshot.
    Malformed(String),
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestError::RateLimited { retry_after } => {
                write!(f, "HTTP 429 rate limited, retry after {retry_after} s")
            }
            RestError::Banned { retry_after } => {
                write!(f, "HTTP 418 IP banned, retry after {retry_after} s")
            }
            RestError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            RestError::Network(m) => write!(f, "network error: {m}"),
            RestError::Malformed(m) => write!(f, "malformed answer: {m}"),
        }
    }
}

/// Request weight of a depth request (Binance's tables, 2024).
pub fn depth_weight(market: RecordMarket, limit: u32) -> u32 {
    match market {
        RecordMarket::Spot => match limit {
            0..=100 => 5,
            101..=500 => 25,
            501..=1000 => 50,
            _ => 250,
        },
        // COIN-M's table is USD-M's.
        RecordMarket::UsdmFutures | RecordMarket::CoinmFutures => match limit {
            0..=50 => 2,
            51..=100 => 5,
            101..=500 => 10,
            _ => 20,
        },
    }
}

/// The smallest `limit` Binance accepts that returns at least `depth` levels.
pub fn depth_limit(market: RecordMarket, depth: u32) -> u32 {
    let allowed: &[u32] = match market {
        RecordMarket::Spot => &[5, 10, 20, 50, 100, 500, 1000, 5000],
        RecordMarket::UsdmFutures | RecordMarket::CoinmFutures => &[5, 10, 20, 50, 100, 500, 1000],
    };
    allowed
        .iter()
        .copied()
        .find(|&l| l >= depth)
        .unwrap_or(*allowed.last().expect("non-empty"))
}

/// A depth client with the weight budget of one IP.
pub struct RestClient {
    client: reqwest::blocking::Client,
    base: String,
    market: RecordMarket,
    weight_limit: u32,
    /// Last `X-MBX-USED-WEIGHT-1M` and the minute it belongs to.
    used: u32,
    used_minute: i64,
    paused_until: Option<Instant>,
    /// Highest weight reported in any minute.
    pub peak_weight: u32,
    /// Requests answered 429.
    pub rate_limited: u64,
}

impl RestClient {
    /// A client for `base` (no trailing slash needed); fails only when the HTTP client cannot
    /// be set up (TLS backend).
    pub fn new(
        base: &str,
        market: RecordMarket,
        timeout: Duration,
        weight_limit: u32,
    ) -> Result<Self, RestError> {
        let client = crate::http::client(timeout).map_err(|e| {
            RestError::Network(format!(
                "setting up the HTTP client: {}",
                crate::http::describe(&e)
            ))
        })?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            market,
            weight_limit,
            used: 0,
            used_minute: 0,
            paused_until: None,
            peak_weight: 0,
            rate_limited: 0,
        })
    }

    /// Weight used in the current minute as last reported.
    pub fn used_weight(&self) -> u32 {
        if minute_now() == self.used_minute {
            self.used
        } else {
            0
        }
    }

    /// When requests may go out again after a 429 (`None`: now).
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until.filter(|t| *t > Instant::now())
    }

    /// Whether a request of `weight` fits the budget of this minute.
    pub fn fits(&self, weight: u32) -> bool {
        self.used_weight() + weight <= self.weight_limit && self.paused_until().is_none()
    }

    /// `GET <base>/api/v3/depth?symbol=..&limit=..` (USD-M: `/fapi/v1/depth`, COIN-M:
    /// `/dapi/v1/depth`).
    pub fn depth(&mut self, symbol: &str, limit: u32) -> Result<DepthSnapshot, RestError> {
        let path = match self.market {
            RecordMarket::Spot => "/api/v3/depth",
            RecordMarket::UsdmFutures => "/fapi/v1/depth",
            RecordMarket::CoinmFutures => "/dapi/v1/depth",
        };
        let url = format!("{}{path}?symbol={symbol}&limit={limit}", self.base);
        let resp = self
            .client
            .get(&url)
            .send()
            .map_err(|e| RestError::Network(crate::http::describe(&e)))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(w) = header("x-mbx-used-weight-1m") {
            self.used = w.min(u64::from(u32::MAX)) as u32;
            self.used_minute = minute_now();
            self.peak_weight = self.peak_weight.max(self.used);
        }
        let retry_after = header("retry-after").unwrap_or(60);
        let status = resp.status().as_u16();
        match status {
            200 => {}
            429 => {
                self.rate_limited += 1;
                self.paused_until = Some(Instant::now() + Duration::from_secs(retry_after));
                return Err(RestError::RateLimited { retry_after });
            }
            418 => {
                // The caller stops the symbol for good; no pause, so every other symbol
                // finds out (and is stopped) at its own next request.
                return Err(RestError::Banned { retry_after });
            }
            _ => {
                let mut body = String::new();
                let _ = resp.take(300).read_to_string(&mut body);
                return Err(RestError::Status { status, body });
            }
        }
        // A depth snapshot of 5000 levels is well under 1 MiB; cap what a broken answer costs.
        let mut body = String::new();
        resp.take(MAX_ANSWER + 1)
            .read_to_string(&mut body)
            .map_err(|e| RestError::Network(format!("reading the answer of {url}: {e}")))?;
        if body.len() as u64 > MAX_ANSWER {
            return Err(RestError::Malformed(format!(
                "the answer of {url} is larger than {} MiB",
                MAX_ANSWER >> 20
            )));
        }
        DepthSnapshot::parse(&body).map_err(RestError::Malformed)
    }
}

fn minute_now() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_weights_follow_binance_tables() {
        assert_eq!(depth_limit(RecordMarket::Spot, 10), 10);
        assert_eq!(depth_limit(RecordMarket::Spot, 11), 20);
        assert_eq!(depth_limit(RecordMarket::UsdmFutures, 6000), 1000);
        assert_eq!(depth_weight(RecordMarket::Spot, 20), 5);
        assert_eq!(depth_weight(RecordMarket::Spot, 1000), 50);
        assert_eq!(depth_weight(RecordMarket::UsdmFutures, 1000), 20);
        assert_eq!(depth_limit(RecordMarket::CoinmFutures, 6000), 1000);
        assert_eq!(depth_weight(RecordMarket::CoinmFutures, 50), 2);
    }
}
