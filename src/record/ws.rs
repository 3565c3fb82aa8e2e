//! A minimal RFC 6455 WebSocket client over `std::net::TcpStream` (native-tls for `wss://`):
//! the HTTP upgrade with `Sec-WebSocket-Accept` check, masked client frames, text,
//! continuation, ping/pong and close. No crate for it is available offline, and Binance's
//! market streams need nothing more. The frame codec is public so test servers reuse it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;

/// Opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// UTF-8 text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message accepted (Binance depth messages are a few KB).
const MAX_MESSAGE: usize = 16 << 20;

/// SHA-1 (RFC 3174), only for the handshake's accept key.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha1(format!("{key}{GUID}").as_bytes()))
}

/// Non-cryptographic randomness for keys and masks (masking only defeats proxy cache
/// poisoning; it is not a secret), seeded from the clock, the process and a counter.
fn random_bytes<const N: usize>() -> [u8; N] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut out = [0u8; N];
    for b in &mut out {
        // splitmix64 step
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *b = (z ^ (z >> 31)) as u8;
    }
    out
}

/// Writes one frame (FIN set); `mask` is required from clients and absent from servers.
pub fn write_frame(
    w: &mut dyn Write,
    op: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(14);
    head.push(0x80 | op);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => head.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            head.push(mask_bit | 126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(mask_bit | 127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(m) = mask {
        head.extend_from_slice(&m);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    head.extend_from_slice(&body);
    w.write_all(&head)?;
    w.flush()
}

/// One frame as read: `(fin, opcode, unmasked payload)`.
pub fn read_frame(r: &mut dyn Read) -> io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let fin = h[0] & 0x80 != 0;
    let op = h[0] & 0x0F;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"),
        ));
    }
    let mask = if masked {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok((fin, op, payload))
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connected WebSocket client.
pub struct WsClient {
    stream: BufReader<Box<dyn Stream>>,
    tcp: TcpStream,
    partial: Vec<u8>,
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A (reassembled) text message.
    Text(String),
    /// The server closed the connection (code, reason).
    Closed(Option<u16>, String),
}

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

impl WsClient {
    /// Connects to `ws://` or `wss://host[:port]/path` and performs the upgrade; reads time
    /// out after `timeout` (a timeout surfaces as `ErrorKind::WouldBlock`/`TimedOut`).
    pub fn connect(url: &str, timeout: Duration) -> io::Result<Self> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(invalid(format!("not a ws:// or wss:// URL: {url}")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| invalid(format!("bad port in {url}")))?,
            ),
            None => (authority, if tls { 443 } else { 80 }),
        };
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("cannot resolve {host}")))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = if tls {
            let connector = native_tls::TlsConnector::new().map_err(io::Error::other)?;
            Box::new(
                connector
                    .connect(host, tcp.try_clone()?)
                    .map_err(|e| io::Error::other(format!("TLS handshake with {host}: {e}")))?,
            )
        } else {
            Box::new(tcp.try_clone()?)
        };
        let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>());
        let mut stream = BufReader::new(stream);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: binance-ml\r\n\r\n"
        );
        stream.get_mut().write_all(request.as_bytes())?;
        stream.get_mut().flush()?;
        let mut status = String::new();
        stream.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 101") {
            return Err(invalid(format!("upgrade refused: {}", status.trim())));
        }
        let mut accept = None;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line)? == 0 {
                return Err(invalid("connection closed during the handshake"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("sec-websocket-accept")
            {
                accept = Some(value.trim().to_owned());
            }
        }
        if accept.as_deref() != Some(accept_key(&key).as_str()) {
            return Err(invalid("server answered with a wrong Sec-WebSocket-Accept"));
        }
        Ok(Self {
            stream,
            tcp,
            partial: Vec::new(),
        })
    }

    fn send(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        write_frame(
            self.stream.get_mut(),
            op,
            payload,
            Some(random_bytes::<4>()),
        )
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(opcode::TEXT, text.as_bytes())
    }

    /// Reads the next text message, answering pings on the way. A read timeout is an
    /// `Err` with kind `WouldBlock` or `TimedOut` (the connection stays usable only if it
    /// struck between frames, so callers treat it as "no message yet" and check liveness).
    pub fn read(&mut self) -> io::Result<WsMessage> {
        loop {
            let (fin, op, payload) = read_frame(&mut self.stream)?;
            match op {
                opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {
                    if self.partial.len() + payload.len() > MAX_MESSAGE {
                        return Err(invalid("message too large"));
                    }
                    self.partial.extend_from_slice(&payload);
                    if fin {
                        let bytes = std::mem::take(&mut self.partial);
                        return String::from_utf8(bytes)
                            .map(WsMessage::Text)
                            .map_err(|_| invalid("text frame is not UTF-8"));
                    }
                }
                opcode::PING => self.send(opcode::PONG, &payload)?,
                opcode::PONG => {}
                opcode::CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                    let _ = self.send(opcode::CLOSE, payload.get(..2).unwrap_or(&[]));
                    return Ok(WsMessage::Closed(code, reason));
                }
                other => return Err(invalid(format!("unknown opcode {other:#x}"))),
            }
        }
    }

    /// Sends a close frame (normal closure) and shuts the socket.
    pub fn close(mut self) {
        let _ = self.send(opcode::CLOSE, &1000u16.to_be_bytes());
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_accept_key_match_the_rfc() {
        let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_masked_and_long() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = Vec::new();
            write_frame(&mut buf, opcode::TEXT, &payload, Some([1, 2, 3, 4])).unwrap();
            let (fin, op, back) = read_frame(&mut buf.as_slice()).unwrap();
            assert!(fin);
            assert_eq!(op, opcode::TEXT);
            assert_eq!(back, payload);
        }
    }
}
