//! A small blocking ACME client (RFC 8555): one TLS connection per request over std's
//! TcpStream and rustls's buffered API (this is the ACME thread, not a worker), requests signed
//! as JWS with ES256 (RFC 7518 §3.4) by ring, JSON by serde_json.
//!
//! Limits: responses up to `RESP_BYTES_MAX`; every socket operation has a timeout; `badNonce`
//! is retried with the nonce the error carries (§6.5), at most `NONCE_RETRIES` times.
//! `parse_response` is the parser of the CA's bytes; it never panics (fuzz/fuzz_targets/acme_response.rs).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::b64url;
use crate::log::{Level, say};

const RESP_BYTES_MAX: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const NONCE_RETRIES: usize = 10;

/// A failed step: what to log, and how long the CA asked us to wait (`Retry-After`).
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub retry_after: Option<Duration>,
    /// The problem document's type (RFC 8555 §6.7), if the CA sent one.
    pub problem: Option<String>,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Failure {
        Failure { msg: msg.into(), retry_after: None, problem: None }
    }
}

/// A response from the CA.
#[derive(Debug, Default)]
pub struct Resp {
    pub status: u16,
    pub location: Option<String>,
    pub nonce: Option<String>,
    /// Seconds (RFC 9110 §10.2.3; an HTTP date is read as no value).
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::new(format!("the CA sent JSON we cannot read (HTTP {}): {e}", self.status)))
    }
}

/// Parses one whole HTTP/1.1 response read until the connection closed: the head, then a body
/// framed by chunked, Content-Length, or the close (RFC 9112 §6.3).
pub fn parse_response(raw: &[u8]) -> Result<Resp, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut r = httparse::Response::new(&mut headers);
    let end = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the response head is cut short"),
        Err(_) => return Err("the response head is malformed"),
    };
    let mut out = Resp { status: r.code.unwrap_or(0), ..Resp::default() };
    let (mut chunked, mut length) = (false, None);
    for h in r.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("location") {
            out.location = Some(v.to_string());
        } else if h.name.eq_ignore_ascii_case("replay-nonce") {
            out.nonce = Some(v.to_string());
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            out.retry_after = v.parse().ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    let body = raw.get(end..).unwrap_or(&[]);
    out.body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n).ok_or("the body is shorter than its Content-Length")?.to_vec()
    } else {
        body.to_vec()
    };
    Ok(out)
}

/// RFC 9112 §7.1: chunks up to the last one; extensions and trailers skipped.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        let eol = memchr::memmem::find(b, b"\r\n").ok_or("a chunk size line is cut short")?;
        let line = b.get(..eol).unwrap_or(&[]);
        let hex = line.split(|&c| c == b';').next().unwrap_or(&[]);
        let hex = std::str::from_utf8(hex).map_err(|_| "bad chunk size")?.trim();
        let n = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        b = b.get(eol + 2..).unwrap_or(&[]);
        if n == 0 {
            return Ok(out);
        }
        if out.len().saturating_add(n) > RESP_BYTES_MAX {
            return Err("the body is too large");
        }
        out.extend_from_slice(b.get(..n).ok_or("a chunk is cut short")?);
        b = b.get(n..).and_then(|r| r.strip_prefix(b"\r\n")).ok_or("a chunk does not end in CRLF")?;
    }
}

/// A problem document (RFC 7807, RFC 8555 §6.7) as one log line, its subproblems included.
pub fn problem_text(status: u16, body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return format!("HTTP {status} (no problem document)");
    };
    let one = |p: &Value| {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("?");
        let detail = p.get("detail").and_then(Value::as_str).unwrap_or("");
        let who = p.get("identifier").and_then(|i| i.get("value")).and_then(Value::as_str);
        match who {
            Some(w) => format!("{w}: {ty}: {detail}"),
            None => format!("{ty}: {detail}"),
        }
    };
    let mut s = format!("HTTP {status}: {}", one(&v));
    if let Some(subs) = v.get("subproblems").and_then(Value::as_array) {
        for p in subs {
            s.push_str("; ");
            s.push_str(&one(p));
        }
    }
    s
}

/// Blocking HTTPS to the CA.
pub struct Https {
    tls: Arc<rustls::ClientConfig>,
}

impl Https {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Https {
        Https { tls }
    }

    /// One request on a new connection (`Connection: close`).
    pub fn send(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<Resp, Failure> {
        let (host, port, path) =
            super::split_url(url).ok_or_else(|| Failure::new(format!("bad URL from the CA: {url:?}")))?;
        let fail = |e: &dyn std::fmt::Display| Failure::new(format!("{method} {url}: {e}"));
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| fail(&e))?
            .next()
            .ok_or_else(|| fail(&"the name has no address"))?;
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| fail(&e))?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| fail(&e))?;
        sock.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| fail(&e))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| fail(&e))?;
        let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), name).map_err(|e| fail(&e))?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        // RFC 9110 §7.2: the port too, unless it is the default; the CA builds its URLs from it.
        let host_port = if port == 443 { host.to_string() } else { format!("{host}:{port}") };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: apex-acme/0.1\r\nConnection: close\r\n"
        );
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/jose+json\r\nContent-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).map_err(|e| fail(&e))?;
        if let Some(b) = body {
            s.write_all(b).map_err(|e| fail(&e))?;
        }
        s.flush().map_err(|e| fail(&e))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                // A server that closes without close_notify: what came is all there is.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(fail(&e)),
            }
            if raw.len() > RESP_BYTES_MAX {
                return Err(fail(&"the response is too large"));
            }
            if method == "HEAD" && memchr::memmem::find(&raw, b"\r\n\r\n").is_some() {
                break;
            }
        }
        let mut resp = parse_response(&raw).map_err(|e| fail(&e))?;
        if method == "HEAD" {
            resp.body.clear();
        }
        Ok(resp)
    }
}

/// The CA's directory (RFC 8555 §7.1.1).
pub struct Directory {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    /// RFC 9773 §3: where renewal information is, if the CA gives it.
    pub renewal_info: Option<String>,
}

impl Directory {
    /// GET the directory (§7.1.1: no signature). A refusal keeps the CA's Retry-After (§6.6).
    pub fn get(http: &Https, url: &str) -> Result<Directory, Failure> {
        let resp = http.send("GET", url, None)?;
        if resp.status != 200 {
            return Err(Failure {
                msg: format!("directory {url}: {}", problem_text(resp.status, &resp.body)),
                retry_after: resp.retry_after.map(Duration::from_secs),
                problem: None,
            });
        }
        let d = resp.json()?;
        let get = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        let need = |k: &str| get(k).ok_or_else(|| Failure::new(format!("directory {url}: no {k:?} in it")));
        Ok(Directory {
            new_nonce: need("newNonce")?,
            new_account: need("newAccount")?,
            new_order: need("newOrder")?,
            renewal_info: get("renewalInfo"),
        })
    }
}

/// An account session: the key, its JWK and thumbprint, the next nonce, the account URL.
pub struct Session {
    http: Https,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jwk: Value,
    /// RFC 7638 thumbprint of the JWK, base64url: the second half of every key authorization.
    pub thumbprint: String,
    pub dir: Directory,
    nonce: Option<String>,
    kid: Option<String>,
}

impl Session {
    /// Reads the directory. `pkcs8`: the account key (state.rs keeps it).
    pub fn open(http: Https, directory: &str, pkcs8: &[u8]) -> Result<Session, Failure> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| Failure::new("the account key is not a P-256 PKCS#8 key"))?;
        // SEC 1 uncompressed point: 0x04, X (32 bytes), Y (32 bytes).
        let point = key.public_key().as_ref();
        let (x, y) = (point.get(1..33).unwrap_or(&[]), point.get(33..65).unwrap_or(&[]));
        let (x, y) = (b64url(x), b64url(y));
        // RFC 7638 §3: the required members, in lexicographic order, no whitespace.
        let canon = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = b64url(ring::digest::digest(&ring::digest::SHA256, canon.as_bytes()).as_ref());
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
        let dir = Directory::get(&http, directory)?;
        Ok(Session { http, key, rng, jwk, thumbprint, dir, nonce: None, kid: None })
    }

    /// `newAccount` (§7.3): creates the account, or finds the one this key already has.
    pub fn account(&mut self, email: Option<&str>) -> Result<(), Failure> {
        let payload = match email {
            Some(e) => json!({"termsOfServiceAgreed": true, "contact": [format!("mailto:{e}")]}),
            None => json!({"termsOfServiceAgreed": true}),
        };
        let url = self.dir.new_account.clone();
        let resp = self.post(&url, Some(&payload))?;
        if !(resp.status == 200 || resp.status == 201) {
            return Err(Failure::new(format!("newAccount: {}", problem_text(resp.status, &resp.body))));
        }
        self.kid = Some(resp.location.ok_or_else(|| Failure::new("newAccount: no account URL (Location)"))?);
        Ok(())
    }

    /// A POST signed with the account key (§6.2); `None` is POST-as-GET (§6.3). A `badNonce`
    /// is retried with the nonce it carried (§6.5); any other problem is a `Failure` with the
    /// CA's problem document and its Retry-After.
    pub fn post(&mut self, url: &str, payload: Option<&Value>) -> Result<Resp, Failure> {
        for _ in 0..NONCE_RETRIES {
            let nonce = match self.nonce.take() {
                Some(n) => n,
                None => self.fresh_nonce()?,
            };
            // RFC 8555 §6.2: "jwk" only for newAccount, "kid" (the account URL) after it.
            let protected = match &self.kid {
                Some(kid) => json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url}),
                None => json!({"alg": "ES256", "jwk": self.jwk, "nonce": nonce, "url": url}),
            };
            let protected = b64url(protected.to_string().as_bytes());
            let payload = payload.map_or(String::new(), |p| b64url(p.to_string().as_bytes()));
            let signing_input = format!("{protected}.{payload}");
            let sig = self
                .key
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| Failure::new("cannot sign with the account key"))?;
            let body = json!({"protected": protected, "payload": payload, "signature": b64url(sig.as_ref())});
            let resp = self.http.send("POST", url, Some(body.to_string().as_bytes()))?;
            self.nonce.clone_from(&resp.nonce);
            if resp.status < 400 {
                return Ok(resp);
            }
            let ty = serde_json::from_slice::<Value>(&resp.body)
                .ok()
                .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string));
            if ty.as_deref() == Some("urn:ietf:params:acme:error:badNonce") {
                say(Level::Debug, format_args!("acme: POST {url}: badNonce; again with the nonce it carried"));
                continue;
            }
            return Err(Failure {
                msg: format!("POST {url}: {}", problem_text(resp.status, &resp.body)),
                retry_after: resp.retry_after.map(Duration::from_secs),
                problem: ty,
            });
        }
        Err(Failure::new(format!("POST {url}: the CA refused {NONCE_RETRIES} nonces in a row (badNonce)")))
    }

    fn fresh_nonce(&mut self) -> Result<String, Failure> {
        let url = self.dir.new_nonce.clone();
        let resp = self.http.send("HEAD", &url, None)?;
        resp.nonce.ok_or_else(|| Failure::new(format!("newNonce {url}: no Replay-Nonce (HTTP {})", resp.status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_by_their_framing() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nReplay-Nonce: abc\r\nLocation: https://ca/acct/1\r\nContent-Length: 2\r\n\r\n{}junk").unwrap();
        assert_eq!((r.status, r.nonce.as_deref(), r.body.as_slice()), (201, Some("abc"), &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n2\r\n{}\r\n1;x=y\r\n \r\n0\r\n\r\n").unwrap();
        assert_eq!((r.body.as_slice(), r.retry_after), (&b"{} "[..], Some(3)));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn problems_read_as_one_line() {
        let p = br#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no","subproblems":[{"type":"urn:ietf:params:acme:error:dns","detail":"NXDOMAIN","identifier":{"type":"dns","value":"a.test"}}]}"#;
        assert_eq!(
            problem_text(400, p),
            "HTTP 400: urn:ietf:params:acme:error:rejectedIdentifier: no; a.test: urn:ietf:params:acme:error:dns: NXDOMAIN"
        );
        assert_eq!(problem_text(502, b"<html>"), "HTTP 502 (no problem document)");
    }
}
