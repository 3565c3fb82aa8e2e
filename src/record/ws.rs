//! The stream's WebSocket client: `tungstenite` over a `std::net::TcpStream` (native-tls for
//! `wss://`), with the connect and read timeouts the recorder polls its shutdown with.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Largest message and frame accepted (Binance depth messages are a few KB).
const MAX_MESSAGE: usize = 16 << 20;

/// Why the stream could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// `record.ws_url` is not a usable `ws://` or `wss://` URL.
    #[error("not a ws:// or wss:// URL with a host: {0}")]
    Url(String),
    /// Name resolution, the TCP connection or a timeout.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the host.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {host}: {message}")]
    Tls {
        /// The server's host name.
        host: String,
        /// The TLS library's words.
        message: String,
    },
    /// The server answered the upgrade request with another HTTP status.
    #[error("upgrade refused: HTTP {status} {body}")]
    Refused {
        /// The status line's code and reason.
        status: String,
        /// The start of the response body, as far as it came with the head.
        body: String,
    },
    /// The WebSocket protocol: handshake, framing, message size, a dropped connection.
    #[error(transparent)]
    Protocol(tungstenite::Error),
}

impl From<tungstenite::Error> for WsError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().unwrap_or_default();
                let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                WsError::Refused {
                    status: response.status().to_string(),
                    body,
                }
            }
            e => WsError::Protocol(e),
        }
    }
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// No message within the read timeout; the connection stays usable (a partly read
    /// frame is kept for the next read).
    Idle,
    /// The server closed the connection (code, reason).
    Closed(Option<u16>, String),
}

/// A connected WebSocket client.
pub struct WsClient {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> WsError {
    move |source| WsError::Io {
        context: context.into(),
        source,
    }
}

fn timed_out(context: String) -> WsError {
    io_error(context)(io::ErrorKind::TimedOut.into())
}

impl WsClient {
    /// Connects to `ws://` or `wss://host[:port]/path` and performs the upgrade; the TCP
    /// connection, the TLS handshake, the upgrade and every read time out after `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, WsError> {
        let mut request = url
            .into_client_request()
            .map_err(|_| WsError::Url(url.to_owned()))?;
        request.headers_mut().insert(
            tungstenite::http::header::USER_AGENT,
            tungstenite::http::HeaderValue::from_static("binance-ml"),
        );
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(WsError::Url(url.to_owned())),
        };
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| WsError::Url(url.to_owned()))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let resolve_error = io_error(format!("cannot resolve {host}"));
        let addr = match (host.as_str(), port).to_socket_addrs() {
            Ok(mut addrs) => addrs.next().ok_or_else(|| {
                resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address"))
            })?,
            Err(e) => return Err(resolve_error(e)),
        };
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(io_error(format!("cannot connect to {host}:{port}")))?;
        // The read timeout makes `read` return `Idle`, so the recorder can sample its books
        // and check for shutdown while the stream is quiet.
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .and_then(|()| tcp.set_nodelay(true))
            .map_err(io_error(format!(
                "cannot set up the socket to {host}:{port}"
            )))?;
        // The TLS handshake is ours, not `client_tls_with_config`'s: that one panics when a
        // read timeout interrupts the handshake, which here is a plain timeout.
        let stream = if tls {
            let tls_error = |message: String| WsError::Tls {
                host: host.clone(),
                message,
            };
            let connector =
                native_tls::TlsConnector::new().map_err(|e| tls_error(e.to_string()))?;
            match connector.connect(&host, tcp) {
                Ok(s) => MaybeTlsStream::NativeTls(s),
                Err(native_tls::HandshakeError::Failure(e)) => {
                    return Err(tls_error(e.to_string()));
                }
                Err(native_tls::HandshakeError::WouldBlock(_)) => {
                    return Err(timed_out(format!("TLS handshake with {host}")));
                }
            }
        } else {
            MaybeTlsStream::Plain(tcp)
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        match tungstenite::client::client_with_config(request, stream, Some(config)) {
            Ok((socket, _response)) => Ok(Self { socket }),
            Err(HandshakeError::Failure(e)) => Err(e.into()),
            Err(HandshakeError::Interrupted(_)) => {
                Err(timed_out(format!("WebSocket upgrade with {host}")))
            }
        }
    }

    /// Reads the next message, answering pings on the way; `Idle` when none arrived
    /// within the read timeout.
    pub fn read(&mut self) -> Result<WsMessage, WsError> {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => return Ok(WsMessage::Text(text.as_str().to_owned())),
                Ok(Message::Binary(bytes)) => {
                    return String::from_utf8(bytes.to_vec())
                        .map(WsMessage::Text)
                        .map_err(|_| {
                            WsError::Protocol(tungstenite::Error::Utf8(
                                "binary message is not UTF-8".into(),
                            ))
                        });
                }
                Ok(Message::Close(frame)) => {
                    // Sends the queued close reply before the caller drops the connection.
                    let _ = self.socket.flush();
                    return Ok(match frame {
                        Some(f) => WsMessage::Closed(Some(f.code.into()), f.reason.to_string()),
                        None => WsMessage::Closed(None, String::new()),
                    });
                }
                // tungstenite queues the pong itself and writes it on the next read.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(WsMessage::Idle);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a close frame (normal closure) and drops the connection.
    pub fn close(mut self) {
        let _ = self.socket.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn pings_are_answered_a_quiet_stream_is_idle_and_a_close_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (resume, resumed) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut ws = tungstenite::accept(listener.accept().unwrap().0).unwrap();
            ws.send(Message::Ping("p".into())).unwrap();
            // Half of an unmasked text frame ("hello"); the rest after the client idled.
            ws.get_mut().write_all(&[0x81, 5, b'h', b'e']).unwrap();
            resumed.recv().unwrap();
            ws.get_mut().write_all(b"llo").unwrap();
            let pong = ws.read().unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "maintenance".into(),
            }))
            .unwrap();
            pong
        });
        let mut client = WsClient::connect(
            &format!("ws://127.0.0.1:{port}/stream?streams=a"),
            Duration::from_millis(200),
        )
        .unwrap();
        assert_eq!(client.read().unwrap(), WsMessage::Idle);
        resume.send(()).unwrap();
        assert_eq!(client.read().unwrap(), WsMessage::Text("hello".into()));
        assert_eq!(
            client.read().unwrap(),
            WsMessage::Closed(Some(1001), "maintenance".into())
        );
        assert_eq!(server.join().unwrap(), Message::Pong("p".into()));
    }

    #[test]
    fn a_refused_upgrade_and_a_bad_url_say_why() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut conn = listener.accept().unwrap().0;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let body = r#"{"code":-1100,"msg":"Invalid stream name"}"#;
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).unwrap();
        });
        let e = WsClient::connect(&format!("ws://127.0.0.1:{port}/ws"), Duration::from_secs(5))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            r#"upgrade refused: HTTP 400 Bad Request {"code":-1100,"msg":"Invalid stream name"}"#
        );
        let e = WsClient::connect("https://stream.binance.com", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(e, WsError::Url(_)), "{e}");
    }

    #[test]
    fn a_silent_server_times_out_the_tls_handshake_and_the_upgrade() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds both connections without a word.
        let held = std::thread::spawn(move || {
            (0..2)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        for (scheme, what) in [("wss", "TLS handshake"), ("ws", "WebSocket upgrade")] {
            let url = format!("{scheme}://127.0.0.1:{port}/ws");
            match WsClient::connect(&url, Duration::from_millis(200)) {
                Err(WsError::Io { context, source }) => {
                    assert_eq!(context, format!("{what} with 127.0.0.1"));
                    assert_eq!(source.kind(), io::ErrorKind::TimedOut);
                }
                other => panic!("{url}: {:?}", other.err()),
            }
        }
        drop(held.join().unwrap());
    }
}
