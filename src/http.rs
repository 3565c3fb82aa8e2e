//! The project's one HTTP client configuration (`reqwest`, blocking), used by the MLflow
//! client (`tracking`) and the recorder's Binance REST requests (`record`).
//!
//! A blocking client runs a tokio runtime on a thread of its own, and building or dropping one
//! inside an async runtime panics; none of our code runs inside one (the `postgres` crate's
//! runtime only drives its own futures).

use std::error::Error as _;
use std::time::Duration;

use reqwest::blocking::Client;

/// Pooled connections idle longer than this are closed (ureq's default, which this replaced):
/// long enough for the recorder's 10 s polls to reuse theirs. A request that finds its pooled
/// connection closed by the server is resent on a new one by the client itself.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// A client whose statuses are answers (callers decide what an error is): `timeout` until an
/// answer's head and again for reading its body, our user agent, native TLS (the stack of
/// PostgreSQL and the recorder's wss), HTTP/1.1. Proxies come only from the standard
/// variables (`HTTPS_PROXY`, `NO_PROXY`, ...), as with curl and MLflow's Python client.
pub fn client(timeout: Duration) -> reqwest::Result<Client> {
    Client::builder()
        .timeout(timeout)
        .user_agent(concat!("binance-ml/", env!("CARGO_PKG_VERSION")))
        .tls_backend_native()
        .pool_idle_timeout(POOL_IDLE)
        .build()
}

/// Whether the TLS layer failed (certificate, handshake): trying again will not help.
pub fn is_tls(e: &reqwest::Error) -> bool {
    causes(e).any(|c| c.is::<native_tls::Error>())
}

/// A transport error in one line without its URL (callers name it): what failed, then the
/// causes, e.g. `connection failed: client error (Connect): tcp connect error: Connection
/// refused (os error 111)`.
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timeout"
    } else if is_tls(e) {
        "TLS failed"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_builder() {
        "invalid request"
    } else if e.is_redirect() {
        "redirect failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    causes(e).fold(what.to_string(), |mut out, c| {
        out.push_str(": ");
        out.push_str(&c.to_string());
        out
    })
}

/// The chain of errors under `e`.
fn causes(e: &reqwest::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |&c| c.source())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn transport_errors_say_what_failed_without_the_url() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("http://{}/x", free.local_addr().unwrap());
        drop(free);
        let e = client(Duration::from_secs(5))
            .unwrap()
            .get(&refused)
            .send()
            .unwrap_err();
        let text = describe(&e);
        assert!(e.is_connect() && !is_tls(&e), "{e:?}");
        assert!(text.starts_with("connection failed: "), "{text}");
        assert!(!text.contains("127.0.0.1"), "{text}");

        // Accepted by the kernel, never answered.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = client(Duration::from_millis(300))
            .unwrap()
            .get(format!("http://{}/x", silent.local_addr().unwrap()))
            .send()
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(describe(&e).starts_with("timeout: "), "{}", describe(&e));
    }
}
