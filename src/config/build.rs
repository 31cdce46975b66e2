//! The file as serde reads it (`Raw*`, every field optional and spanned, so that an error can
//! name its line) and its validation into a `Config`: defaults filled in, bounds checked,
//! certificates and keys loaded, routes and groups resolved. All or nothing.

use super::*;

use serde::Deserialize;
use toml::Spanned;

use crate::limits::{GROUP_SERVERS_CAP, HEAD_BYTES_CAP, HEAD_BYTES_FLOOR, HEADERS_CAP, RESPOND_BODY_MAX};
use crate::rules::{Answer, HEADER_VARS, HeaderRules, PathRule, RESPONSE_VARS, Rules, Template, Var};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    workers: Option<Spanned<i64>>,
    resolve_every: Option<Spanned<toml::Value>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    upstream: BTreeMap<String, Spanned<RawGroup>>,
    tls: Option<Spanned<RawTls>>,
    admin: Option<RawAdmin>,
    proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    /// Peers whose X-Forwarded-For is believed (`h1::forwarded`).
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    /// `"replace"` (the default) or `"append"`: the X-Forwarded-For sent upstream.
    forwarded_for: Option<Spanned<String>>,
}

/// `[proxy_protocol] listeners = [ADDR…]`, `trusted = [CIDR…]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyProtocol {
    listeners: Spanned<Vec<Spanned<String>>>,
    trusted: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    redirect_http: Vec<Spanned<String>>,
    strict_sni: Option<bool>,
    groups: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    cert: Vec<Spanned<RawCert>>,
    acme: Option<Spanned<RawAcme>>,
}

/// `[tls.acme]`: certificates from an ACME CA (`acme/`). Checked here without a byte sent to
/// the CA, so `--check` and a reload never contact it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    email: Option<Spanned<String>>,
    directory: Option<Spanned<String>>,
    names: Option<Spanned<Vec<Spanned<String>>>>,
    state: Option<Spanned<String>>,
    directory_ca: Option<Spanned<String>>,
    challenge: Option<Spanned<String>>,
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
    client_head: Option<Spanned<toml::Value>>,
    client_idle: Option<Spanned<toml::Value>>,
    client_body: Option<Spanned<toml::Value>>,
    client_send: Option<Spanned<toml::Value>>,
    upstream_connect: Option<Spanned<toml::Value>>,
    upstream_head: Option<Spanned<toml::Value>>,
    upstream_body: Option<Spanned<toml::Value>>,
    upstream_idle: Option<Spanned<toml::Value>>,
    shutdown: Option<Spanned<toml::Value>>,
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
    connections_per_ip: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    level: Option<Spanned<String>>,
    request_id: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    /// Where it goes; none for a route Apex answers itself (`redirect`, `respond`).
    upstream: Option<Spanned<String>>,
    /// Overrides of the global `[timeouts]` and `[limits]` for this route's requests.
    upstream_head: Option<Spanned<toml::Value>>,
    upstream_body: Option<Spanned<toml::Value>>,
    client_body: Option<Spanned<toml::Value>>,
    body_bytes: Option<Spanned<toml::Value>>,
    /// Client addresses this route serves (`allow`) or refuses (`deny`) with a 403.
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    /// The rules of `rules.rs`.
    request_headers: Option<Spanned<RawHeaderRules>>,
    response_headers: Option<Spanned<RawHeaderRules>>,
    strip_prefix: Option<Spanned<bool>>,
    rewrite: Option<Spanned<RawRewrite>>,
    redirect: Option<Spanned<RawRedirect>>,
    respond: Option<Spanned<RawRespond>>,
    /// Requests per client address: `"100/s"` or `"100/m"`, with `burst` (default: the count).
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    /// `{ attempts = 2, on = ["connect", "reset", "503"] }` (`RetryPolicy`).
    retry: Option<Spanned<RawRetry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<i64>,
    on: Option<Vec<String>>,
}

/// A route's `retry`, checked: attempts 1..=GROUP_SERVERS_CAP (default 2: one retry), `on` from
/// `RetryPolicy::NAMES` (default connect and reset).
fn retry(raw: &Option<Spanned<RawRetry>>) -> Result<RetryPolicy, BuildError> {
    let Some(raw) = raw else { return Ok(RetryPolicy::DEFAULT) };
    let RawRetry { attempts, on } = raw.get_ref();
    let attempts = match attempts.unwrap_or(2) {
        n @ 1..=64 => n as u8, // GROUP_SERVERS_CAP
        n => {
            return Err((
                at(raw),
                format!("retry attempts {n}: want 1 to {GROUP_SERVERS_CAP} (the first try included)"),
            ));
        }
    };
    let on = match on {
        None => RetryPolicy::CONNECT | RetryPolicy::RESET,
        Some(list) => {
            let mut bits = 0;
            for name in list {
                let Some(&(_, b)) = RetryPolicy::NAMES.iter().find(|(n, _)| n == name) else {
                    let known: Vec<&str> = RetryPolicy::NAMES.iter().map(|(n, _)| *n).collect();
                    return Err((at(raw), format!("retry on {name:?}: want some of {}", known.join(", "))));
                };
                bits |= b;
            }
            bits
        }
    };
    Ok(RetryPolicy { attempts, on })
}

/// `{ set = { NAME = VALUE… }, add = { NAME = VALUE… }, remove = [NAME…] }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    prefix: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    to: String,
    status: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    status: i64,
    #[serde(default)]
    body: String,
}

/// `request_headers` or `response_headers`, checked: names (`HeaderRules::check_name`), values
/// as templates of the variables known on that side.
fn header_rules(raw: &Option<Spanned<RawHeaderRules>>, what: &str, vars: &[Var]) -> Result<HeaderRules, BuildError> {
    let Some(raw) = raw else { return Ok(HeaderRules::default()) };
    let err = |msg: String| (at(raw), format!("{what}: {msg}"));
    let r = raw.get_ref();
    let mut seen = Vec::new();
    let list = |map: &BTreeMap<String, String>, seen: &mut Vec<String>| {
        map.iter()
            .map(|(name, value)| {
                HeaderRules::check_name(name, seen).map_err(&err)?;
                // RFC 9110 §5.5: no leading or trailing whitespace in a field value.
                if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
                    return Err(err(format!("{name:?}: a value starts or ends with whitespace")));
                }
                let t = Template::parse(value, vars, crate::rules::value_byte)
                    .map_err(|e| err(format!("{name:?}: {e}")))?;
                Ok((name.as_bytes().into(), t))
            })
            .collect::<Result<Vec<_>, BuildError>>()
    };
    let set = list(&r.set, &mut seen)?.into();
    let add = list(&r.add, &mut seen)?.into();
    let mut remove = Vec::new();
    for name in &r.remove {
        HeaderRules::check_name(name, &mut seen).map_err(&err)?;
        remove.push(name.as_bytes().into());
    }
    Ok(HeaderRules { set, add, remove: remove.into() })
}

/// A route's rules (`rules.rs`), or None when it has none. `path` is the route's path; with an
/// `answer` there is no upstream, and nothing is forwarded to edit.
fn route_rules(r: &Spanned<RawRoute>, path: &[u8]) -> Result<Option<Rules>, BuildError> {
    let raw = r.get_ref();
    let request = header_rules(&raw.request_headers, "request_headers", &HEADER_VARS)?;
    let response = header_rules(&raw.response_headers, "response_headers", &RESPONSE_VARS)?;
    let visible = |s: &str| s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    let path_rule = match (&raw.strip_prefix, &raw.rewrite) {
        (Some(s), Some(_)) if *s.get_ref() => {
            return Err((at(s), "strip_prefix and rewrite: give one (which would apply first is a guess)".into()));
        }
        (Some(s), _) if *s.get_ref() => PathRule::Strip(path.len()),
        (_, Some(rw)) => {
            let RawRewrite { prefix, to } = rw.get_ref();
            if !visible(prefix) || !visible(to) {
                return Err((
                    at(rw),
                    format!(
                        "rewrite {prefix:?} -> {to:?}: both must start with '/' and be visible ASCII without '?' or '#'"
                    ),
                ));
            }
            PathRule::Rewrite { prefix: prefix.as_bytes().into(), to: to.as_bytes().into() }
        }
        _ => PathRule::Keep,
    };
    let answer = match (&raw.redirect, &raw.respond) {
        (Some(x), Some(_)) => return Err((at(x), "redirect and respond: give one".into())),
        (Some(rd), None) => {
            let RawRedirect { to, status } = rd.get_ref();
            // RFC 9110 §15.4: the redirections that carry a Location.
            let status = match status.unwrap_or(308) {
                s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                s => return Err((at(rd), format!("redirect status {s}: want 301, 302, 303, 307 or 308"))),
            };
            let to = Template::parse(to, &Var::ALL, crate::rules::uri_byte)
                .map_err(|e| (at(rd), format!("redirect to {to:?}: {e}")))?;
            if to.pieces.is_empty() {
                return Err((at(rd), "redirect to: give a target".into()));
            }
            Some(Answer::Redirect { status, to })
        }
        (None, Some(rs)) => {
            let RawRespond { status, body } = rs.get_ref();
            let status = match *status {
                s @ 200..=599 => s as u16,
                s => return Err((at(rs), format!("respond status {s}: want 200 to 599"))),
            };
            // RFC 9110 §15.3.5, §15.4.5: 204 and 304 have no body.
            if (status == 204 || status == 304) && !body.is_empty() {
                return Err((at(rs), format!("respond: a {status} has no body")));
            }
            if body.len() > RESPOND_BODY_MAX {
                return Err((at(rs), format!("respond body: at most {RESPOND_BODY_MAX} bytes")));
            }
            Some(Answer::Respond { status, body: body.as_bytes().into() })
        }
        (None, None) => None,
    };
    if answer.is_some() {
        let forwarding = raw.upstream.as_ref().and_then(at).or_else(|| raw.request_headers.as_ref().and_then(at));
        let forwarding = forwarding.or(if path_rule == PathRule::Keep { None } else { at(r) });
        if forwarding.is_some() {
            return Err((
                forwarding,
                "a route with redirect or respond is answered by Apex: no upstream, request_headers, strip_prefix or rewrite"
                    .into(),
            ));
        }
    } else if raw.upstream.is_none() {
        return Err((at(r), "route: give `upstream`, or `redirect` / `respond` for an answer of Apex's own".into()));
    }
    if request.is_empty() && response.is_empty() && path_rule == PathRule::Keep && answer.is_none() {
        return Ok(None);
    }
    let uses_id = request.uses(Var::RequestId)
        || response.uses(Var::RequestId)
        || matches!(&answer, Some(Answer::Redirect { to, .. }) if to.uses(Var::RequestId));
    Ok(Some(Rules { request, response, path: path_rule, answer, uses_id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    servers: Spanned<Vec<Spanned<RawServer>>>,
    balance: Option<Spanned<String>>,
    hash_on: Option<Spanned<String>>,
    cooldown: Option<Spanned<toml::Value>>,
    slow_start: Option<Spanned<toml::Value>>,
    tls: Option<bool>,
    tls_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_groups: Option<Spanned<Vec<String>>>,
    fail_after: Option<Spanned<i64>>,
    all_down: Option<Spanned<String>>,
    health: Option<Spanned<RawCheck>>,
    /// `"v1"` or `"v2"`: a PROXY protocol header naming the client on each new connection.
    send_proxy: Option<Spanned<String>>,
}

/// A server: `"10.0.0.5:8080"` or `{ addr = "10.0.0.5:8080", weight = 3 }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawServer {
    Addr(String),
    Weighted(RawWeighted),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeighted {
    addr: String,
    weight: Option<i64>,
}

/// `health = { path = "/healthz", every = "5s", timeout = "2s", expect = "2xx", rise = 2, fall = 3 }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    path: Option<Spanned<String>>,
    every: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<toml::Value>>,
    expect: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

/// A group's active check, validated; its Host is filled in once the routes are known.
fn check(name: &str, g: &RawGroup) -> Result<Option<Check>, BuildError> {
    let Some(c) = &g.health else { return Ok(None) };
    let r = c.get_ref();
    let path = match &r.path {
        // The request target of the check (RFC 9112 §3.2.1 origin-form): visible ASCII from '/'.
        Some(p) if p.get_ref().starts_with('/') && p.get_ref().bytes().all(|b| (b'!'..=b'~').contains(&b)) => {
            p.get_ref().clone()
        }
        Some(p) => {
            return Err((
                at(p),
                format!("upstream {name:?}: health path {:?}: must start with '/' and be visible ASCII", p.get_ref()),
            ));
        }
        None => "/".to_string(),
    };
    let every = duration(&r.every, "health every", 5_000, false)?;
    let timeout = duration(&r.timeout, "health timeout", 2_000, false)?;
    if every < Duration::from_millis(10) {
        return Err((at(c), format!("upstream {name:?}: health every: at least 10ms")));
    }
    let expect = match &r.expect {
        Some(e) => Expect::parse_list(e.get_ref()).ok_or_else(|| {
            (
                at(e),
                format!(
                    "upstream {name:?}: health expect {:?}: want a class or codes, e.g. \"2xx\" or \"200,301\"",
                    e.get_ref()
                ),
            )
        })?,
        None => vec![Expect::Class(2)],
    };
    let rise = int_in(&r.rise, "health rise", 2, 1, 100)? as u32;
    let fall = int_in(&r.fall, "health fall", 3, 1, 100)? as u32;
    Ok(Some(Check { path, every, timeout, expect, rise, fall, host: None }))
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
        if let Some(x) = &r.tls_groups {
            return Err((at(x), format!("upstream {name:?}: tls_groups needs `tls = true`")));
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
    let groups = groups(r.tls_groups.as_ref(), &format!("upstream {name:?}: tls_groups"))?;
    Ok(Some(crate::tls::UpstreamTlsSpec { server_name, ca, groups }))
}

/// `tls.groups` or an upstream's `tls_groups`, checked; absent: empty (the default order).
fn groups(raw: Option<&Spanned<Vec<String>>>, what: &str) -> Result<Vec<rustls::NamedGroup>, BuildError> {
    match raw {
        None => Ok(Vec::new()),
        Some(g) => crate::tls::kx::parse(g.get_ref()).map_err(|e| (at(g), format!("{what}: {e}"))),
    }
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
                    let c = crate::tls::client_config(spec.ca.as_deref(), &crate::tls::kx::resolve(&spec.groups))
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

fn build_tls(raw: Spanned<RawTls>, base: &Path, plain: &[SocketAddr], sites: &[Site]) -> Result<TlsListen, BuildError> {
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
    let groups = groups(raw.groups.as_ref(), "tls.groups")?;
    let acme = match &raw.acme {
        Some(a) => Some(build_acme(a, base, sites)?),
        None => None,
    };
    if raw.cert.is_empty() && acme.is_none() {
        return Err((span, "tls: give at least one [[tls.cert]] with `chain` and `key`, or [tls.acme]".into()));
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
    let server = crate::tls::server_config(&certs, strict_sni, &crate::tls::kx::resolve(&groups), acme.is_some())
        .map_err(|(i, msg)| (raw.cert.get(i).map(|c| c.span()).or(span), format!("tls.cert: {msg}")))?;
    let expiry = certs.iter().map(|c| crate::tls::leaf_expiry(&c.chain)).collect();
    Ok(TlsListen { listen, redirect_http, strict_sni, groups, certs, server, expiry, acme })
}

/// `[tls.acme]`, checked: a contact address that looks like one, an https directory, DNS names
/// (no wildcard: that needs DNS-01, RFC 8555 §7.1.3, which Apex does not do), by default every
/// exact host routed to.
fn build_acme(raw: &Spanned<RawAcme>, base: &Path, sites: &[Site]) -> Result<crate::acme::AcmeSpec, BuildError> {
    let r = raw.get_ref();
    let email = match &r.email {
        Some(e) => {
            let v = e.get_ref();
            let ok = v.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && v.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'"');
            if !ok {
                return Err((at(e), format!("tls.acme.email {v:?}: want an address like ops@example.com")));
            }
            Some(v.clone())
        }
        None => None,
    };
    let directory = match &r.directory {
        Some(d) => {
            let v = d.get_ref();
            if crate::acme::split_url(v).is_none() {
                return Err((at(d), format!("tls.acme.directory {v:?}: want an https:// URL (RFC 8555 §7.1.1)")));
            }
            v.clone()
        }
        None => crate::acme::DEFAULT_DIRECTORY.to_string(),
    };
    let names = match &r.names {
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for n in list.get_ref() {
                let v = n.get_ref().to_ascii_lowercase();
                if v.starts_with("*.") {
                    return Err((
                        at(n),
                        format!(
                            "tls.acme.names {v:?}: wildcard names need the DNS-01 challenge, which Apex does not support; list the names"
                        ),
                    ));
                }
                let dns = rustls::pki_types::DnsName::try_from(v.as_str()).is_ok();
                if !dns || v.parse::<std::net::IpAddr>().is_ok() || !v.contains('.') && v != "localhost" {
                    return Err((at(n), format!("tls.acme.names {v:?}: not a DNS name")));
                }
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            if out.is_empty() {
                return Err((
                    at(list),
                    "tls.acme.names: give at least one name, or leave it out for every routed host".into(),
                ));
            }
            out
        }
        None => {
            let out: Vec<String> = sites
                .iter()
                .filter_map(|s| match &s.host {
                    HostPattern::Exact(h) => Some(String::from_utf8_lossy(h).into_owned()),
                    _ => None,
                })
                .filter(|h| {
                    rustls::pki_types::DnsName::try_from(h.as_str()).is_ok() && h.parse::<std::net::IpAddr>().is_err()
                })
                .collect();
            if out.is_empty() {
                return Err((
                    at(raw),
                    "tls.acme: no names: no [[route]] has an exact host; give tls.acme.names".into(),
                ));
            }
            out
        }
    };
    let state = base.join(r.state.as_ref().map_or(crate::acme::DEFAULT_STATE, |s| s.get_ref().as_str()));
    let directory_ca = r.directory_ca.as_ref().map(|c| base.join(c.get_ref()));
    if let (Some(c), Some(path)) = (&r.directory_ca, &directory_ca) {
        // Read now, so that a missing or bad file is a config error and not a failed order.
        crate::tls::client_config(Some(path), &crate::tls::kx::resolve(&[]))
            .map_err(|e| (at(c), format!("tls.acme.directory_ca: {}", e.trim_start_matches("tls_ca "))))?;
    }
    let challenge = match &r.challenge {
        Some(c) => crate::acme::Challenge::parse(c.get_ref()).ok_or_else(|| {
            (at(c), format!("tls.acme.challenge {:?}: want \"auto\", \"tls-alpn-01\" or \"http-01\"", c.get_ref()))
        })?,
        None => crate::acme::Challenge::Auto,
    };
    Ok(crate::acme::AcmeSpec { email, directory, names, state, directory_ca, challenge })
}

/// A list of ranges (`trusted`, `allow`, …), each checked.
fn cidrs(raw: &[Spanned<String>], what: &str) -> Result<Vec<crate::cidr::Cidr>, BuildError> {
    raw.iter().map(|c| crate::cidr::Cidr::parse(c.get_ref()).map_err(|e| (at(c), format!("{what}: {e}")))).collect()
}

/// `[proxy_protocol]`: every listener named must be one Apex listens on (plain or TLS), and
/// somebody must be trusted to send the header, or the listener would refuse everyone.
fn build_proxy(
    raw: Spanned<RawProxyProtocol>,
    listen: &[SocketAddr],
    tls: Option<&TlsListen>,
) -> Result<ProxyProtocol, BuildError> {
    let raw = raw.into_inner();
    let mut listeners = Vec::new();
    for a in raw.listeners.get_ref() {
        let addr = parse_addr(a, "proxy_protocol.listeners")?;
        let known = listen.contains(&addr) || tls.is_some_and(|t| t.listen.contains(&addr));
        if !known {
            return Err((at(a), format!("proxy_protocol.listeners: {addr} is not in `listen` or `tls.listen`")));
        }
        if !listeners.contains(&addr) {
            listeners.push(addr);
        }
    }
    let trusted = cidrs(raw.trusted.get_ref(), "proxy_protocol.trusted")?;
    if trusted.is_empty() && !listeners.is_empty() {
        return Err((
            at(&raw.trusted),
            "proxy_protocol.trusted: give the load balancers' addresses (e.g. [\"10.0.0.0/8\"]); with none, these listeners would refuse everyone".into(),
        ));
    }
    Ok(ProxyProtocol { listeners, trusted })
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
pub(super) fn parse_size(v: &toml::Value) -> Option<u64> {
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

/// A duration as written: a string with a unit (`"250ms"`, `"10s"`, `"2m"`, `"1h"`), or an
/// integer, read as seconds (`60` is `"60s"`), as people write it without thinking twice.
pub(super) fn duration_value(v: &toml::Value) -> Option<Duration> {
    match v {
        toml::Value::String(s) => parse_duration(s),
        toml::Value::Integer(n) => u64::try_from(*n).ok()?.checked_mul(1_000).map(Duration::from_millis),
        _ => None,
    }
}

/// A `[timeouts]` value or a route's override of one (zero refused), in deadlines' unit.
fn timeout(v: &Option<Spanned<toml::Value>>, name: &str, default_ms: u64) -> Result<Timeout, BuildError> {
    duration(v, name, default_ms, false).map(Timeout::from_duration)
}

fn duration(
    v: &Option<Spanned<toml::Value>>,
    name: &str,
    default_ms: u64,
    zero_ok: bool,
) -> Result<Duration, BuildError> {
    let Some(v) = v else {
        return Ok(Duration::from_millis(default_ms));
    };
    let d = duration_value(v.get_ref()).ok_or_else(|| {
        let shown = match v.get_ref() {
            toml::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        (
            at(v),
            format!(
                "{name}: bad duration {shown} (write seconds as an integer, 60, or a string with a unit: \"250ms\", \"10s\", \"2m\", \"1h\")"
            ),
        )
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
    addr_at(s.get_ref(), at(s), what)
}

/// `name:port` (a DNS name, RFC 1123 §2.1 letters, digits and hyphens between dots), resolved by
/// the system's resolver (hosts file, then DNS): every address, sorted.
pub(super) fn resolve_name(text: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let bad = || {
        format!(
            "bad server {text:?} (want IP:PORT or NAME:PORT, e.g. \"127.0.0.1:8080\", \"[::1]:8080\", \"app:8080\")"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    let mut found: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {text:?}: {e}"))?.collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(format!("cannot resolve {text:?}: no address"));
    }
    Ok(found)
}

fn addr_at(s: &str, span: Option<Range<usize>>, what: &str) -> Result<SocketAddr, BuildError> {
    s.parse::<SocketAddr>().map_err(|_| {
        (span, format!("{what}: bad address {s:?} (want IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"))
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

pub(super) fn build(raw: RawConfig, base: &Path) -> Result<Config, BuildError> {
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
        client_head: timeout(&t.client_head, "client_head", 10_000)?,
        client_idle: timeout(&t.client_idle, "client_idle", 60_000)?,
        client_body: timeout(&t.client_body, "client_body", 30_000)?,
        client_send: timeout(&t.client_send, "client_send", 30_000)?,
        upstream_connect: timeout(&t.upstream_connect, "upstream_connect", 5_000)?,
        upstream_head: timeout(&t.upstream_head, "upstream_head", 60_000)?,
        upstream_body: timeout(&t.upstream_body, "upstream_body", 60_000)?,
        upstream_idle: timeout(&t.upstream_idle, "upstream_idle", 4_000)?,
        shutdown: duration(&t.shutdown, "shutdown", 30_000, false)?,
    };

    let l = &raw.limits;
    // 0 (the default): as many as the open-file limit allows, at most CONNECTIONS_AUTO_MAX.
    let connections = int_in(&l.connections, "connections", 0, 0, 1_000_000)?;
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
        connections: if connections == 0 { CONNECTIONS_AUTO_MAX } else { connections },
        connections_auto: connections == 0,
        upstream_idle_per_server: int_in(&l.upstream_idle_per_server, "upstream_idle_per_server", 1024, 0, 100_000)?,
        client_send_buffer: size_in(&l.client_send_buffer, "client_send_buffer", 0, 0, 64 << 20)? as usize,
        connections_per_ip: int_in(&l.connections_per_ip, "connections_per_ip", 0, 0, 1_000_000)? as u32,
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
        // Off unless asked for: on by default it would change every head Apex forwards.
        request_id: raw.log.request_id.unwrap_or(false),
        level: match &raw.log.level {
            None => crate::log::Level::Info,
            Some(l) => crate::log::Level::parse(l.get_ref()).ok_or_else(|| {
                (at(l), format!("log level {:?}: want \"error\", \"warn\", \"info\" or \"debug\"", l.get_ref()))
            })?,
        },
    };

    let mut servers: Vec<SocketAddr> = Vec::new();
    let mut names: Vec<(String, Vec<SocketAddr>)> = Vec::new();
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
        let mut weights = Vec::new();
        let mut entries = Vec::new();
        for s in list.get_ref() {
            let (text, weight) = match s.get_ref() {
                RawServer::Addr(a) => (a, 1),
                RawServer::Weighted(w) => match w.weight {
                    None => (&w.addr, 1),
                    Some(n @ 1..=1000) => (&w.addr, n as u32),
                    Some(n) => {
                        return Err((at(s), format!("upstream {name:?}: weight {n}: must be between 1 and 1000")));
                    }
                },
            };
            entries.push((text.clone(), weight));
            let literal = text.parse::<SocketAddr>().ok();
            let addrs = match literal {
                Some(a) => vec![a],
                None => {
                    let found = resolve_name(text).map_err(|e| (at(s), format!("upstream {name:?}: {e}")))?;
                    if !names.iter().any(|(n, _)| n == text) {
                        names.push((text.clone(), found.clone()));
                    }
                    found
                }
            };
            for addr in addrs {
                let idx = match servers.iter().position(|a| *a == addr) {
                    Some(i) => i,
                    None => {
                        servers.push(addr);
                        servers.len() - 1
                    }
                };
                if members.contains(&idx) {
                    if literal.is_some() {
                        return Err((at(s), format!("upstream {name:?}: {addr} is listed twice")));
                    }
                    continue; // a name's address already in the group: once is enough
                }
                if members.len() == GROUP_SERVERS_CAP {
                    return Err((at(s), format!("upstream {name:?}: more than {GROUP_SERVERS_CAP} addresses")));
                }
                members.push(idx);
                weights.push(weight);
            }
        }
        let cooldown = duration(&g.get_ref().cooldown, "cooldown", 10_000, true)?;
        let tls = upstream_tls(name, g, base)?;
        let fail_after = int_in(&g.get_ref().fail_after, "fail_after", 1, 1, 1000)? as u32;
        let all_down = match &g.get_ref().all_down {
            None => AllDown::Fail,
            Some(a) if a.get_ref() == "fail" => AllDown::Fail,
            Some(a) if a.get_ref() == "try" => AllDown::Try,
            Some(a) => {
                return Err((
                    at(a),
                    format!("upstream {name:?}: all_down {:?}: want \"fail\" or \"try\"", a.get_ref()),
                ));
            }
        };
        let check = check(name, g.get_ref())?;
        let send_proxy = match g.get_ref().send_proxy.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None => None,
            Some((_, "v1")) => Some(SendProxy::V1),
            Some((_, "v2")) => Some(SendProxy::V2),
            Some((v, other)) => {
                return Err((at(v), format!("upstream {name:?}: send_proxy {other:?}: want \"v1\" or \"v2\"")));
            }
        };
        let balance = match (&g.get_ref().balance, &g.get_ref().hash_on) {
            (None, None) => Balance::RoundRobin,
            (Some(b), None) if b.get_ref() == "round_robin" => Balance::RoundRobin,
            (Some(b), None) if b.get_ref() == "least_requests" => Balance::LeastRequests,
            (Some(b), h) if b.get_ref() == "hash" => match h {
                None => Balance::Hash(HashOn::ClientIp),
                Some(h) => Balance::Hash(HashOn::parse(h.get_ref()).ok_or_else(|| {
                    (
                        at(h),
                        format!(
                            "upstream {name:?}: hash_on {:?}: want \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
                            h.get_ref()
                        ),
                    )
                })?),
            },
            (_, Some(h)) if g.get_ref().balance.as_ref().is_none_or(|b| b.get_ref() != "hash") => {
                return Err((at(h), format!("upstream {name:?}: hash_on needs balance = \"hash\"")));
            }
            (Some(b), _) => {
                return Err((
                    at(b),
                    format!(
                        "upstream {name:?}: balance {:?}: want \"round_robin\", \"least_requests\" or \"hash\"",
                        b.get_ref()
                    ),
                ));
            }
            (None, Some(h)) => return Err((at(h), format!("upstream {name:?}: hash_on needs balance = \"hash\""))),
        };
        let slow_start = duration(&g.get_ref().slow_start, "slow_start", 0, true)?;
        if let (Some(ss), Balance::Hash(_)) = (&g.get_ref().slow_start, &balance)
            && !slow_start.is_zero()
        {
            return Err((
                at(ss),
                format!(
                    "upstream {name:?}: slow_start with balance = \"hash\": keys would move away from a server that is back"
                ),
            ));
        }
        let maglev = matches!(balance, Balance::Hash(_)).then(|| {
            let names: Vec<String> = members.iter().filter_map(|&i| servers.get(i)).map(|a| a.to_string()).collect();
            crate::balance::Maglev::new(&names, &weights)
        });
        group_index.insert(name.clone(), groups.len());
        groups.push(Group {
            name: name.clone(),
            entries,
            servers: members,
            uniform: weights.iter().all(|&w| w == weights.first().copied().unwrap_or(1)),
            weights,
            balance,
            maglev,
            cooldown,
            slow_start,
            tls,
            fail_after,
            all_down,
            check,
            send_proxy,
        });
    }

    if raw.route.is_empty() {
        return Err((None, "no [[route]]: every request would get 404; add at least one route".into()));
    }
    let mut sites: Vec<Site> = Vec::new();
    let mut body_bytes_max = limits.body_bytes;
    let mut rules = Vec::new();
    for (raw_index, spanned) in raw.route.iter().enumerate() {
        let r = spanned.get_ref();
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
        let route_rules = route_rules(spanned, &path)?;
        // A route Apex answers itself has no group (`Route::group`).
        let group = match &r.upstream {
            Some(u) => match group_index.get(u.get_ref()) {
                Some(&g) => g,
                None => return Err((at(u), format!("route to unknown upstream group {:?}", u.get_ref()))),
            },
            None => usize::MAX,
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
            let span = r.upstream.as_ref().map_or(at(spanned), at);
            return Err((span, "duplicate route: this host and path are already routed".to_string()));
        }
        let ms = |t: Timeout| t.duration().as_millis() as u64;
        let per = PerRequest {
            upstream_head: timeout(&r.upstream_head, "upstream_head", ms(timeouts.upstream_head))?,
            upstream_body: timeout(&r.upstream_body, "upstream_body", ms(timeouts.upstream_body))?,
            client_body: timeout(&r.client_body, "client_body", ms(timeouts.client_body))?,
            body_bytes: size_in(&r.body_bytes, "body_bytes", limits.body_bytes, 0, u64::MAX)?,
            retry: retry(&r.retry)?,
        };
        body_bytes_max = body_bytes_max.max(per.body_bytes);
        // Until `metrics::Labels::assign` gives it one: slot 0 is "no route".
        let slot = (raw_index + 1).min(crate::metrics::ROUTE_SLOTS - 1);
        let access = Access { allow: cidrs(&r.allow, "allow")?.into(), deny: cidrs(&r.deny, "deny")?.into() };
        let rate = match (&r.rate, &r.burst) {
            (Some(rate), burst) => Some(
                crate::per_ip::Rate::parse(rate.get_ref(), burst.as_ref().map(|b| *b.get_ref()))
                    .map_err(|e| (Some(burst.as_ref().map_or(rate.span(), Spanned::span)), e))?,
            ),
            (None, Some(b)) => return Err((at(b), "burst needs a rate (e.g. rate = \"100/s\")".into())),
            (None, None) => None,
        };
        let id = raw_index as u32; // routes are few (the file's length bounds them)

        let rules_at = route_rules.map(|x| {
            rules.push(x);
            rules.len() - 1
        });
        site.routes.push(Route { path, group, per, slot, access, rules: rules_at, rate, id });
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
        Some(t) => Some(build_tls(t, base, &listen, &sites)?),
        None => None,
    };
    let proxy = match raw.proxy_protocol {
        Some(p) => Some(build_proxy(p, &listen, tls.as_ref())?),
        None => None,
    };
    let server_tls = server_tls(&raw.upstream, &groups, &servers)?;
    let server_slots = (0..servers.len()).map(|i| i.min(crate::metrics::SERVER_SLOTS - 1)).collect();
    let admin = match raw.admin.and_then(|a| a.listen) {
        Some(a) => Some(parse_addr(&a, "admin.listen")?),
        None => None,
    };
    // The Host of a group's health check: its tls_name, else the first exact host routed to it.
    for (gi, g) in groups.iter_mut().enumerate() {
        let routed = sites.iter().find_map(|s| match &s.host {
            HostPattern::Exact(h) if s.routes.iter().any(|r| r.group == gi) => {
                Some(String::from_utf8_lossy(h).into_owned())
            }
            _ => None,
        });
        let host = g.tls.as_ref().and_then(|t| t.server_name.clone()).or(routed);
        if let Some(c) = g.check.as_mut() {
            c.host = host;
        }
    }
    let health = servers.iter().map(|_| Arc::default()).collect();
    let per = PerRequest {
        upstream_head: timeouts.upstream_head,
        upstream_body: timeouts.upstream_body,
        client_body: timeouts.client_body,
        body_bytes: limits.body_bytes,
        retry: RetryPolicy::DEFAULT,
    };
    let resolve_every = duration(&raw.resolve_every, "resolve_every", 30_000, false)?;
    let trusted_proxies = cidrs(&raw.trusted_proxies, "trusted_proxies")?.into();
    let forwarded_for = match raw.forwarded_for.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "replace")) => ForwardedFor::Replace,
        Some((_, "append")) => ForwardedFor::Append,
        Some((f, other)) => {
            return Err((at(f), format!("forwarded_for {other:?}: want \"replace\" or \"append\"")));
        }
    };
    Ok(Config {
        listen,
        workers,
        resolve_every,
        names,
        source: None,
        timeouts,
        limits,
        per,
        body_bytes_max,
        log,
        sites,
        rules,
        groups,
        servers,
        server_tls,
        health,
        tls,
        server_slots,
        admin,
        proxy,
        trusted_proxies,
        forwarded_for,
    })
}
