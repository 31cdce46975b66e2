//! Configuration: one TOML file, parsed with serde into `Raw*` types, then validated into an
//! immutable `Config` snapshot that workers read through `ArcSwap` (one `load` per batch of events: a
//! request routed in a batch keeps that snapshot until it ends, reload or not).
//! Every error names the file and line. Validation is all or nothing: a `Config` that exists
//! is one Apex can serve with; nothing in it is checked again on the hot path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::limits::{GROUP_SERVERS_CAP, HEAD_BYTES_CAP, HEAD_BYTES_FLOOR, HEADERS_CAP};

#[derive(Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 in the file means one per core, resolved here.
    pub workers: usize,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub log: LogConfig,
    /// Most specific first: exact hosts, then wildcards by suffix length, then `*`.
    pub sites: Vec<Site>,
    pub groups: Vec<Group>,
    /// Every distinct upstream address; groups refer to these by index, so passive health and
    /// pools belong to an address, whichever groups share it.
    pub servers: Vec<SocketAddr>,
    /// Per server (same index as `servers`): how to speak TLS to it, if the groups that list it
    /// ask for TLS (they must agree).
    pub server_tls: Vec<Option<Arc<crate::tls::UpstreamTls>>>,
    /// TLS listeners and their certificates (`[tls]`), if any.
    pub tls: Option<TlsListen>,
}

#[derive(Debug)]
pub struct TlsListen {
    pub listen: Vec<SocketAddr>,
    /// Plain listeners (from `listen`) whose requests all get a 308 to HTTPS.
    pub redirect_http: Vec<SocketAddr>,
    pub strict_sni: bool,
    /// Paths as given, made absolute against the config file's directory.
    pub certs: Vec<crate::tls::CertSpec>,
    /// Built once per load: the certificates are read when the config is, so a bad one is an
    /// error at start or on reload, never on a handshake.
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_head: Duration,
    pub client_idle: Duration,
    pub client_body: Duration,
    pub client_send: Duration,
    pub upstream_connect: Duration,
    pub upstream_head: Duration,
    pub upstream_body: Duration,
    pub upstream_idle: Duration,
    /// SIGTERM: how long in-flight requests may take to finish before Apex exits anyway.
    pub shutdown: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head_bytes: usize,
    pub headers: usize,
    pub body_bytes: u64,
    pub connections: usize,
    pub upstream_idle_per_server: usize,
    /// SO_SNDBUF for client sockets; 0 leaves the kernel's autotuning (up to tcp_wmem's max).
    pub client_send_buffer: usize,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: crate::log::Sink,
    pub format: crate::log::Format,
}

#[derive(Debug)]
pub struct Site {
    pub host: HostPattern,
    /// Longest path first.
    pub routes: Vec<Route>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host name.
    Exact(Box<[u8]>),
    /// Lower-case suffix with its leading dot: `*.example.com` -> `.example.com`.
    Suffix(Box<[u8]>),
    Any,
}

#[derive(Debug)]
pub struct Route {
    pub path: Box<[u8]>,
    pub group: usize,
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub servers: Vec<usize>,
    pub cooldown: Duration,
    /// TLS to these servers (`tls = true`), as written.
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
}

impl HostPattern {
    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.get(host.len() - s.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
            HostPattern::Any => true,
        }
    }
}

impl Config {
    /// The upstream group for a request: most specific host, then longest path prefix within
    /// that host's routes (as nginx picks a server block, then a location). `host` has no port.
    pub fn route(&self, host: &[u8], path: &[u8]) -> Option<usize> {
        let site = self.sites.iter().find(|s| s.host.matches(host))?;
        site.routes.iter().find(|r| path.starts_with(&r.path)).map(|r| r.group)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |span: Option<Range<usize>>, msg: String| ConfigError {
            file: file.to_string(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            msg,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        build(raw, base).map_err(|(span, msg)| err(span, msg))
    }
}

impl Config {
    /// The configuration as Apex will run it, every default filled in, as TOML that parses
    /// back to the same config (`apex --check` prints it).
    pub fn effective(&self) -> String {
        use std::fmt::Write as _;
        let d = |d: Duration| {
            let ms = d.as_millis();
            if ms.is_multiple_of(1000) { format!("\"{}s\"", ms / 1000) } else { format!("\"{ms}ms\"") }
        };
        let q = |s: &str| format!("{s:?}");
        let mut o = String::new();
        let listen: Vec<String> = self.listen.iter().map(|a| q(&a.to_string())).collect();
        let _ = writeln!(o, "listen = [{}]", listen.join(", "));
        let _ = writeln!(o, "workers = {}\n\n[timeouts]", self.workers);
        let t = &self.timeouts;
        for (k, v) in [
            ("client_head", t.client_head),
            ("client_idle", t.client_idle),
            ("client_body", t.client_body),
            ("client_send", t.client_send),
            ("upstream_connect", t.upstream_connect),
            ("upstream_head", t.upstream_head),
            ("upstream_body", t.upstream_body),
            ("upstream_idle", t.upstream_idle),
            ("shutdown", t.shutdown),
        ] {
            let _ = writeln!(o, "{k} = {}", d(v));
        }
        let l = &self.limits;
        let _ = writeln!(
            o,
            "\n[limits]\nhead_bytes = {}\nheaders = {}\nbody_bytes = {}\nconnections = {}\nupstream_idle_per_server = {}\nclient_send_buffer = {}",
            l.head_bytes, l.headers, l.body_bytes, l.connections, l.upstream_idle_per_server, l.client_send_buffer
        );
        let access = match &self.log.access {
            crate::log::Sink::Off => "off".to_string(),
            crate::log::Sink::Stdout => "stdout".to_string(),
            crate::log::Sink::File(p) => p.display().to_string(),
        };
        let format = match self.log.format {
            crate::log::Format::Combined => "combined",
            crate::log::Format::Json => "json",
        };
        let _ = writeln!(o, "\n[log]\naccess = {}\nformat = {}", q(&access), q(format));
        for site in &self.sites {
            let host = match &site.host {
                HostPattern::Exact(h) => String::from_utf8_lossy(h).into_owned(),
                HostPattern::Suffix(s) => format!("*{}", String::from_utf8_lossy(s)),
                HostPattern::Any => "*".to_string(),
            };
            for r in &site.routes {
                let group = self.groups.get(r.group).map_or("", |g| g.name.as_str());
                let _ = writeln!(
                    o,
                    "\n[[route]]\nhost = {}\npath = {}\nupstream = {}",
                    q(&host),
                    q(&String::from_utf8_lossy(&r.path)),
                    q(group)
                );
            }
        }
        for g in &self.groups {
            let servers: Vec<String> =
                g.servers.iter().filter_map(|&i| self.servers.get(i)).map(|a| q(&a.to_string())).collect();
            let _ = writeln!(
                o,
                "\n[upstream.{}]\nservers = [{}]\ncooldown = {}",
                q(&g.name),
                servers.join(", "),
                d(g.cooldown)
            );
            if let Some(t) = &g.tls {
                let _ = writeln!(o, "tls = true");
                if let Some(n) = &t.server_name {
                    let _ = writeln!(o, "tls_name = {}", q(n));
                }
                if let Some(c) = &t.ca {
                    let _ = writeln!(o, "tls_ca = {}", q(&c.display().to_string()));
                }
            }
        }
        if let Some(t) = &self.tls {
            let listen: Vec<String> = t.listen.iter().map(|a| q(&a.to_string())).collect();
            let redirect: Vec<String> = t.redirect_http.iter().map(|a| q(&a.to_string())).collect();
            let _ = writeln!(
                o,
                "\n[tls]\nlisten = [{}]\nredirect_http = [{}]\nstrict_sni = {}",
                listen.join(", "),
                redirect.join(", "),
                t.strict_sni
            );
            for c in &t.certs {
                let names: Vec<String> = c.names.iter().map(|n| q(n)).collect();
                let _ = writeln!(
                    o,
                    "\n[[tls.cert]]\nchain = {}\nkey = {}\nnames = [{}]",
                    q(&c.chain.display().to_string()),
                    q(&c.key.display().to_string()),
                    names.join(", ")
                );
            }
        }
        o
    }
}

/// A config problem, shown as `FILE:LINE: problem` (line 0: the file as a whole).
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().get(..offset).map_or(1, |b| b.iter().filter(|&&c| c == b'\n').count() + 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    workers: Option<Spanned<i64>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    upstream: BTreeMap<String, Spanned<RawGroup>>,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    redirect_http: Vec<Spanned<String>>,
    strict_sni: Option<bool>,
    #[serde(default)]
    cert: Vec<Spanned<RawCert>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    chain: String,
    key: String,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    client_head: Option<Spanned<String>>,
    client_idle: Option<Spanned<String>>,
    client_body: Option<Spanned<String>>,
    client_send: Option<Spanned<String>>,
    upstream_connect: Option<Spanned<String>>,
    upstream_head: Option<Spanned<String>>,
    upstream_body: Option<Spanned<String>>,
    upstream_idle: Option<Spanned<String>>,
    shutdown: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    head_bytes: Option<Spanned<toml::Value>>,
    headers: Option<Spanned<i64>>,
    body_bytes: Option<Spanned<toml::Value>>,
    connections: Option<Spanned<i64>>,
    upstream_idle_per_server: Option<Spanned<i64>>,
    client_send_buffer: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    upstream: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    servers: Spanned<Vec<Spanned<String>>>,
    cooldown: Option<Spanned<String>>,
    tls: Option<bool>,
    tls_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
}

type BuildError = (Option<Range<usize>>, String);

/// A group's `tls`, `tls_name` and `tls_ca`, checked (the CA file is read when the client
/// configs are built, in `server_tls`).
fn upstream_tls(
    name: &str,
    g: &Spanned<RawGroup>,
    base: &Path,
) -> Result<Option<crate::tls::UpstreamTlsSpec>, BuildError> {
    let r = g.get_ref();
    if r.tls != Some(true) {
        if let Some(x) = r.tls_name.as_ref().or(r.tls_ca.as_ref()) {
            return Err((at(x), format!("upstream {name:?}: tls_name and tls_ca need `tls = true`")));
        }
        return Ok(None);
    }
    let server_name = match &r.tls_name {
        Some(n) => {
            if rustls::pki_types::DnsName::try_from(n.get_ref().as_str()).is_err() {
                return Err((at(n), format!("upstream {name:?}: tls_name {:?} is not a DNS name", n.get_ref())));
            }
            Some(n.get_ref().to_ascii_lowercase())
        }
        None => None,
    };
    let ca = r.tls_ca.as_ref().map(|c| base.join(c.get_ref()));
    Ok(Some(crate::tls::UpstreamTlsSpec { server_name, ca }))
}

/// Per server: its TLS client config. A server listed by several groups must get the same TLS
/// settings from each (its pool is shared).
fn server_tls(
    raw: &BTreeMap<String, Spanned<RawGroup>>,
    groups: &[Group],
    servers: &[SocketAddr],
) -> Result<Vec<Option<Arc<crate::tls::UpstreamTls>>>, BuildError> {
    let mut out: Vec<Option<Arc<crate::tls::UpstreamTls>>> = vec![None; servers.len()];
    let mut owner: Vec<Option<usize>> = vec![None; servers.len()];
    let mut built: Vec<(crate::tls::UpstreamTlsSpec, Arc<rustls::ClientConfig>)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let span = raw.get(&g.name).map(|r| r.span());
        for &si in &g.servers {
            let (Some(addr), Some(slot), Some(first)) = (servers.get(si), out.get_mut(si), owner.get_mut(si)) else {
                continue;
            };
            if let Some(f) = *first {
                let other = groups.get(f);
                if other.map(|o| &o.tls) != Some(&g.tls) {
                    let other = other.map_or("", |o| o.name.as_str());
                    return Err((
                        span,
                        format!("upstream {:?}: {addr} is also in {other:?} with other TLS settings", g.name),
                    ));
                }
                continue;
            }
            *first = Some(gi);
            let Some(spec) = &g.tls else { continue };
            let client = match built.iter().find(|(s, _)| s == spec) {
                Some((_, c)) => Arc::clone(c),
                None => {
                    let c = crate::tls::client_config(spec.ca.as_deref())
                        .map_err(|e| (span.clone(), format!("upstream {:?}: {e}", g.name)))?;
                    built.push((spec.clone(), Arc::clone(&c)));
                    c
                }
            };
            *slot = Some(Arc::new(crate::tls::UpstreamTls::new(client, spec, *addr)));
        }
    }
    Ok(out)
}

fn build_tls(raw: Spanned<RawTls>, base: &Path, plain: &[SocketAddr]) -> Result<TlsListen, BuildError> {
    let span = at(&raw);
    let raw = raw.into_inner();
    if raw.listen.get_ref().is_empty() {
        return Err((at(&raw.listen), "tls.listen: give at least one address".into()));
    }
    let mut listen = Vec::new();
    for a in raw.listen.get_ref() {
        let addr = parse_addr(a, "tls.listen")?;
        if (listen.contains(&addr) || plain.contains(&addr)) && addr.port() != 0 {
            return Err((at(a), format!("tls.listen: {addr} is listed twice")));
        }
        listen.push(addr);
    }
    let mut redirect_http = Vec::new();
    for a in &raw.redirect_http {
        let addr = parse_addr(a, "tls.redirect_http")?;
        if !plain.contains(&addr) {
            return Err((at(a), format!("tls.redirect_http: {addr} is not one of the plain `listen` addresses")));
        }
        redirect_http.push(addr);
    }
    if raw.cert.is_empty() {
        return Err((span, "tls: give at least one [[tls.cert]] with `chain` and `key`".into()));
    }
    let certs: Vec<crate::tls::CertSpec> = raw
        .cert
        .iter()
        .map(|c| {
            let c = c.get_ref();
            crate::tls::CertSpec { chain: base.join(&c.chain), key: base.join(&c.key), names: c.names.clone() }
        })
        .collect();
    let strict_sni = raw.strict_sni.unwrap_or(false);
    let server = crate::tls::server_config(&certs, strict_sni)
        .map_err(|(i, msg)| (raw.cert.get(i).map(|c| c.span()).or(span), format!("tls.cert: {msg}")))?;
    Ok(TlsListen { listen, redirect_http, strict_sni, certs, server })
}

fn at<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

/// `250ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at_checked(digits)?;
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

/// An integer number of bytes, or a string with a unit: `512`, `"16KiB"`, `"1MiB"`, `"1GiB"`.
fn parse_size(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => {
            let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at_checked(digits)?;
            let n: u64 = num.parse().ok()?;
            let mul: u64 = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                _ => return None,
            };
            n.checked_mul(mul)
        }
        _ => None,
    }
}

fn duration(v: &Option<Spanned<String>>, name: &str, default_ms: u64, zero_ok: bool) -> Result<Duration, BuildError> {
    let Some(v) = v else {
        return Ok(Duration::from_millis(default_ms));
    };
    let d = parse_duration(v.get_ref()).ok_or_else(|| {
        (at(v), format!("{name}: bad duration {:?} (use e.g. \"250ms\", \"10s\", \"2m\")", v.get_ref()))
    })?;
    if d.is_zero() && !zero_ok {
        return Err((at(v), format!("{name}: a zero timeout would fire at once; give a positive duration")));
    }
    Ok(d)
}

fn int_in(v: &Option<Spanned<i64>>, name: &str, default: usize, min: usize, max: usize) -> Result<usize, BuildError> {
    let Some(v) = v else { return Ok(default) };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err((at(v), format!("{name}: must be between {min} and {max}"))),
    }
}

fn size_in(v: &Option<Spanned<toml::Value>>, name: &str, default: u64, min: u64, max: u64) -> Result<u64, BuildError> {
    let Some(v) = v else { return Ok(default) };
    match parse_size(v.get_ref()) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err((at(v), format!("{name}: must be between {min} and {max} bytes"))),
        None => Err((at(v), format!("{name}: bad size (use e.g. 16384, \"16KiB\", \"1MiB\", \"1GiB\")"))),
    }
}

fn parse_addr(s: &Spanned<String>, what: &str) -> Result<SocketAddr, BuildError> {
    s.get_ref().parse::<SocketAddr>().map_err(|_| {
        (
            at(s),
            format!("{what}: bad address {:?} (want IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")", s.get_ref()),
        )
    })
}

fn host_pattern(s: &Spanned<String>) -> Result<HostPattern, BuildError> {
    let h = s.get_ref().to_ascii_lowercase();
    if h == "*" {
        return Ok(HostPattern::Any);
    }
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.starts_with('.')
        && !name.ends_with('.');
    if !ok {
        return Err((at(s), format!("route host {:?}: want \"example.com\", \"*.example.com\" or \"*\"", s.get_ref())));
    }
    Ok(if wild {
        HostPattern::Suffix(format!(".{name}").into_bytes().into_boxed_slice())
    } else {
        HostPattern::Exact(name.as_bytes().into())
    })
}

fn build(raw: RawConfig, base: &Path) -> Result<Config, BuildError> {
    let Some(listen_raw) = raw.listen else {
        return Err((None, "missing `listen`: give at least one address, e.g. listen = [\"127.0.0.1:8080\"]".into()));
    };
    if listen_raw.get_ref().is_empty() {
        return Err((at(&listen_raw), "listen: give at least one address".into()));
    }
    let mut listen = Vec::new();
    for a in listen_raw.get_ref() {
        let addr = parse_addr(a, "listen")?;
        if listen.contains(&addr) && addr.port() != 0 {
            return Err((at(a), format!("listen: {addr} is listed twice")));
        }
        listen.push(addr);
    }
    let workers = match int_in(&raw.workers, "workers", 0, 0, 1024)? {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    let t = &raw.timeouts;
    let timeouts = Timeouts {
        client_head: duration(&t.client_head, "client_head", 10_000, false)?,
        client_idle: duration(&t.client_idle, "client_idle", 60_000, false)?,
        client_body: duration(&t.client_body, "client_body", 30_000, false)?,
        client_send: duration(&t.client_send, "client_send", 30_000, false)?,
        upstream_connect: duration(&t.upstream_connect, "upstream_connect", 5_000, false)?,
        upstream_head: duration(&t.upstream_head, "upstream_head", 60_000, false)?,
        upstream_body: duration(&t.upstream_body, "upstream_body", 60_000, false)?,
        upstream_idle: duration(&t.upstream_idle, "upstream_idle", 4_000, false)?,
        shutdown: duration(&t.shutdown, "shutdown", 30_000, false)?,
    };

    let l = &raw.limits;
    let limits = Limits {
        head_bytes: size_in(
            &l.head_bytes,
            "head_bytes",
            HEAD_BYTES_CAP as u64,
            HEAD_BYTES_FLOOR as u64,
            HEAD_BYTES_CAP as u64,
        )? as usize,
        headers: int_in(&l.headers, "headers", 100, 1, HEADERS_CAP)?,
        body_bytes: size_in(&l.body_bytes, "body_bytes", 1 << 30, 0, u64::MAX)?,
        connections: int_in(&l.connections, "connections", 10_000, 1, 1_000_000)?,
        upstream_idle_per_server: int_in(&l.upstream_idle_per_server, "upstream_idle_per_server", 1024, 0, 100_000)?,
        client_send_buffer: size_in(&l.client_send_buffer, "client_send_buffer", 0, 0, 64 << 20)? as usize,
    };

    let log = LogConfig {
        access: match &raw.log.access {
            None => crate::log::Sink::Stdout,
            Some(a) if a.get_ref().is_empty() => {
                return Err((at(a), "log access: give \"stdout\", \"off\" or a file path".into()));
            }
            Some(a) => crate::log::parse_sink(a.get_ref()),
        },
        format: match raw.log.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "combined")) => crate::log::Format::Combined,
            Some((_, "json")) => crate::log::Format::Json,
            Some((f, other)) => return Err((at(f), format!("log format {other:?}: want \"combined\" or \"json\""))),
        },
    };

    let mut servers: Vec<SocketAddr> = Vec::new();
    let mut groups = Vec::new();
    let mut group_index = BTreeMap::new();
    for (name, g) in &raw.upstream {
        let list = &g.get_ref().servers;
        if list.get_ref().is_empty() {
            return Err((at(list), format!("upstream {name:?}: empty group; give at least one server")));
        }
        if list.get_ref().len() > GROUP_SERVERS_CAP {
            return Err((at(list), format!("upstream {name:?}: at most {GROUP_SERVERS_CAP} servers")));
        }
        let mut members = Vec::new();
        for s in list.get_ref() {
            let addr = parse_addr(s, &format!("upstream {name:?}"))?;
            let idx = match servers.iter().position(|a| *a == addr) {
                Some(i) => i,
                None => {
                    servers.push(addr);
                    servers.len() - 1
                }
            };
            if members.contains(&idx) {
                return Err((at(s), format!("upstream {name:?}: {addr} is listed twice")));
            }
            members.push(idx);
        }
        let cooldown = duration(&g.get_ref().cooldown, "cooldown", 10_000, true)?;
        let tls = upstream_tls(name, g, base)?;
        group_index.insert(name.clone(), groups.len());
        groups.push(Group { name: name.clone(), servers: members, cooldown, tls });
    }

    if raw.route.is_empty() {
        return Err((None, "no [[route]]: every request would get 404; add at least one route".into()));
    }
    let mut sites: Vec<Site> = Vec::new();
    for r in &raw.route {
        let host = match &r.host {
            Some(h) => host_pattern(h)?,
            None => HostPattern::Any,
        };
        let path: Box<[u8]> = match &r.path {
            Some(p) if p.get_ref().starts_with('/') && p.get_ref().bytes().all(|b| (b'!'..=b'~').contains(&b)) => {
                p.get_ref().as_bytes().into()
            }
            Some(p) => {
                return Err((at(p), format!("route path {:?}: must start with '/' and be visible ASCII", p.get_ref())));
            }
            None => b"/"[..].into(),
        };
        let Some(&group) = group_index.get(r.upstream.get_ref()) else {
            return Err((at(&r.upstream), format!("route to unknown upstream group {:?}", r.upstream.get_ref())));
        };
        let site = match sites.iter_mut().position(|s| s.host == host) {
            Some(i) => sites.get_mut(i),
            None => {
                sites.push(Site { host, routes: Vec::new() });
                sites.last_mut()
            }
        };
        let Some(site) = site else {
            return Err((None, "internal: site table".into()));
        };
        if site.routes.iter().any(|x| x.path == path) {
            return Err((at(&r.upstream), "duplicate route: this host and path are already routed".to_string()));
        }
        site.routes.push(Route { path, group });
    }
    for s in &mut sites {
        s.routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    }
    sites.sort_by_key(|s| match &s.host {
        HostPattern::Exact(_) => (0, 0),
        HostPattern::Suffix(x) => (1, usize::MAX - x.len()),
        HostPattern::Any => (2, 0),
    });

    let tls = match raw.tls {
        Some(t) => Some(build_tls(t, base, &listen)?),
        None => None,
    };
    let server_tls = server_tls(&raw.upstream, &groups, &servers)?;
    Ok(Config { listen, workers, timeouts, limits, log, sites, groups, servers, server_tls, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../apex.toml");
        let c = Config::parse(text, "apex.toml").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.timeouts.upstream_idle, Duration::from_secs(4));
        assert_eq!(c.route(b"anything", b"/x"), Some(0));
    }

    #[test]
    fn errors_name_file_and_line() {
        assert!(err(&format!("{BASE}bogus = 1\n")).starts_with("t.toml:6: "), "{}", err(&format!("{BASE}bogus = 1\n")));
        assert!(err("listen = [\"nope\"]\n").starts_with("t.toml:1: listen: bad address"));
        let e = err(&format!("{BASE}[timeouts]\nclient_head = \"0s\"\n"));
        assert!(e.starts_with("t.toml:7: client_head: a zero timeout"), "{e}");
        let e = err(&format!("{BASE}[[route]]\nupstream = \"app\"\n"));
        assert!(e.starts_with("t.toml:7: duplicate route"), "{e}");
        let e = err(&format!("{BASE}[[route]]\npath = \"/x\"\nupstream = \"nope\"\n"));
        assert!(e.starts_with("t.toml:8: route to unknown upstream group"), "{e}");
        let e = err("listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = []\n");
        assert!(e.starts_with("t.toml:5: upstream \"app\": empty group"), "{e}");
        let e = err("listen = [\"127.0.0.1:0\"\n");
        assert!(e.starts_with("t.toml:"), "{e}");
    }

    #[test]
    fn routing_specificity() {
        let text = "listen = [\"127.0.0.1:0\"]\n\
            [[route]]\nupstream = \"any\"\n\
            [[route]]\nhost = \"*.example.com\"\nupstream = \"wild\"\n\
            [[route]]\nhost = \"*.api.example.com\"\nupstream = \"wild2\"\n\
            [[route]]\nhost = \"Example.com\"\nupstream = \"exact\"\n\
            [[route]]\nhost = \"example.com\"\npath = \"/api\"\nupstream = \"api\"\n\
            [upstream.any]\nservers = [\"127.0.0.1:1\"]\n[upstream.wild]\nservers = [\"127.0.0.1:2\"]\n\
            [upstream.wild2]\nservers = [\"127.0.0.1:3\"]\n[upstream.exact]\nservers = [\"127.0.0.1:4\"]\n\
            [upstream.api]\nservers = [\"127.0.0.1:4\"]\n";
        let c = Config::parse(text, "t").unwrap();
        let name = |h: &[u8], p: &[u8]| c.route(h, p).map(|g| c.groups[g].name.as_str());
        assert_eq!(name(b"other", b"/"), Some("any"));
        assert_eq!(name(b"a.example.com", b"/"), Some("wild"));
        assert_eq!(name(b"x.api.example.com", b"/"), Some("wild2"));
        assert_eq!(name(b"EXAMPLE.COM", b"/x"), Some("exact"));
        assert_eq!(name(b"example.com", b"/api/v1"), Some("api"));
        assert_eq!(c.servers.len(), 4, "shared addresses are one server");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::parse(include_str!("../apex.toml"), "apex.toml").unwrap();
        let text = c.effective();
        let again = Config::parse(&text, "effective").unwrap();
        assert_eq!(again.effective(), text);
        assert!(text.contains("client_head = \"10s\"\n"), "{text}");
        assert!(text.contains("[upstream.\"app\"]\nservers = [\"127.0.0.1:9000\"]"), "{text}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 s"), None);
        assert_eq!(parse_size(&toml::Value::String("16KiB".into())), Some(16384));
        assert_eq!(parse_size(&toml::Value::Integer(-1)), None);
    }
}
