//! The ACME thread: keeps one certificate for `tls.acme.names`, from `state` or the CA
//! (RFC 8555 §7.4: order, authorizations, challenges, finalize, download), renewed at two thirds
//! of its lifetime, or when the CA's renewal information says (RFC 9773, `ari.rs`). A failure is logged with the CA's problem document and retried after a
//! back-off that doubles up to `BACKOFF_MAX` (or the CA's Retry-After, if longer); the
//! certificate that serves is never dropped for a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use super::ari::{self, Answer, Window};
use super::client::{Directory, Failure, Https, Session};
use super::state::{self, Stored};
use super::{AcmeSpec, Challenge, STORE};
use crate::config::Config;
use crate::log::{Level, say};

const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Polls of one authorization or order before the attempt is given up (each waits the CA's
/// Retry-After, else `POLL_EVERY`).
const POLLS_MAX: u32 = 60;
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Starts the thread; it idles while the config has no `[tls.acme]`.
pub fn spawn(shared: Arc<ArcSwap<Config>>) -> std::io::Result<()> {
    std::thread::Builder::new().name("apex-acme".into()).spawn(move || run(&shared)).map(|_| ())
}

fn spec_of(shared: &ArcSwap<Config>) -> Option<AcmeSpec> {
    shared.load().tls.as_ref().and_then(|t| t.acme.clone())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn iso(t: i64) -> String {
    let (y, m, d) = crate::time::civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Two thirds into the lifetime.
fn renew_at(s: &Stored) -> i64 {
    s.not_before + (s.not_after - s.not_before) * 2 / 3
}

/// First back-off after a temporary renewal-information failure (RFC 9773 §4.3.3).
const ARI_BACKOFF_MIN: Duration = Duration::from_secs(60);

/// What the CA's renewal information said about the serving certificate.
struct Ari {
    /// When to ask next.
    next: Instant,
    backoff: Duration,
    /// The window last suggested, and the time picked in it: the renewal is due then.
    window: Option<(Window, i64)>,
}

impl Ari {
    /// For a certificate just issued or loaded: ask at once (§4.3).
    fn fresh() -> Ari {
        Ari { next: Instant::now(), backoff: ARI_BACKOFF_MIN, window: None }
    }

    fn due(&self, s: &Stored) -> i64 {
        self.window.map_or_else(|| renew_at(s), |(_, at)| at)
    }
}

fn run(shared: &ArcSwap<Config>) {
    // Snapshots this thread replaced, kept until no worker holds them.
    let mut retired: Vec<Arc<dyn std::any::Any + Send + Sync>> = Vec::new();
    // The section last acted on, and the certificate serving for it.
    let mut seen: Option<AcmeSpec> = None;
    let mut current: Option<Stored> = None;
    // A file in `state` is bad: said once, and nothing is ordered over it until the section
    // changes or Apex restarts.
    let mut blocked = false;
    let mut backoff = BACKOFF_MIN;
    let mut next = Instant::now();
    let mut ari = Ari::fresh();
    loop {
        retired.retain(|a| Arc::strong_count(a) > 1);
        std::thread::sleep(Duration::from_millis(200));
        let Some(spec) = spec_of(shared) else { continue };
        if seen.as_ref() != Some(&spec) {
            // First pass, or a reload changed the section: what `state` holds may do.
            seen = Some(spec.clone());
            (blocked, next, backoff) = (false, Instant::now(), BACKOFF_MIN);
            match state::load_cert(&spec.state, &spec.names) {
                Ok(Some(s)) if s.covers && now_unix() < s.not_after => {
                    say(
                        Level::Info,
                        format_args!(
                            "acme: serving the stored certificate for {} (renewal due in {}s)",
                            spec.names.join(", "),
                            (renew_at(&s) - now_unix()).max(0)
                        ),
                    );
                    publish(&spec.names, &s, &mut retired);
                    current = Some(s);
                    ari = Ari::fresh();
                }
                Ok(_) => current = None,
                Err(e) => {
                    say(Level::Error, format_args!("acme: {e}; not ordering over it (fix or remove the file)"));
                    blocked = true;
                }
            }
        }
        if blocked {
            continue;
        }
        if let Some(s) = &current
            && Instant::now() >= ari.next
        {
            ask_ari(&spec, s, &mut ari);
        }
        if Instant::now() < next {
            continue;
        }
        if let Some(s) = &current
            && now_unix() < ari.due(s)
            && !renew_forced(&spec)
        {
            continue;
        }
        let started = Instant::now();
        let replaces = current.as_ref().and_then(|s| s.id.as_deref());
        match obtain(&spec, replaces, &mut retired) {
            Ok(s) => {
                say(
                    Level::Info,
                    format_args!(
                        "acme: certificate for {} issued in {} ms, valid until {}; renewal due in {}s",
                        spec.names.join(", "),
                        started.elapsed().as_millis(),
                        iso(s.not_after),
                        (renew_at(&s) - now_unix()).max(0)
                    ),
                );
                publish(&spec.names, &s, &mut retired);
                current = Some(s);
                ari = Ari::fresh();
                backoff = BACKOFF_MIN;
            }
            Err(f) => {
                // RFC 8555 §6.6: a Retry-After from the CA is honoured when longer.
                let wait = f.retry_after.unwrap_or(backoff).max(backoff);
                let keep = if current.is_some() { "; the current certificate keeps serving" } else { "" };
                say(Level::Warn, format_args!("acme: {}; trying again in {}s{keep}", f.msg, wait.as_secs()));
                next = Instant::now() + wait;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Asks the CA's renewal information about `s` (RFC 9773 §4) and schedules the next question.
fn ask_ari(spec: &AcmeSpec, s: &Stored, ari: &mut Ari) {
    // §4.3: not about a certificate that has expired, nor one it cannot name.
    let Some(id) = s.id.as_deref().filter(|_| now_unix() < s.not_after) else {
        ari.next = Instant::now() + ari::LONG_TERM;
        return;
    };
    let answer = match https(spec).and_then(|h| Directory::get(&h, &spec.directory).map(|d| (h, d))) {
        Ok((http, dir)) => match dir.renewal_info {
            Some(base) => ari::query(&http, &base, id),
            // The CA has no renewal information: two thirds it is; ask again later (a CA
            // may add it).
            None => Answer::LongTerm(String::new()),
        },
        Err(f) => Answer::Temporary(f.msg),
    };
    let names = spec.names.join(", ");
    match answer {
        Answer::Window(w, why, again) => {
            if ari.window.is_none_or(|(seen, _)| seen != w) {
                let mut random = [0u8; 8];
                let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
                let at = ari::pick(w, u64::from_le_bytes(random));
                ari.window = Some((w, at));
                let why = why.map_or(String::new(), |u| format!(" (the CA explains: {u})"));
                say(
                    Level::Info,
                    format_args!(
                        "acme: the CA suggests renewing {names} between {} and {}{why}; renewal due at {}",
                        iso(w.start),
                        iso(w.end),
                        iso(at)
                    ),
                );
            }
            ari.next = Instant::now() + again;
            ari.backoff = ARI_BACKOFF_MIN;
        }
        Answer::Temporary(m) => {
            say(
                Level::Warn,
                format_args!("acme: renewal information for {names}: {m}; asking again in {}s", ari.backoff.as_secs()),
            );
            ari.next = Instant::now() + ari.backoff;
            ari.backoff = (ari.backoff * 2).min(ari::LONG_TERM);
        }
        Answer::LongTerm(m) => {
            if !m.is_empty() {
                say(Level::Warn, format_args!("acme: renewal information for {names}: {m}; asking again in 6h"));
            }
            ari.next = Instant::now() + ari::LONG_TERM;
        }
    }
}

fn https(spec: &AcmeSpec) -> Result<Https, Failure> {
    let tls =
        crate::tls::client_config(spec.directory_ca.as_deref(), &crate::tls::kx::resolve(&[])).map_err(Failure::new)?;
    Ok(Https::new(tls))
}

/// A forced renewal (`renew` file in `state`, removed once seen): the operator's and the
/// tests' way to renew now.
fn renew_forced(spec: &AcmeSpec) -> bool {
    let flag = spec.state.join("renew");
    flag.exists() && std::fs::remove_file(&flag).is_ok()
}

fn swap<T: Send + Sync + 'static>(slot: &ArcSwap<T>, new: T, retired: &mut Vec<Arc<dyn std::any::Any + Send + Sync>>) {
    let old: Arc<T> = slot.swap(Arc::new(new));
    retired.push(old);
}

fn publish(names: &[String], s: &Stored, retired: &mut Vec<Arc<dyn std::any::Any + Send + Sync>>) {
    let list = names.iter().map(|n| (Box::from(n.as_str()), Arc::clone(&s.key))).collect();
    swap(&STORE.issued, list, retired);
}

/// One attempt: account, order, authorizations, finalize, download, store. `replaces`: the
/// serving certificate's RFC 9773 identifier, named in the order where the CA has ARI.
fn obtain(
    spec: &AcmeSpec,
    replaces: Option<&str>,
    retired: &mut Vec<Arc<dyn std::any::Any + Send + Sync>>,
) -> Result<Stored, Failure> {
    let pkcs8 = state::account_key(&spec.state).map_err(Failure::new)?;
    let mut s = Session::open(https(spec)?, &spec.directory, &pkcs8)?;
    s.account(spec.email.as_deref())?;
    let url = s.dir.new_order.clone();
    // RFC 9773 §5: `replaces` only to a CA that advertises renewalInfo.
    let replaces = replaces.filter(|_| s.dir.renewal_info.is_some());
    let resp = match s.post(&url, Some(&new_order(&spec.names, replaces))) {
        // §5: the CA says another order replaced it already (409 alreadyReplaced): this
        // certificate is still wanted, so order it as a new one.
        Err(f) if replaces.is_some() && f.problem.as_deref() == Some("urn:ietf:params:acme:error:alreadyReplaced") => {
            s.post(&url, Some(&new_order(&spec.names, None)))?
        }
        r => r?,
    };
    let order_url = resp.location.clone().ok_or_else(|| Failure::new("newOrder: no order URL (Location)"))?;
    let order = resp.json()?;
    let authzs: Vec<String> = order
        .get("authorizations")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let result = (|| {
        for a in &authzs {
            authorize(&mut s, spec, a, retired)?;
        }
        Ok::<(), Failure>(())
    })();
    // Whatever happened, no challenge stays published.
    swap(&STORE.tokens, Vec::new(), retired);
    swap(&STORE.validation, Vec::new(), retired);
    result?;
    let order = poll(&mut s, &order_url, &["ready", "valid"], "order")?;
    let key = rcgen::KeyPair::generate().map_err(|e| Failure::new(format!("cannot make a certificate key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(spec.names.clone())
        .map_err(|e| Failure::new(format!("cannot make the CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| Failure::new(format!("cannot make the CSR: {e}")))?;
    let order = if order.get("status").and_then(Value::as_str) == Some("ready") {
        let fin =
            order.get("finalize").and_then(Value::as_str).ok_or_else(|| Failure::new("order: no finalize URL"))?;
        s.post(fin, Some(&json!({"csr": super::b64url(csr.der())})))?;
        poll(&mut s, &order_url, &["valid"], "order")?
    } else {
        order
    };
    let cert_url =
        order.get("certificate").and_then(Value::as_str).ok_or_else(|| Failure::new("order: no certificate URL"))?;
    let chain = s.post(cert_url, None)?;
    let chain = String::from_utf8(chain.body).map_err(|_| Failure::new("the certificate is not PEM text"))?;
    let der = key.serialize_der();
    let mut text = chain.trim_end().to_string();
    text.push('\n');
    let stored = state::parse_cert(format!("{text}{}", key.serialize_pem()).as_bytes(), &spec.names)
        .map_err(|e| Failure::new(format!("the CA's certificate: {e}")))?;
    state::save_cert(&spec.state, &chain, &der).map_err(Failure::new)?;
    Ok(stored)
}

/// A newOrder payload (RFC 8555 §7.4), naming the certificate it replaces (RFC 9773 §5).
fn new_order(names: &[String], replaces: Option<&str>) -> Value {
    let ids: Vec<Value> = names.iter().map(|n| json!({"type": "dns", "value": n})).collect();
    match replaces {
        Some(id) => json!({"identifiers": ids, "replaces": id}),
        None => json!({"identifiers": ids}),
    }
}

/// One authorization (§7.5): nothing to do if valid (the CA reuses them), else answer one
/// challenge (§7.5.1) and poll until the CA decides.
fn authorize(
    s: &mut Session,
    spec: &AcmeSpec,
    url: &str,
    retired: &mut Vec<Arc<dyn std::any::Any + Send + Sync>>,
) -> Result<(), Failure> {
    let authz = s.post(url, None)?.json()?;
    let name = authz.get("identifier").and_then(|i| i.get("value")).and_then(Value::as_str).unwrap_or("").to_string();
    match authz.get("status").and_then(Value::as_str) {
        Some("valid") => return Ok(()),
        Some("pending") => {}
        other => return Err(Failure::new(format!("authorization for {name}: status {other:?}"))),
    }
    let offered = |ty: &str| {
        authz.get("challenges").and_then(Value::as_array).and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
                .and_then(|c| Some((c.get("url")?.as_str()?.to_string(), c.get("token")?.as_str()?.to_string())))
        })
    };
    let pick = match spec.challenge {
        Challenge::TlsAlpn => offered("tls-alpn-01").map(|c| ("tls-alpn-01", c)),
        Challenge::Http => offered("http-01").map(|c| ("http-01", c)),
        Challenge::Auto => {
            offered("tls-alpn-01").map(|c| ("tls-alpn-01", c)).or_else(|| offered("http-01").map(|c| ("http-01", c)))
        }
    };
    let Some((kind, (ch_url, token))) = pick else {
        return Err(Failure::new(format!(
            "authorization for {name}: the CA offers no challenge Apex can answer ({})",
            spec.challenge.as_str()
        )));
    };
    // RFC 8555 §8.1: token "." thumbprint.
    let key_auth = format!("{token}.{}", s.thumbprint);
    if kind == "http-01" {
        swap(&STORE.tokens, vec![(Box::from(token.as_str()), Box::from(key_auth.as_bytes()))], retired);
    } else {
        let ck = validation_cert(&name, &key_auth)?;
        swap(&STORE.validation, vec![(Box::from(name.as_str()), Arc::new(ck))], retired);
    }
    say(Level::Info, format_args!("acme: answering {kind} for {name}"));
    s.post(&ch_url, Some(&json!({})))?;
    poll(s, url, &["valid"], &format!("authorization for {name} ({kind})")).map(|_| ())
}

/// RFC 8737 §3: a self-signed certificate for the name with the critical acmeIdentifier
/// extension holding SHA-256 of the key authorization.
fn validation_cert(name: &str, key_auth: &str) -> Result<rustls::sign::CertifiedKey, Failure> {
    let fail = |e: rcgen::Error| Failure::new(format!("cannot make the tls-alpn-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(fail)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
    p.custom_extensions.push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let cert = p.self_signed(&key).map_err(fail)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = crate::tls::kx::provider(&crate::tls::kx::resolve(&[]));
    // Not `from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension it does not know. The key was made for it here.
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| Failure::new(format!("cannot use the tls-alpn-01 key: {e}")))?;
    Ok(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// POST-as-GET `url` until its status is one of `want`; `invalid` is a failure with the
/// CA's reason (the authorization's challenge error).
fn poll(s: &mut Session, url: &str, want: &[&str], what: &str) -> Result<Value, Failure> {
    for _ in 0..POLLS_MAX {
        let resp = s.post(url, None)?;
        let v = resp.json()?;
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        if want.contains(&status) {
            return Ok(v);
        }
        if status == "invalid" {
            let why = v
                .get("challenges")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find_map(|c| c.get("error")))
                .or_else(|| v.get("error"))
                .map_or_else(
                    || "no reason given".to_string(),
                    |e| super::problem_text(resp.status, e.to_string().as_bytes()),
                );
            return Err(Failure::new(format!("{what} is invalid: {why}")));
        }
        std::thread::sleep(resp.retry_after.map_or(POLL_EVERY, |s| Duration::from_secs(s.min(60))));
    }
    Err(Failure::new(format!("{what}: still not done after {POLLS_MAX} polls")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_name_what_they_replace_only_when_asked() {
        let names = vec!["a.test".to_string(), "b.test".to_string()];
        let plain = new_order(&names, None);
        assert_eq!(plain["identifiers"][1]["value"], "b.test");
        assert!(plain.get("replaces").is_none());
        assert_eq!(new_order(&names, Some("aYhb.AIdl"))["replaces"], "aYhb.AIdl");
    }

    #[test]
    fn renewal_is_due_two_thirds_in_unless_the_ca_picked_a_time() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 4, 1); // 90 days
        let pem = format!("{}{}", p.self_signed(&key).unwrap().pem(), key.serialize_pem());
        let stored = state::parse_cert(pem.as_bytes(), &["a.test".to_string()]).unwrap();
        let start = 1_893_456_000; // 2030-01-01
        assert_eq!(stored.not_before, start);
        let mut ari = Ari::fresh();
        assert_eq!(ari.due(&stored), start + 60 * 86_400, "day 60 of 90");
        ari.window = Some((Window { start: start + 86_400, end: start + 2 * 86_400 }, start + 90_000));
        assert_eq!(ari.due(&stored), start + 90_000);
    }
}
