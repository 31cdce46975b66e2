//! Configuration: one TOML file, parsed with serde into `Raw*` types, then validated into an
//! immutable `Config` snapshot that workers read through `ArcSwap` (one `load` per batch of events: a
//! request routed in a batch keeps that snapshot until it ends, reload or not).
//! `build.rs` holds the `Raw*` types and the validation; this file the snapshot and its API.
//! Every error names the file and line. Validation is all or nothing: a `Config` that exists
//! is one Apex can serve with; nothing in it is checked again on the hot path.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::{Balance, HashOn, Maglev};
use crate::health::{Check, Expect, Health};

mod build;

pub use build::parse_duration;

/// `limits.connections = 0` (the default): this many per worker, or fewer if the open-file
/// limit allows fewer.
pub const CONNECTIONS_AUTO_MAX: usize = 10_000;
use build::{RawConfig, build};

#[derive(Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 in the file means one per core, resolved here.
    pub workers: usize,
    /// How often upstream names are resolved again (resolve.rs).
    pub resolve_every: Duration,
    /// Each distinct upstream name (`app:8080`) and the addresses it resolved to, sorted.
    pub names: Vec<(String, Vec<SocketAddr>)>,
    /// The text and file name this was parsed from: names are resolved again from it, so that
    /// a change on disk without a SIGHUP is never applied by the resolver.
    pub source: Option<(Arc<str>, String)>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// The global values of what a route may override (`PerRequest`).
    pub per: PerRequest,
    /// The largest `body_bytes` of any route or the global one: a Content-Length above it is
    /// refused before routing.
    pub body_bytes_max: u64,
    pub log: LogConfig,
    /// Most specific first: exact hosts, then wildcards by suffix length, then `*`.
    pub sites: Vec<Site>,
    /// The routes' rules (`Route::rules` indexes this).
    pub rules: Vec<crate::rules::Rules>,
    pub groups: Vec<Group>,
    /// Every distinct upstream address; groups refer to these by index, so passive health and
    /// pools belong to an address, whichever groups share it.
    pub servers: Vec<SocketAddr>,
    /// Per server (same index as `servers`): how to speak TLS to it, if the groups that list it
    /// ask for TLS (they must agree).
    pub server_tls: Vec<Option<Arc<crate::tls::UpstreamTls>>>,
    /// Per server (same index as `servers`): its health, shared by every worker and carried
    /// over by a reload for the addresses that stay (`keep_health`).
    pub health: Vec<Arc<Health>>,
    /// TLS listeners and their certificates (`[tls]`), if any.
    pub tls: Option<TlsListen>,
    /// Per server (same index as `servers`): its metrics slot (`metrics::Labels::assign`;
    /// the index, capped, until then).
    pub server_slots: Vec<usize>,
    /// `[admin] listen`: the address of /metrics, /status and /healthz, if any.
    pub admin: Option<SocketAddr>,
    /// `[proxy_protocol]`: listeners whose peers announce the real client first, if any.
    pub proxy: Option<ProxyProtocol>,
    /// `trusted_proxies`: peers (after any PROXY header) whose X-Forwarded-For names the client
    /// (`h1::forwarded`). Empty: nobody's is believed.
    pub trusted_proxies: Box<[crate::cidr::Cidr]>,
    /// `forwarded_for`: what X-Forwarded-For goes upstream.
    pub forwarded_for: ForwardedFor,
}

/// The X-Forwarded-For Apex sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFor {
    /// The client address Apex decided on, alone: an incoming list is dropped, so a client
    /// cannot forge its address to the backend (the default).
    Replace,
    /// The incoming list (several lines joined), then the peer's address: the classic chain,
    /// for backends that walk it themselves against their own trusted proxies.
    Append,
}

/// Which listeners expect a PROXY protocol header, and from whom. On such a listener a peer in
/// `trusted` must send one (v1 or v2) before anything else; any other peer is refused at accept.
/// Nothing is guessed: a header on another listener is just bytes (a 400 for HTTP).
#[derive(Debug)]
pub struct ProxyProtocol {
    /// As configured (matched against `listen` / `tls.listen` entries, port 0 included).
    pub listeners: Vec<SocketAddr>,
    pub trusted: Vec<crate::cidr::Cidr>,
}

#[derive(Debug)]
pub struct TlsListen {
    pub listen: Vec<SocketAddr>,
    /// Plain listeners (from `listen`) whose requests all get a 308 to HTTPS.
    pub redirect_http: Vec<SocketAddr>,
    pub strict_sni: bool,
    /// Key exchange groups (`groups`); empty: `tls::kx::DEFAULT`.
    pub groups: Vec<rustls::NamedGroup>,
    /// Paths as given, made absolute against the config file's directory.
    pub certs: Vec<crate::tls::CertSpec>,
    /// Built once per load: the certificates are read when the config is, so a bad one is an
    /// error at start or on reload, never on a handshake.
    pub server: std::sync::Arc<rustls::ServerConfig>,
    /// Per certificate (same index as `certs`): its leaf's notAfter, Unix seconds.
    pub expiry: Vec<Option<i64>>,
    /// `[tls.acme]`: names whose certificates an ACME CA issues (`acme/`), if any.
    pub acme: Option<crate::acme::AcmeSpec>,
}

/// A configured timeout in nanoseconds: the unit deadlines are armed in (`Cx::arm`), so that
/// arming one, about seven times a request, is an add and not a conversion (issue #21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(u64);

impl Timeout {
    pub const fn from_millis(ms: u64) -> Timeout {
        Timeout(ms.saturating_mul(1_000_000))
    }

    /// Saturating, as `conn::nanos` is.
    pub fn from_duration(d: Duration) -> Timeout {
        Timeout(crate::conn::nanos(d))
    }

    #[inline]
    pub const fn nanos(self) -> u64 {
        self.0
    }

    pub const fn duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client_head: Timeout,
    pub client_idle: Timeout,
    pub client_body: Timeout,
    pub client_send: Timeout,
    pub upstream_connect: Timeout,
    pub upstream_head: Timeout,
    pub upstream_body: Timeout,
    pub upstream_idle: Timeout,
    /// SIGTERM: how long in-flight requests may take to finish before Apex exits anyway.
    pub shutdown: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head_bytes: usize,
    pub headers: usize,
    pub body_bytes: u64,
    /// Client connections per worker. With `connections_auto` (0 or unset in the file) this is
    /// `CONNECTIONS_AUTO_MAX`, and the open-file limit lowers it at start without a warning; an
    /// explicit value the limit cannot carry gets a warning (`server::fd_cap`).
    pub connections: usize,
    pub connections_auto: bool,
    pub upstream_idle_per_server: usize,
    /// SO_SNDBUF for client sockets; 0 leaves the kernel's autotuning (up to tcp_wmem's max).
    pub client_send_buffer: usize,
    /// Open connections per client address and worker; 0: no limit. Over it, a connection is
    /// closed at accept without a byte (`per_ip`).
    pub connections_per_ip: u32,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: crate::log::Sink,
    pub format: crate::log::Format,
    /// Error-log lines above this level are dropped (`[log] level`, default info).
    pub level: crate::log::Level,
    /// `[log] request_id`: X-Request-Id taken or made, forwarded, returned and logged.
    pub request_id: bool,
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
    /// Its upstream group; `usize::MAX` for a route Apex answers itself (`Rules::answer`).
    pub group: usize,
    /// The global timeouts and body limit, with this route's overrides.
    pub per: PerRequest,
    /// Its metrics slot (see `server_slots`).
    pub slot: usize,
    /// `allow` / `deny`: who may use it.
    pub access: Access,
    /// Its rules in `Config::rules`; None (the common case): none, at the cost of one branch.
    pub rules: Option<usize>,
    /// `rate` / `burst`: requests per client address (`per_ip`), if limited.
    pub rate: Option<crate::per_ip::Rate>,
    /// Its index in the file: tells its buckets from other routes' in the per-worker table.
    pub id: u32,
}

/// A route's address rules. `deny` wins over `allow`; with `allow` given, only the addresses
/// it lists get through. Both empty (the default): everyone, at the cost of one branch.
#[derive(Debug, Default)]
pub struct Access {
    pub allow: Box<[crate::cidr::Cidr]>,
    pub deny: Box<[crate::cidr::Cidr]>,
}

impl Access {
    #[inline]
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `client` may use the route.
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        !crate::cidr::any_contains(&self.deny, client)
            && (self.allow.is_empty() || crate::cidr::any_contains(&self.allow, client))
    }
}

/// What a `[[route]]` may set for its own requests, over the global `[timeouts]` / `[limits]`:
/// copied into each request's exchange when it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerRequest {
    pub upstream_head: Timeout,
    pub upstream_body: Timeout,
    pub client_body: Timeout,
    pub body_bytes: u64,
    pub retry: RetryPolicy,
}

/// A route's `retry = { attempts, on }`: which failures send a request on to the next server of
/// its group, and to how many servers it may go in all (`conn/connect.rs`).
///
/// Without `retry` a failed connect moves on to every other server in turn (nothing was sent:
/// nginx's and HAProxy's default) and nothing else does. With it, only what `on` lists moves on,
/// up to `attempts` servers, the first included. What the upstream may have acted on (`reset`,
/// `timeout`, a status) is retried only for a request that is safe to repeat and that Apex
/// still holds whole: an idempotent method without a body (RFC 9110 §9.2.2), and only before
/// any response byte reached the client. Those retries also answer to the worker's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Servers a request may go to in all, the first included; 0: each server of its group once.
    pub attempts: u8,
    /// `RetryPolicy::CONNECT` … `S504` bits.
    pub on: u8,
}

impl RetryPolicy {
    /// The connect failed, timed out, or its TLS handshake did: the request was not sent.
    pub const CONNECT: u8 = 1;
    /// The connection failed (a reset, an end, a failed write) before any response byte.
    pub const RESET: u8 = 2;
    /// No response head within `upstream_head`.
    pub const TIMEOUT: u8 = 4;
    pub const S500: u8 = 8;
    pub const S502: u8 = 16;
    pub const S503: u8 = 32;
    pub const S504: u8 = 64;
    pub const NAMES: [(&'static str, u8); 7] = [
        ("connect", Self::CONNECT),
        ("reset", Self::RESET),
        ("timeout", Self::TIMEOUT),
        ("500", Self::S500),
        ("502", Self::S502),
        ("503", Self::S503),
        ("504", Self::S504),
    ];
    /// No `retry` on the route.
    pub const DEFAULT: RetryPolicy = RetryPolicy { attempts: 0, on: Self::CONNECT };
    /// Retries that need the budget: the upstream got the request.
    pub const SENT: u8 = Self::RESET | Self::TIMEOUT | Self::STATUS;
    const STATUS: u8 = Self::S500 | Self::S502 | Self::S503 | Self::S504;

    #[inline]
    pub fn on(self, what: u8) -> bool {
        self.on & what != 0
    }

    /// The bit of a response status `on` may list.
    #[inline]
    pub fn status_bit(code: u16) -> u8 {
        match code {
            500 => Self::S500,
            502 => Self::S502,
            503 => Self::S503,
            504 => Self::S504,
            _ => 0,
        }
    }

    /// Does `on` list this response status? (Most routes list none: one test.)
    #[inline]
    pub fn on_status(self, code: u16) -> bool {
        self.on & Self::STATUS != 0 && self.on(Self::status_bit(code))
    }

    /// May a request that failed `failed` times (servers tried in vain) go to one more?
    #[inline]
    pub fn another(self, failed: u8) -> bool {
        self.attempts == 0 || failed < self.attempts
    }

    pub fn show(self) -> String {
        let on: Vec<String> =
            Self::NAMES.iter().filter(|(_, b)| self.on(*b)).map(|(n, _)| format!("\"{n}\"")).collect();
        format!("{{ attempts = {}, on = [{}] }}", self.attempts, on.join(", "))
    }
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    /// The servers as written (address or name, weight), for `effective`.
    pub entries: Vec<(String, u32)>,
    pub servers: Vec<usize>,
    /// Per member (same order as `servers`), 1 unless written.
    pub weights: Vec<u32>,
    /// Every weight the same: round-robin is a plain rotation.
    pub uniform: bool,
    pub balance: Balance,
    /// The consistent-hash table, for `balance = "hash"`.
    pub maglev: Option<Maglev>,
    pub cooldown: Duration,
    /// `slow_start`: a server back from being out (by its active check, or a probe after its
    /// cooldown) gets a share of new requests that grows over this long (0: its full share
    /// at once). A `hash` group has none: moving keys away from a server that is back would
    /// undo what hashing is for.
    pub slow_start: Duration,
    /// TLS to these servers (`tls = true`), as written.
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
    /// Failed requests in a row that take a server out for `cooldown`.
    pub fail_after: u32,
    pub all_down: AllDown,
    /// The active health check (`health = { … }`), if any.
    pub check: Option<Check>,
    /// `send_proxy`: each new connection to these servers starts with a PROXY protocol header
    /// naming the client. Such connections serve one client's request and are closed, never
    /// pooled (`conn/connect.rs`).
    pub send_proxy: Option<SendProxy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

/// What a request gets when every server of its group is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// 502 at once.
    Fail,
    /// The server that went out first (whose cooldown ends soonest) is tried anyway.
    Try,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(&String::from_utf8_lossy(h)),
            HostPattern::Suffix(s) => write!(f, "*{}", String::from_utf8_lossy(s)),
            HostPattern::Any => f.write_str("*"),
        }
    }
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
    pub fn route(&self, host: &[u8], path: &[u8]) -> Option<&Route> {
        let site = self.sites.iter().find(|s| s.host.matches(host))?;
        site.routes.iter().find(|r| path.starts_with(&r.path))
    }

    /// The active check for server `si`: the first group listing it that has one.
    pub fn check_for(&self, si: usize) -> Option<&Check> {
        self.groups.iter().filter(|g| g.servers.contains(&si)).find_map(|g| g.check.as_ref())
    }

    /// Takes over `old`'s health for the addresses both list, so that a reload neither forgets
    /// a server that is out nor lets every worker probe it again.
    pub fn keep_health(&mut self, old: &Config) {
        for (addr, h) in self.servers.iter().zip(self.health.iter_mut()) {
            if let Some(i) = old.servers.iter().position(|a| a == addr)
                && let Some(kept) = old.health.get(i)
            {
                *h = Arc::clone(kept);
            }
        }
    }

    /// The matching route itself (its group, metrics slot and per-request values).
    pub fn route_of(&self, host: &[u8], path: &[u8]) -> Option<&Route> {
        self.route(host, path)
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
        let mut c = build(raw, base).map_err(|(span, msg)| err(span, msg))?;
        if !c.names.is_empty() {
            c.source = Some((Arc::from(text), file.to_string()));
        }
        Ok(c)
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
        let _ = writeln!(o, "listen = [{}]", quoted(&self.listen));
        let _ = writeln!(o, "workers = {}\nresolve_every = {}", self.workers, d(self.resolve_every));
        let ff = match self.forwarded_for {
            ForwardedFor::Replace => "replace",
            ForwardedFor::Append => "append",
        };
        let _ = writeln!(o, "trusted_proxies = [{}]\nforwarded_for = {}", quoted(&self.trusted_proxies), q(ff));
        for (name, addrs) in &self.names {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            let _ = writeln!(o, "# {name} -> {}", shown.join(", "));
        }
        let _ = writeln!(o, "\n[timeouts]");
        let t = &self.timeouts;
        for (k, v) in [
            ("client_head", t.client_head.duration()),
            ("client_idle", t.client_idle.duration()),
            ("client_body", t.client_body.duration()),
            ("client_send", t.client_send.duration()),
            ("upstream_connect", t.upstream_connect.duration()),
            ("upstream_head", t.upstream_head.duration()),
            ("upstream_body", t.upstream_body.duration()),
            ("upstream_idle", t.upstream_idle.duration()),
            ("shutdown", t.shutdown),
        ] {
            let _ = writeln!(o, "{k} = {}", d(v));
        }
        let l = &self.limits;
        let _ = writeln!(
            o,
            "\n[limits]\nhead_bytes = {}\nheaders = {}\nbody_bytes = {}\nconnections = {}\nupstream_idle_per_server = {}\nclient_send_buffer = {}\nconnections_per_ip = {}",
            l.head_bytes,
            l.headers,
            l.body_bytes,
            if l.connections_auto { 0 } else { l.connections },
            l.upstream_idle_per_server,
            l.client_send_buffer,
            l.connections_per_ip
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
        let _ = writeln!(
            o,
            "\n[log]\naccess = {}\nformat = {}\nlevel = {}\nrequest_id = {}",
            q(&access),
            q(format),
            q(self.log.level.as_str()),
            self.log.request_id
        );
        if let Some(a) = self.admin {
            let _ = writeln!(o, "\n[admin]\nlisten = {}", q(&a.to_string()));
        }
        if let Some(p) = &self.proxy {
            let _ = writeln!(
                o,
                "\n[proxy_protocol]\nlisteners = [{}]\ntrusted = [{}]",
                quoted(&p.listeners),
                quoted(&p.trusted)
            );
        }
        for site in &self.sites {
            let host = site.host.to_string();
            for r in &site.routes {
                let _ =
                    writeln!(o, "\n[[route]]\nhost = {}\npath = {}", q(&host), q(&String::from_utf8_lossy(&r.path)));
                if let Some(g) = self.groups.get(r.group) {
                    let _ = writeln!(o, "upstream = {}", q(&g.name));
                }
                if let Some(rules) = r.rules.and_then(|i| self.rules.get(i)) {
                    o += &rules_toml(rules);
                }
                let (p, g) = (&r.per, &self.per);
                for (k, v, global) in [
                    ("upstream_head", p.upstream_head, g.upstream_head),
                    ("upstream_body", p.upstream_body, g.upstream_body),
                    ("client_body", p.client_body, g.client_body),
                ] {
                    if v != global {
                        let _ = writeln!(o, "{k} = {}", d(v.duration()));
                    }
                }
                if p.body_bytes != g.body_bytes {
                    let _ = writeln!(o, "body_bytes = {}", p.body_bytes);
                }
                if p.retry != RetryPolicy::DEFAULT {
                    let _ = writeln!(o, "retry = {}", p.retry.show());
                }
                for (k, list) in [("allow", &r.access.allow), ("deny", &r.access.deny)] {
                    if !list.is_empty() {
                        let _ = writeln!(o, "{k} = [{}]", quoted(list));
                    }
                }
                if let Some(rate) = &r.rate {
                    let _ = writeln!(o, "rate = {}\nburst = {}", q(&rate.show()), rate.burst);
                }
            }
        }
        for g in &self.groups {
            let servers: Vec<String> = g
                .entries
                .iter()
                .map(|(a, w)| if *w == 1 { q(a) } else { format!("{{ addr = {}, weight = {w} }}", q(a)) })
                .collect();
            let all_down = match g.all_down {
                AllDown::Fail => "fail",
                AllDown::Try => "try",
            };
            let _ = writeln!(
                o,
                "\n[upstream.{}]\nservers = [{}]\ncooldown = {}\nfail_after = {}\nall_down = {}",
                q(&g.name),
                servers.join(", "),
                d(g.cooldown),
                g.fail_after,
                q(all_down)
            );
            if !g.slow_start.is_zero() {
                let _ = writeln!(o, "slow_start = {}", d(g.slow_start));
            }
            match &g.balance {
                Balance::RoundRobin => {}
                Balance::LeastRequests => {
                    let _ = writeln!(o, "balance = \"least_requests\"");
                }
                Balance::Hash(on) => {
                    let _ = writeln!(o, "balance = \"hash\"\nhash_on = {}", q(&on.show()));
                }
            }
            if let Some(c) = &g.check {
                let _ = writeln!(
                    o,
                    "health = {{ path = {}, every = {}, timeout = {}, expect = {}, rise = {}, fall = {} }}",
                    q(&c.path),
                    d(c.every),
                    d(c.timeout),
                    q(&Expect::show(&c.expect)),
                    c.rise,
                    c.fall
                );
            }
            if let Some(v) = g.send_proxy {
                let _ = writeln!(o, "send_proxy = {}", q(if v == SendProxy::V2 { "v2" } else { "v1" }));
            }
            if let Some(t) = &g.tls {
                let _ = writeln!(o, "tls = true");
                if let Some(n) = &t.server_name {
                    let _ = writeln!(o, "tls_name = {}", q(n));
                }
                if let Some(c) = &t.ca {
                    let _ = writeln!(o, "tls_ca = {}", q(&c.display().to_string()));
                }
                let _ = writeln!(o, "tls_groups = [{}]", group_names(&t.groups));
            }
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                o,
                "\n[tls]\nlisten = [{}]\nredirect_http = [{}]\nstrict_sni = {}\ngroups = [{}]",
                quoted(&t.listen),
                quoted(&t.redirect_http),
                t.strict_sni,
                group_names(&t.groups)
            );
            for c in &t.certs {
                let _ = writeln!(
                    o,
                    "\n[[tls.cert]]\nchain = {}\nkey = {}\nnames = [{}]",
                    q(&c.chain.display().to_string()),
                    q(&c.key.display().to_string()),
                    quoted(&c.names)
                );
            }
            if let Some(a) = &t.acme {
                // The contact is optional (RFC 8555 §7.3); shown commented out when absent.
                let email = a.email.as_deref().map_or("# email = (none)".to_string(), |e| format!("email = {}", q(e)));
                let _ = writeln!(
                    o,
                    "\n[tls.acme]\n{email}\ndirectory = {}\nnames = [{}]\nstate = {}\nchallenge = {}",
                    q(&a.directory),
                    quoted(&a.names),
                    q(&a.state.display().to_string()),
                    q(a.challenge.as_str())
                );
                match &a.directory_ca {
                    Some(c) => {
                        let _ = writeln!(o, "directory_ca = {}", q(&c.display().to_string()));
                    }
                    None => {
                        let _ = writeln!(o, "# directory_ca = (none: the system's roots)");
                    }
                }
            }
        }
        o
    }
}

/// A route's rules as the TOML that gives them (`effective`).
fn rules_toml(r: &crate::rules::Rules) -> String {
    use crate::rules::{Answer, HeaderRules, PathRule};
    let s = |b: &[u8]| toml_str(&String::from_utf8_lossy(b));
    let headers = |h: &HeaderRules| {
        let map = |l: &[(Box<[u8]>, crate::rules::Template)]| {
            let items: Vec<String> = l.iter().map(|(n, t)| format!("{} = {}", s(n), toml_str(&t.source))).collect();
            format!("{{ {} }}", items.join(", "))
        };
        let remove: Vec<String> = h.remove.iter().map(|n| s(n)).collect();
        format!("{{ set = {}, add = {}, remove = [{}] }}", map(&h.set), map(&h.add), remove.join(", "))
    };
    let mut o = String::new();
    for (k, h) in [("request_headers", &r.request), ("response_headers", &r.response)] {
        if !h.is_empty() {
            o += &format!("{k} = {}\n", headers(h));
        }
    }
    match &r.path {
        PathRule::Keep => {}
        PathRule::Strip(_) => o += "strip_prefix = true\n",
        PathRule::Rewrite { prefix, to } => o += &format!("rewrite = {{ prefix = {}, to = {} }}\n", s(prefix), s(to)),
    }
    match &r.answer {
        None => {}
        Some(Answer::Redirect { status, to }) => {
            o += &format!("redirect = {{ to = {}, status = {status} }}\n", toml_str(&to.source));
        }
        Some(Answer::Respond { status, body }) => {
            o += &format!("respond = {{ status = {status}, body = {} }}\n", s(body));
        }
    }
    o
}

/// A TOML basic string: `"`, `\` and control characters escaped, the rest as is.
fn toml_str(text: &str) -> String {
    let mut o = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => o += "\\\"",
            '\\' => o += "\\\\",
            c if c.is_control() => o += &format!("\\u{:04X}", c as u32),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Key exchange groups as the config names them, quoted, in effect order (the default if none).
/// The inside of a TOML array of strings: each item quoted, comma-separated.
fn quoted<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|x| format!("{:?}", x.to_string())).collect::<Vec<_>>().join(", ")
}

fn group_names(named: &[rustls::NamedGroup]) -> String {
    let names: Vec<String> =
        crate::tls::kx::resolve(named).iter().map(|g| format!("\"{}\"", crate::tls::kx::name(g.name()))).collect();
    names.join(", ")
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
#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const BASE: &str =
        "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../apex.toml");
        let c = Config::parse(text, "apex.toml").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.timeouts.upstream_idle, Timeout::from_millis(4_000));
        assert_eq!(c.route(b"anything", b"/x").map(|r| r.group), Some(0));
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
        let name = |h: &[u8], p: &[u8]| c.route(h, p).map(|r| c.groups[r.group].name.as_str());
        assert_eq!(name(b"other", b"/"), Some("any"));
        assert_eq!(name(b"a.example.com", b"/"), Some("wild"));
        assert_eq!(name(b"x.api.example.com", b"/"), Some("wild2"));
        assert_eq!(name(b"EXAMPLE.COM", b"/x"), Some("exact"));
        assert_eq!(name(b"example.com", b"/api/v1"), Some("api"));
        assert_eq!(c.servers.len(), 4, "shared addresses are one server");
    }

    #[test]
    fn health_settings_are_validated_and_round_trip() {
        let g = "listen = [\"127.0.0.1:0\"]\n[[route]]\nhost = \"app.test\"\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
        let c = Config::parse(
            &format!("{g}fail_after = 3\nall_down = \"try\"\nhealth = {{ path = \"/hz\", every = \"1s\", expect = \"2xx,301\", fall = 2 }}\n"),
            "t",
        )
        .unwrap();
        let grp = &c.groups[0];
        assert_eq!((grp.fail_after, grp.all_down), (3, AllDown::Try));
        let check = grp.check.as_ref().unwrap();
        assert_eq!(
            (check.path.as_str(), check.every, check.timeout),
            ("/hz", Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(
            (check.rise, check.fall, check.host.as_deref()),
            (2, 2, Some("app.test")),
            "defaults, and the routed host"
        );
        assert_eq!(check.expect, vec![Expect::Class(2), Expect::Code(301)]);
        let text = c.effective();
        assert_eq!(Config::parse(&text, "effective").unwrap().effective(), text);
        for (bad, want) in [
            ("all_down = \"maybe\"\n", "all_down \"maybe\": want"),
            ("fail_after = 0\n", "fail_after: must be between 1 and 1000"),
            ("health = { expect = \"200-299\" }\n", "health expect \"200-299\""),
            ("health = { path = \"healthz\" }\n", "health path \"healthz\""),
            ("health = { every = \"0s\" }\n", "health every"),
            ("health = { interval = \"1s\" }\n", "unknown field `interval`"),
        ] {
            let e = err(&format!("{g}{bad}"));
            assert!(e.starts_with("t.toml:") && e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn balance_settings_are_validated_and_round_trip() {
        let g = "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\n";
        let c = Config::parse(
            &format!("{g}servers = [{{ addr = \"127.0.0.1:9\", weight = 3 }}, \"127.0.0.1:10\"]\nbalance = \"hash\"\nhash_on = \"cookie:sid\"\n"),
            "t",
        )
        .unwrap();
        let grp = &c.groups[0];
        assert_eq!((grp.weights.as_slice(), grp.uniform), (&[3, 1][..], false));
        assert_eq!(grp.balance, Balance::Hash(HashOn::Cookie(b"sid"[..].into())));
        assert!(grp.maglev.is_some());
        let text = c.effective();
        assert!(text.contains("weight = 3"), "{text}");
        assert_eq!(Config::parse(&text, "effective").unwrap().effective(), text);
        let one = "servers = [\"127.0.0.1:9\"]\n";
        for (bad, want) in [
            ("servers = [{ addr = \"127.0.0.1:9\", weight = 0 }]\n", "weight 0: must be between 1 and 1000"),
            ("servers = [{ addr = \"nope\" }]\n", "bad server \"nope\""),
            ("servers = [{ addr = \"127.0.0.1:9\", wieght = 2 }]\n", ""),
            (&format!("{one}balance = \"random\"\n"), "balance \"random\": want"),
            (&format!("{one}hash_on = \"client_ip\"\n"), "hash_on needs balance = \"hash\""),
            (&format!("{one}balance = \"least_requests\"\nhash_on = \"client_ip\"\n"), "hash_on needs balance"),
            (&format!("{one}balance = \"hash\"\nhash_on = \"query:a\"\n"), "hash_on \"query:a\": want"),
        ] {
            let e = err(&format!("{g}{bad}"));
            assert!(e.starts_with("t.toml:") && e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn routes_override_timeouts_and_body_bytes() {
        let text = "listen = [\"127.0.0.1:0\"]\n[timeouts]\nupstream_head = \"5s\"\n[limits]\nbody_bytes = \"1MiB\"\n\
            [[route]]\npath = \"/poll\"\nupstream = \"app\"\nupstream_head = \"2m\"\nbody_bytes = \"10MiB\"\n\
            [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
        let c = Config::parse(text, "t").unwrap();
        let poll = c.route(b"h", b"/poll/x").unwrap();
        assert_eq!((poll.per.upstream_head, poll.per.body_bytes), (Timeout::from_millis(120_000), 10 << 20));
        assert_eq!(poll.per.upstream_body, c.timeouts.upstream_body, "what it does not set is the global value");
        assert_eq!(c.route(b"h", b"/").unwrap().per, c.per);
        assert_eq!(c.body_bytes_max, 10 << 20, "the largest of the global and every route's");
        let text = c.effective();
        assert!(text.contains("upstream_head = \"120s\"\nbody_bytes = 10485760"), "{text}");
        assert_eq!(Config::parse(&text, "effective").unwrap().effective(), text);
        let e = err(&format!("{BASE}[[route]]\npath = \"/x\"\nupstream = \"app\"\nclient_body = \"0s\"\n"));
        assert!(e.starts_with("t.toml:") && e.contains("client_body: a zero timeout"), "{e}");
    }

    #[test]
    fn a_reload_keeps_the_health_of_the_servers_that_stay() {
        let one = "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n";
        let two = "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:11\", \"127.0.0.1:10\"]\n";
        let old = Config::parse(one, "t").unwrap();
        let mut new = Config::parse(two, "t").unwrap();
        new.keep_health(&old);
        assert!(Arc::ptr_eq(&new.health[1], &old.health[1]), "127.0.0.1:10 stays: same health");
        assert!(!old.health.iter().any(|h| Arc::ptr_eq(h, &new.health[0])), "a new server starts fresh");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::parse(include_str!("../../apex.toml"), "apex.toml").unwrap();
        let text = c.effective();
        let again = Config::parse(&text, "effective").unwrap();
        assert_eq!(again.effective(), text);
        assert!(text.contains("client_head = \"10s\"\n"), "{text}");
        assert!(text.contains("[upstream.\"app\"]\nservers = [\"127.0.0.1:9000\"]"), "{text}");
    }

    /// A route's rules are built once, print back as TOML that parses to the same config, and
    /// a route without any has none at all (nothing to look at per request).
    #[test]
    fn route_rules_round_trip() {
        let text = "listen = [\"127.0.0.1:0\"]\n[log]\nrequest_id = true\n\
            [[route]]\npath = \"/api\"\nupstream = \"app\"\nstrip_prefix = true\n\
            request_headers = { set = { \"X-A\" = \"$client_ip \\\"q\\\" $$\" }, add = { \"X-B\" = \"b\" }, remove = [\"X-C\"] }\n\
            response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=1\" } }\n\
            [[route]]\npath = \"/old\"\nupstream = \"app\"\nrewrite = { prefix = \"/old\", to = \"/new\" }\n\
            [[route]]\npath = \"/r\"\nredirect = { to = \"https://x$path\", status = 301 }\n\
            [[route]]\npath = \"/h\"\nrespond = { status = 200, body = \"ok\\n\\u0001\\\"\" }\n\
            [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
        let c = Config::parse(text, "t").unwrap();
        assert!(c.log.request_id);
        assert_eq!(c.rules.len(), 4);
        assert!(c.route(b"h", b"/").unwrap().rules.is_none(), "a route without rules has none");
        assert_eq!(c.route(b"h", b"/r").unwrap().group, usize::MAX, "an answer has no group");
        let eff = c.effective();
        for want in ["strip_prefix = true\n", "remove = [\"X-C\"]", "status = 301", "body = \"ok\\u000A\\u0001\\\"\""] {
            assert!(eff.contains(want), "{want}: {eff}");
        }
        assert_eq!(Config::parse(&eff, "effective").unwrap().effective(), eff);
    }

    #[test]
    fn client_address_and_limits_are_validated_and_round_trip() {
        let text = "listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nforwarded_for = \"append\"\n\
            [limits]\nconnections_per_ip = 8\n[[route]]\nupstream = \"app\"\nrate = \"100/s\"\nburst = 200\n\
            [[route]]\npath = \"/x\"\nupstream = \"app\"\nrate = \"5/m\"\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n";
        let c = Config::parse(text, "t").unwrap();
        assert_eq!(
            (c.trusted_proxies.len(), c.forwarded_for, c.limits.connections_per_ip),
            (2, ForwardedFor::Append, 8)
        );
        let r = c.route(b"h", b"/").unwrap().rate.unwrap();
        assert_eq!((r.count, r.per_secs, r.burst), (100, 1, 200));
        assert_eq!(c.route(b"h", b"/x").unwrap().rate.unwrap().burst, 5, "burst defaults to the count");
        let eff = c.effective();
        assert!(eff.contains("forwarded_for = \"append\"") && eff.contains("rate = \"5/m\"\nburst = 5"), "{eff}");
        assert_eq!(Config::parse(&eff, "effective").unwrap().effective(), eff);
        let d = Config::parse(BASE, "t").unwrap();
        assert_eq!(
            (d.forwarded_for, d.trusted_proxies.len(), d.limits.connections_per_ip),
            (ForwardedFor::Replace, 0, 0)
        );
        for (bad, want) in [
            ("trusted_proxies = [\"10.0.0.1/8\"]\n", "t.toml:1: trusted_proxies: \"10.0.0.1/8\": host bits"),
            ("forwarded_for = \"keep\"\n", "t.toml:1: forwarded_for \"keep\": want"),
        ] {
            let e = err(&format!("{bad}{BASE}"));
            assert!(e.starts_with(want), "{bad:?}: {e}");
        }
        for (bad, want) in [
            ("rate = \"100/h\"\n", "rate \"100/h\": want N/s or N/m"),
            ("rate = \"0/s\"\n", "rate \"0/s\""),
            ("rate = \"1/s\"\nburst = 0\n", "burst 0: must be between 1"),
            ("burst = 5\n", "burst needs a rate"),
        ] {
            let e = err(&format!("{BASE}[[route]]\npath = \"/x\"\nupstream = \"app\"\n{bad}"));
            assert!(e.starts_with("t.toml:") && e.contains(want), "{bad:?}: {e}");
        }
        let c = Config::parse(&format!("{BASE}send_proxy = \"v2\"\n"), "t").unwrap();
        assert_eq!(c.groups[0].send_proxy, Some(SendProxy::V2));
        let eff = c.effective();
        assert!(eff.contains("send_proxy = \"v2\""), "{eff}");
        assert_eq!(Config::parse(&eff, "effective").unwrap().effective(), eff);
        let e = err(&format!("{BASE}send_proxy = \"v3\"\n"));
        assert!(e.starts_with("t.toml:6: upstream \"app\": send_proxy \"v3\": want"), "{e}");
        let e = err(&format!("{BASE}[limits]\nconnections_per_ip = -1\n"));
        assert!(e.contains("connections_per_ip"), "{e}");
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
