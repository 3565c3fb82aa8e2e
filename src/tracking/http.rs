//! The HTTP layer of the REST store: base URL without credentials, HTTP Basic auth, timeouts,
//! bounded retries with exponential backoff, and classification of MLflow's answers.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Result, TrackingError};
use super::limits::backoff_delay;

/// A secret string (a password) whose `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself; only for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Username and password for HTTP Basic auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// MLFLOW_TRACKING_USERNAME.
    pub username: String,
    /// MLFLOW_TRACKING_PASSWORD.
    pub password: Secret,
}

impl Credentials {
    /// Reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; `None` unless both are set
    /// and non-empty.
    pub fn from_env() -> Option<Self> {
        let username = std::env::var("MLFLOW_TRACKING_USERNAME").ok()?;
        let password = std::env::var("MLFLOW_TRACKING_PASSWORD").ok()?;
        (!username.is_empty() && !password.is_empty()).then(|| Credentials {
            username,
            password: Secret::new(password),
        })
    }
}

/// Retry policy: up to `max_retries` retries after the first try, waiting
/// `base * 2^n` (capped at `cap`) before retry `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
}

// Unreserved characters of RFC 3986 stay; everything else is escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one query value or path segment.
pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-encodes a `/`-separated path, keeping the separators.
pub(crate) fn enc_path(path: &str) -> String {
    path.split('/').map(enc).collect::<Vec<_>>().join("/")
}

/// Splits `scheme://user:pass@host/...` into the URL without user-info and the credentials
/// found there (so they are never part of a URL we print).
pub(crate) fn split_userinfo(uri: &str) -> (String, Option<Credentials>) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return (uri.to_string(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let creds = (!user.is_empty()).then(|| Credentials {
                username: percent_encoding::percent_decode_str(user)
                    .decode_utf8_lossy()
                    .into_owned(),
                password: Secret::new(
                    percent_encoding::percent_decode_str(pass)
                        .decode_utf8_lossy()
                        .into_owned(),
                ),
            });
            (format!("{scheme}://{host}{path}"), creds)
        }
        None => (uri.to_string(), None),
    }
}

/// A request body.
pub(crate) enum Body<'a> {
    /// No body (GET).
    Empty,
    /// A JSON document.
    Json(Vec<u8>),
    /// A file's bytes, streamed (artifact upload); reopened for every retry.
    File(&'a Path),
}

/// A blocking HTTP client bound to one MLflow server.
pub(crate) struct HttpClient {
    client: Client,
    base: String,
    credentials: Option<Credentials>,
    retry: RetryPolicy,
    timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .field("auth", &self.credentials.as_ref().map(|_| "***"))
            .field("retry", &self.retry)
            .finish()
    }
}

/// MLflow's JSON error body.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    error_code: String,
    message: String,
}

impl HttpClient {
    /// A client for `uri` (credentials in the URI are used when `creds` is `None`).
    pub(crate) fn new(
        uri: &str,
        creds: Option<Credentials>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let (base, uri_creds) = split_userinfo(uri.trim_end_matches('/'));
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TrackingError::InvalidInput(format!(
                "tracking URI {base:?} is not an http(s):// URL"
            )));
        }
        let client = crate::http::client(timeout).map_err(|e| TrackingError::Http {
            url: base.clone(),
            reason: crate::http::describe(&e),
        })?;
        Ok(HttpClient {
            client,
            base,
            credentials: creds.or(uri_creds),
            retry,
            timeout,
        })
    }

    /// This client with `max_retries` retries per request.
    pub(crate) fn with_retries(&self, max_retries: u32) -> HttpClient {
        HttpClient {
            client: self.client.clone(),
            base: self.base.clone(),
            credentials: self.credentials.clone(),
            retry: RetryPolicy {
                max_retries,
                ..self.retry
            },
            timeout: self.timeout,
        }
    }

    /// The request timeout (until the answer's head; reading its body gets as long again).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The retry policy requests follow.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The server URL without credentials.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// `base + path + ?query`, values percent-encoded.
    pub(crate) fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}{}", self.base, path);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&enc(v));
        }
        url
    }

    /// Sends a JSON request (or a GET) and parses MLflow's JSON answer.
    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let url = self.url(path, query);
        let body = match body {
            Some(b) => Body::Json(serde_json::to_vec(b).map_err(|e| TrackingError::Corrupt {
                context: format!("encoding the request to {url}"),
                message: e.to_string(),
            })?),
            None => Body::Empty,
        };
        let answer = self.send(method, &url, &body)?;
        let (status, ctype) = (answer.status().as_u16(), content_type(&answer));
        let bytes = read_all(&url, answer)?;
        parse_json(&url, status, &ctype, &bytes)
    }

    /// PUTs a file's bytes (artifact proxy upload).
    pub(crate) fn put_file(&self, path: &str, file: &Path) -> Result<()> {
        let url = self.url(path, &[]);
        read_all(&url, self.send(Method::PUT, &url, &Body::File(file))?).map(drop)
    }

    /// GETs `path` and streams the body into `dest`.
    pub(crate) fn get_to_file(&self, path: &str, dest: &Path) -> Result<()> {
        let url = self.url(path, &[]);
        let mut resp = self.send(Method::GET, &url, &Body::Empty)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| TrackingError::io(format!("creating {}", parent.display()), e))?;
        }
        let tmp = dest.with_extension("part.tmp");
        let mut out = std::fs::File::create(&tmp)
            .map_err(|e| TrackingError::io(format!("creating {}", tmp.display()), e))?;
        std::io::copy(&mut resp, &mut out).map_err(|e| TrackingError::Unreachable {
            url: url.clone(),
            attempts: 1,
            reason: format!("download interrupted: {e}"),
            timed_out: false,
        })?;
        out.sync_all()
            .and_then(|_| std::fs::rename(&tmp, dest))
            .map_err(|e| TrackingError::io(format!("writing {}", dest.display()), e))
    }

    /// Sends with retries; returns a 2xx answer or the classified error.
    fn send(&self, method: Method, url: &str, body: &Body<'_>) -> Result<Response> {
        let mut attempt = 0;
        loop {
            let outcome = self.request(method.clone(), url, body)?.send();
            let retryable = match &outcome {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    s == 429 || s >= 500
                }
                // A bad URL, a redirect loop or a refused certificate stays so.
                Err(e) => !(e.is_builder() || e.is_redirect() || crate::http::is_tls(e)),
            };
            if retryable && attempt < self.retry.max_retries {
                let delay = backoff_delay(attempt, self.retry.base, self.retry.cap);
                tracing::debug!(url, attempt, ?delay, "MLflow request failed; retrying");
                std::thread::sleep(delay);
                attempt += 1;
                continue;
            }
            let attempts = attempt + 1;
            return match outcome {
                Ok(resp) => classify(url, attempts, resp),
                Err(e) if retryable => Err(TrackingError::Unreachable {
                    url: url.to_string(),
                    attempts,
                    reason: crate::http::describe(&e),
                    timed_out: e.is_timeout(),
                }),
                Err(e) => Err(TrackingError::Http {
                    url: url.to_string(),
                    reason: crate::http::describe(&e),
                }),
            };
        }
    }

    /// One try's request: method, auth, body (a file is reopened).
    fn request(&self, method: Method, url: &str, body: &Body<'_>) -> Result<RequestBuilder> {
        let req = self.client.request(method, url);
        // `basic_auth` marks the header sensitive: it is kept out of the client's own logs.
        let req = match &self.credentials {
            Some(c) => req.basic_auth(&c.username, Some(c.password.expose())),
            None => req,
        };
        Ok(match body {
            Body::Empty => req,
            Body::Json(bytes) => req
                .header(CONTENT_TYPE, "application/json")
                .body(bytes.clone()),
            Body::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| TrackingError::io(format!("opening {}", path.display()), e))?;
                req.header(CONTENT_TYPE, "application/octet-stream")
                    .body(file)
            }
        })
    }
}

/// A 2xx answer's whole body.
fn read_all(url: &str, resp: Response) -> Result<Vec<u8>> {
    resp.bytes()
        .map(Vec::from)
        .map_err(|e| TrackingError::Unreachable {
            url: url.to_string(),
            attempts: 1,
            reason: format!("reading the answer failed: {}", crate::http::describe(&e)),
            // The server has answered: it is not still working on the request.
            timed_out: false,
        })
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn classify(url: &str, attempts: u32, mut resp: Response) -> Result<Response> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    if status == 401 || status == 403 {
        return Err(TrackingError::Auth {
            url: url.to_string(),
            status,
        });
    }
    if matches!(status, 429 | 502 | 503 | 504) {
        return Err(TrackingError::Unreachable {
            url: url.to_string(),
            attempts,
            reason: format!("HTTP {status}"),
            timed_out: false,
        });
    }
    let ctype = content_type(&resp);
    let mut bytes = Vec::new();
    // An error page is small; cap what we keep so a huge body cannot bloat the error.
    let _ = resp.by_ref().take(64 * 1024).read_to_end(&mut bytes);
    let err: ErrorBody = parse_json(url, status, &ctype, &bytes)?;
    if status == 404 || err.error_code == "RESOURCE_DOES_NOT_EXIST" {
        return Err(TrackingError::NotFound {
            what: format!("{} ({url})", err.message),
        });
    }
    Err(TrackingError::Server {
        url: url.to_string(),
        status,
        error_code: err.error_code,
        message: err.message,
    })
}

/// Parses a JSON body; anything that is not JSON (an HTML page) becomes `NotJson`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    url: &str,
    status: u16,
    ctype: &str,
    bytes: &[u8],
) -> Result<T> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{') | Some(b'[')) {
        let snippet: String = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into();
        return Err(TrackingError::NotJson {
            url: url.to_string(),
            status,
            content_type: ctype.to_string(),
            snippet,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| TrackingError::Corrupt {
        context: format!("MLflow's answer from {url}"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_split_off_the_url() {
        let (url, creds) = split_userinfo("https://bob:p%40ss@mlflow.example:5000/prefix");
        assert_eq!(url, "https://mlflow.example:5000/prefix");
        let creds = creds.unwrap();
        assert_eq!(creds.username, "bob");
        assert_eq!(creds.password.expose(), "p@ss");
        assert!(!format!("{creds:?}").contains("p@ss"));
        assert_eq!(
            split_userinfo("http://host:1/x"),
            ("http://host:1/x".to_string(), None)
        );
    }

    #[test]
    fn paths_and_values_are_escaped() {
        assert_eq!(
            enc_path("1/abc/artifacts/a b/c#.txt"),
            "1/abc/artifacts/a%20b/c%23.txt"
        );
        assert_eq!(enc("tags.x = 'y'"), "tags.x%20%3D%20%27y%27");
    }

    #[test]
    fn html_is_not_json() {
        let err = parse_json::<serde_json::Value>("http://h/x", 200, "text/html", b"<html>login")
            .unwrap_err();
        assert!(matches!(err, TrackingError::NotJson { status: 200, .. }));
        assert!(err.to_string().contains("<html>login"));
    }
}
