//! MLflow's server limits and the pure rules that keep us inside them: key sanitising,
//! log-batch chunking, retry backoff, client ids.
//!
//! Key mapping (documented in the README): every character outside `[A-Za-z0-9_ .:/-]`
//! becomes `_` (so `loss@val` -> `loss_val`, `f1[up]` -> `f1_up_`), and keys are cut to 250
//! characters. An empty key becomes `_`.

use std::time::Duration;

use super::types::{Metric, Param, Tag};

/// Most metrics in one `runs/log-batch` request.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// Most params in one request.
pub const MAX_PARAMS_PER_BATCH: usize = 100;
/// Most tags in one request.
pub const MAX_TAGS_PER_BATCH: usize = 100;
/// Most entries (metrics + params + tags) in one request.
pub const MAX_ENTRIES_PER_BATCH: usize = 1000;
/// Longest key MLflow accepts.
pub const MAX_KEY_LEN: usize = 250;
/// Longest param value MLflow keeps (longer ones are silently truncated by the server).
pub const MAX_PARAM_VALUE_LEN: usize = 6000;
/// Longest tag value MLflow accepts.
pub const MAX_TAG_VALUE_LEN: usize = 8000;

/// Maps a metric/param/tag key onto MLflow's allowed characters (see module docs).
pub fn sanitize_key(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '.' | ':' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_KEY_LEN)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// One `runs/log-batch` request's worth of entries.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Batch {
    /// Metric points.
    pub metrics: Vec<Metric>,
    /// Params.
    pub params: Vec<Param>,
    /// Tags.
    pub tags: Vec<Tag>,
}

/// Splits entries into requests that respect every per-request limit, keeping the order of
/// each kind (a metric's points stay in step order across chunks).
pub fn chunk_batch(metrics: &[Metric], params: &[Param], tags: &[Tag]) -> Vec<Batch> {
    let (mut m, mut p, mut t) = (0, 0, 0);
    let mut out = Vec::new();
    while m < metrics.len() || p < params.len() || t < tags.len() {
        let np = (params.len() - p).min(MAX_PARAMS_PER_BATCH);
        let nt = (tags.len() - t).min(MAX_TAGS_PER_BATCH);
        let room = MAX_ENTRIES_PER_BATCH - np - nt;
        let nm = (metrics.len() - m).min(MAX_METRICS_PER_BATCH).min(room);
        out.push(Batch {
            metrics: metrics[m..m + nm].to_vec(),
            params: params[p..p + np].to_vec(),
            tags: tags[t..t + nt].to_vec(),
        });
        m += nm;
        p += np;
        t += nt;
    }
    out
}

/// How long to wait before retry number `attempt` (0-based): `base * 2^attempt`, capped.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// A fresh 32-hex-char id (the shape of an MLflow run id), unique across processes: the hash
/// keys of `RandomState` come from the OS's random source, mixed with time, pid and a counter.
pub fn new_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(n);
        h.write_usize(i);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Milliseconds since the Unix epoch, MLflow's timestamp unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Rejects artifact paths that could escape the artifact root (`..`, absolute paths) and
/// normalises separators, so local stores never write outside their directory.
pub fn clean_artifact_path(path: &str) -> Result<String, super::TrackingError> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if path.starts_with('/') || parts.contains(&"..") {
        return Err(super::TrackingError::InvalidInput(format!(
            "artifact path {path:?} must be relative and must not contain '..'"
        )));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(n: usize) -> Vec<Metric> {
        (0..n)
            .map(|i| Metric::new("m", i as f64, 0, i as i64))
            .collect()
    }
    fn tags(n: usize) -> Vec<Tag> {
        (0..n).map(|i| Tag::new(format!("k{i}"), "v")).collect()
    }

    #[test]
    fn sanitize_maps_forbidden_chars_and_truncates() {
        assert_eq!(sanitize_key("loss@val"), "loss_val");
        assert_eq!(sanitize_key("f1[up]"), "f1_up_");
        assert_eq!(sanitize_key("a.b:c/d-e f_g"), "a.b:c/d-e f_g");
        assert_eq!(sanitize_key("é"), "_");
        assert_eq!(sanitize_key(""), "_");
        assert_eq!(sanitize_key(&"x".repeat(300)).len(), MAX_KEY_LEN);
    }

    #[test]
    fn chunking_respects_every_limit_and_keeps_everything_in_order() {
        let m = metrics(2500);
        let p = tags(250);
        let t = tags(30);
        let chunks = chunk_batch(&m, &p, &t);
        for c in &chunks {
            assert!(c.metrics.len() <= MAX_METRICS_PER_BATCH);
            assert!(c.params.len() <= MAX_PARAMS_PER_BATCH);
            assert!(c.tags.len() <= MAX_TAGS_PER_BATCH);
            assert!(c.metrics.len() + c.params.len() + c.tags.len() <= MAX_ENTRIES_PER_BATCH);
        }
        let all_m: Vec<Metric> = chunks.iter().flat_map(|c| c.metrics.clone()).collect();
        let all_p: Vec<Tag> = chunks.iter().flat_map(|c| c.params.clone()).collect();
        let all_t: Vec<Tag> = chunks.iter().flat_map(|c| c.tags.clone()).collect();
        assert_eq!(all_m, m);
        assert_eq!(all_p, p);
        assert_eq!(all_t, t);
        // 100 params + 30 tags leave room for 870 metrics in the first request.
        assert_eq!(chunks[0].metrics.len(), 870);
        // 870 + 900 + 730 metrics alongside 100 + 100 + 50 params.
        assert_eq!(chunks.len(), 3);
        assert!(chunk_batch(&[], &[], &[]).is_empty());
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(5);
        let got: Vec<u128> = (0..7)
            .map(|a| backoff_delay(a, base, cap).as_millis())
            .collect();
        assert_eq!(got, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_delay(u32::MAX, base, cap), cap);
    }

    #[test]
    fn ids_are_32_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn artifact_paths_cannot_escape() {
        assert_eq!(clean_artifact_path("plots//a.png").unwrap(), "plots/a.png");
        assert_eq!(clean_artifact_path("./x").unwrap(), "x");
        assert!(clean_artifact_path("../x").is_err());
        assert!(clean_artifact_path("/etc/passwd").is_err());
    }
}
