//! `[tls.acme]` against a real ACME server: Debian's Pebble (Let's Encrypt's RFC 8555 test CA)
//! with pebble-challtestsrv as its DNS, resolving every name to 127.0.0.1, so Pebble validates
//! the challenges against Apex's own listeners (its `httpPort` / `tlsPort` are Apex's ports).
//! Pebble keeps its defaults: 5% of nonces rejected (badNonce) and authorizations reused.
//! Then curl, trusting Pebble's root from its management API (`/roots/0`), gets 200 over the
//! new certificate.

use crate::harness::*;
use crate::tls_kit::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A free loopback port, named up front (Pebble and the fixed-port listeners need one).
fn free_port() -> u16 {
    spare_port()
}

/// Kills and reaps what it holds: the test ends exactly what it started.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS, on free ports; `http` and `tls`: Apex's ports it validates against.
struct Pebble {
    root: Root,
    dir_url: String,
    mgmt: u16,
    _dns: Proc,
    pebble: Proc,
}

impl Pebble {
    fn start(http: u16, tls: u16) -> Pebble {
        Pebble::start_env(http, tls, &[])
    }

    /// With Pebble's environment knobs (README: `PEBBLE_WFE_NONCEREJECT`, …).
    fn start_env(http: u16, tls: u16, env: &[(&str, &str)]) -> Pebble {
        let root = Root::new("acme-pebble", "Pebble listener test CA");
        let leaf = sign_leaf(&root.dir, "pebble", &["127.0.0.1", "localhost"], &new_key(), &root.issuer, &[], |_| {});
        let (dns, api, mgmt, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let dns_proc = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-http01", "", "-tlsalpn01", "", "-https01", ""])
            // Names resolve to 127.0.0.1 only: Apex listens on IPv4 loopback.
            .args(["-defaultIPv6", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let dns_proc = Proc(dns_proc);
        let conf = root.dir.write(
            "pebble.json",
            &format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{api}", "managementListenAddress": "127.0.0.1:{mgmt}",
                "certificate": "{}", "privateKey": "{}", "httpPort": {http}, "tlsPort": {tls},
                "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
                leaf.chain.display(),
                leaf.key.display()
            ),
        );
        let log = File::create(root.dir.path().join("pebble.log")).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&conf)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let p = Pebble {
            dir_url: format!("https://127.0.0.1:{api}/dir"),
            mgmt,
            root,
            _dns: dns_proc,
            pebble: Proc(pebble),
        };
        let up = wait_until(Duration::from_secs(20), || curl(&p.root.ca, &p.dir_url, &[]).0 == "200");
        assert!(up, "pebble did not answer {}:\n{}", p.dir_url, p.log());
        p
    }

    /// The CA goes down (its DNS stays).
    fn stop(&mut self) {
        let _ = self.pebble.0.kill();
        let _ = self.pebble.0.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Pebble's current root (it makes a new one each run), for clients of the issued chain.
    fn issuing_root(&self) -> PathBuf {
        let path = self.root.dir.path().join("issuing-root.pem");
        let (code, _) =
            curl(&self.root.ca, &format!("https://127.0.0.1:{}/roots/0", self.mgmt), &["-o", path.to_str().unwrap()]);
        assert_eq!(code, "200", "pebble /roots/0");
        path
    }
}

/// curl `url` trusting `ca`: (HTTP status, body). "000" when no response came.
fn curl(ca: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// An HTTPS request for `name` to Apex's TLS port, trusting only Pebble's issuing root.
fn https_status(root: &Path, name: &str, tls: u16) -> (String, String) {
    curl(root, &format!("https://{name}:{tls}/"), &["--resolve", &format!("{name}:{tls}:127.0.0.1")])
}

/// Apex with two routed names, `[tls.acme]` on Pebble, `redirect_http` on its plain port.
fn apex_toml(up: &Upstream, p: &Pebble, http: u16, tls: u16, state: &Path, challenge: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:{http}\"]\n\
         [[route]]\nhost = \"a.test\"\nupstream = \"app\"\n\
         [[route]]\nhost = \"b.test\"\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{}\"]\n\
         [tls]\nlisten = [\"127.0.0.1:{tls}\"]\nredirect_http = [\"127.0.0.1:{http}\"]\n\
         [tls.acme]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\n\
         state = \"{}\"\nchallenge = \"{challenge}\"\n",
        up.addr,
        p.dir_url,
        p.root.ca.display(),
        state.display()
    )
}

fn wait_issued(apex: &Apex, p: &Pebble, n: usize) {
    let ok = wait_until(Duration::from_secs(60), || apex.stderr().matches("acme: certificate for").count() >= n);
    assert!(ok, "no certificate within 60 s; apex:\n{}\npebble:\n{}", apex.stderr(), p.log());
    // The time from start to certificate, for the record (`--nocapture` shows it).
    if let Some(line) = apex.stderr().lines().filter(|l| l.contains("acme: certificate for")).nth(n - 1) {
        println!("{line}");
    }
}

fn issue_and_serve(challenge: &str) {
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-state");
    let toml = apex_toml(&up, &p, http, tls, &state.path().join("acme"), challenge);
    let apex = Apex::start_toml(&toml);
    wait_issued(&apex, &p, 1);
    let err = apex.stderr();
    assert!(err.contains(&format!("acme: answering {challenge} for a.test")), "{err}");
    let root = p.issuing_root();
    for name in ["a.test", "b.test"] {
        let (code, body) = https_status(&root, name, tls);
        assert_eq!((code.as_str(), body.as_str()), ("200", "hello from app"), "{name}\n{err}");
    }
    // The plain listener still redirects everything else.
    let (code, _) = curl(&root, &format!("http://127.0.0.1:{http}/x"), &["-H", "Host: a.test"]);
    assert_eq!(code, "308");
    let meta = std::fs::metadata(state.path().join("acme/account.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    drop(apex);

    // A restart serves the stored certificate: no order, no challenge.
    let apex = Apex::start_toml(&toml);
    let ok = wait_until(Duration::from_secs(10), || apex.stderr().contains("acme: serving the stored certificate"));
    assert!(ok, "{}", apex.stderr());
    let (code, _) = https_status(&root, "a.test", tls);
    assert_eq!(code, "200");
    let err = apex.stderr();
    assert!(!err.contains("acme: answering") && !err.contains("acme: certificate for"), "{err}");
}

#[test]
fn http01_issues_for_two_names_and_a_restart_reuses_the_certificate() {
    issue_and_serve("http-01");
}

#[test]
fn tls_alpn01_issues_for_two_names_and_a_restart_reuses_the_certificate() {
    issue_and_serve("tls-alpn-01");
}

#[test]
fn a_corrupted_state_file_is_an_error_naming_it() {
    let state = TempDir::new("acme-bad");
    let bad = state.write("cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    let dir = TempDir::new("acme-bad-conf");
    let conf = dir.write(
        "apex.toml",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nhost = \"a.test\"\nupstream = \"app\"\n\
             [upstream.app]\nservers = [\"127.0.0.1:9\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
             [tls.acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nstate = \"{}\"\n",
            state.path().display()
        ),
    );
    let (code, _, err) = run_apex(&[conf.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("tls.acme: {}: ", bad.display())), "{err}");
}

#[test]
fn check_prints_the_section_with_defaults_without_contacting_the_ca() {
    let dir = TempDir::new("acme-check");
    // Port 9 (discard) on loopback: nothing answers there, and --check must not try.
    let conf = dir.write(
        "apex.toml",
        "listen = [\"127.0.0.1:0\"]\n[[route]]\nhost = \"a.test\"\nupstream = \"app\"\n\
         [[route]]\nhost = \"*.b.test\"\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"127.0.0.1:9\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
         [tls.acme]\nemail = \"ops@example.com\"\ndirectory = \"https://127.0.0.1:9/dir\"\n",
    );
    let (code, out, err) = run_apex(&["--check", conf.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let want = "\n[tls.acme]\nemail = \"ops@example.com\"\ndirectory = \"https://127.0.0.1:9/dir\"\n\
                names = [\"a.test\"]\nstate = \"/var/lib/apex/acme\"\nchallenge = \"auto\"\n";
    assert!(out.contains(want), "{out}");
    for (bad, line, why) in [
        ("names = [\"*.b.test\"]", 10, "wildcard names need the DNS-01 challenge"),
        ("email = \"ops\"", 10, "tls.acme.email \"ops\": want an address"),
        ("directory = \"http://ca/dir\"", 10, "want an https:// URL"),
        ("challenge = \"dns-01\"", 10, "tls.acme.challenge \"dns-01\""),
        ("directory_ca = \"missing.pem\"", 10, "tls.acme.directory_ca"),
        ("colour = 1", 10, "unknown field `colour`"),
    ] {
        let conf = dir.write(
            "bad.toml",
            &format!(
                "listen = [\"127.0.0.1:0\"]\n[[route]]\nhost = \"a.test\"\nupstream = \"app\"\n\
                 [upstream.app]\nservers = [\"127.0.0.1:9\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
                 [tls.acme]\n{bad}\n"
            ),
        );
        let (code, _, err) = run_apex(&["--check", conf.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{bad}: {err}");
        assert!(err.contains(&format!("bad.toml:{line}: ")) && err.contains(why), "{bad}: {err}");
    }
}

/// The serial of the leaf Apex serves for `name`, and of the one in `cert.pem`.
fn serials(tls: u16, name: &str, cert: &Path) -> (String, String) {
    let sh = |cmd: String| {
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let served = sh(format!(
        "openssl s_client -connect 127.0.0.1:{tls} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    ));
    let stored = sh(format!("openssl x509 -noout -serial -in {}", cert.display()));
    (served, stored)
}

#[test]
fn a_forced_renewal_swaps_the_certificate_under_load_without_a_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-renew");
    let dir = state.path().join("acme");
    let apex = Apex::start_toml(&apex_toml(&up, &p, http, tls, &dir, "auto"));
    wait_issued(&apex, &p, 1);
    let root = p.issuing_root();
    let (before, stored) = serials(tls, "a.test", &dir.join("cert.pem"));
    assert!(before.starts_with("serial=") && before == stored, "{before} / {stored}");

    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, root) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), root.clone());
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                let n = if https_status(&root, "a.test", tls).0 == "200" { &ok } else { &failed };
                n.fetch_add(1, SeqCst);
            }
        })
    };
    wait_until(Duration::from_secs(10), || ok.load(SeqCst) >= 3);
    std::fs::write(dir.join("renew"), "").unwrap();
    wait_issued(&apex, &p, 2);
    let during = ok.load(SeqCst);
    wait_until(Duration::from_secs(10), || ok.load(SeqCst) >= during + 3);
    stop.store(true, SeqCst);
    load.join().unwrap();
    assert_eq!(failed.load(SeqCst), 0, "requests failed during the renewal:\n{}", apex.stderr());
    assert!(ok.load(SeqCst) >= during + 3, "no request after the renewal");
    let (after, stored) = serials(tls, "a.test", &dir.join("cert.pem"));
    assert!(after != before && after == stored, "served {after}, stored {stored}, was {before}");
}

#[test]
fn ca_down_at_start_backs_off_and_at_renewal_the_old_certificate_keeps_serving() {
    // Down at start: nothing listens at the directory; the attempts back off, doubling.
    let (http, tls) = (free_port(), free_port());
    let mut p = Pebble::start(http, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-down");
    let dir = state.path().join("acme");
    let real = p.dir_url.clone();
    p.dir_url = format!("https://127.0.0.1:{}/dir", free_port());
    let down = Apex::start_toml(&apex_toml(&up, &p, http, tls, &dir, "auto"));
    let ok = wait_until(Duration::from_secs(20), || down.stderr().contains("trying again in 4s"));
    assert!(ok, "{}", down.stderr());
    assert!(down.stderr().contains("Connection refused (os error 111); trying again in 2s"), "{}", down.stderr());
    drop(down);

    // Up: a certificate; then down at a (forced) renewal: logged, and the old one serves.
    p.dir_url = real;
    let apex = Apex::start_toml(&apex_toml(&up, &p, http, tls, &dir, "auto"));
    wait_issued(&apex, &p, 1);
    let root = p.issuing_root();
    p.stop();
    std::fs::write(dir.join("renew"), "").unwrap();
    let ok = wait_until(Duration::from_secs(20), || apex.stderr().contains("the current certificate keeps serving"));
    assert!(ok, "{}", apex.stderr());
    assert_eq!(https_status(&root, "a.test", tls).0, "200");
    assert_eq!(https_status(&root, "b.test", tls).0, "200");
}

#[test]
fn a_challenge_that_fails_is_logged_with_the_cas_problem_and_retried_later() {
    // Pebble validates HTTP-01 on a port where nothing listens: the authorization goes invalid.
    let (http, tls, nobody) = (free_port(), free_port(), free_port());
    let p = Pebble::start(nobody, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-fail");
    let apex = Apex::start_toml(&apex_toml(&up, &p, http, tls, &state.path().join("acme"), "http-01"));
    let ok = wait_until(Duration::from_secs(30), || apex.stderr().contains("trying again in 4s"));
    let err = apex.stderr();
    assert!(ok, "{err}");
    assert!(err.contains("(http-01) is invalid: ") && err.contains("urn:ietf:params:acme:error:connection"), "{err}");
    assert!(err.contains("trying again in 2s") && !err.contains("acme: certificate for"), "{err}");
    assert!(!state.path().join("acme/cert.pem").exists(), "nothing stored");
}

#[test]
fn sighup_with_a_new_routed_name_orders_a_certificate_that_covers_it() {
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-hup");
    let toml = apex_toml(&up, &p, http, tls, &state.path().join("acme"), "auto");
    let apex = Apex::start_toml(&toml);
    wait_issued(&apex, &p, 1);
    let more = toml.replace("[upstream.app]", "[[route]]\nhost = \"c.test\"\nupstream = \"app\"\n[upstream.app]");
    std::fs::write(&apex.conf, more).unwrap();
    apex.signal("HUP");
    wait_issued(&apex, &p, 2);
    assert!(apex.stderr().contains("acme: certificate for a.test, b.test, c.test issued"), "{}", apex.stderr());
    let root = p.issuing_root();
    for name in ["a.test", "b.test", "c.test"] {
        assert_eq!(https_status(&root, name, tls).0, "200", "{name}");
    }
}

/// A front for Pebble's directory, on its own HTTPS port (a leaf of the same test root, so the
/// same `directory_ca` trusts both): `/dir` is Pebble's directory plus a `renewalInfo` URL of
/// its own (Debian's Pebble 2.4 predates RFC 9773), and `/ari/ID` answers renewal information:
/// for the first certificate asked about, a window that has passed (renew now); for any other,
/// one a month ahead. The first `refusals` directory requests get 503 with `Retry-After: 5`.
/// Everything else in the directory still points at Pebble.
struct Front {
    url: String,
    /// The request paths, in order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    fn start(p: &Pebble, refusals: usize) -> Front {
        let leaf = sign_leaf(&p.root.dir, "front", &["127.0.0.1"], &new_key(), &p.root.issuer, &[], |_| {});
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.ders.clone(), leaf.private_key())
            .unwrap();
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://{addr}/dir");
        let (code, dir) = curl(&p.root.ca, &p.dir_url, &[]);
        assert_eq!(code, "200", "pebble's directory");
        let mut dir: serde_json::Value = serde_json::from_str(&dir).unwrap();
        dir["renewalInfo"] = format!("https://{addr}/ari").into();
        let dir = dir.to_string();
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut refusals = refusals;
            let mut first_id: Option<String> = None;
            for sock in listener.incoming() {
                if stop2.load(SeqCst) {
                    return;
                }
                let Ok(sock) = sock else { continue };
                sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(Arc::clone(&cfg)).unwrap(), sock);
                let (mut req, mut tmp) = (Vec::new(), [0u8; 4096]);
                while !contains(&req, b"\r\n\r\n") {
                    match s.read(&mut tmp) {
                        Ok(n) if n > 0 => req.extend_from_slice(&tmp[..n]),
                        _ => break,
                    }
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                seen2.lock().unwrap().push(path.clone());
                let now = unix_now();
                let (status, extra, body) = if path == "/dir" && refusals > 0 {
                    refusals -= 1;
                    (
                        "503 Service Unavailable",
                        "Retry-After: 5\r\nContent-Type: application/problem+json\r\n",
                        r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"busy, come back later"}"#
                            .to_string(),
                    )
                } else if path == "/dir" {
                    ("200 OK", "Content-Type: application/json\r\n", dir.clone())
                } else if let Some(id) = path.strip_prefix("/ari/") {
                    let first = first_id.get_or_insert_with(|| id.to_string()) == id;
                    let (a, b) = if first { (now - 7200, now - 3600) } else { (now + 30 * 86_400, now + 31 * 86_400) };
                    (
                        "200 OK",
                        "Content-Type: application/json\r\nRetry-After: 21600\r\n",
                        format!(
                            r#"{{"suggestedWindow": {{"start": "{}", "end": "{}"}}, "explanationURL": "https://ca.test/why"}}"#,
                            rfc3339(a),
                            rfc3339(b)
                        ),
                    )
                } else {
                    ("404 Not Found", "", String::new())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.flush();
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        });
        Front { url, seen, stop, addr, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Unix seconds as an RFC 3339 UTC time, by the same civil-date arithmetic as Apex's log clock
/// but written out here (days to y-m-d, H. Hinnant).
fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The stored certificate's RFC 9773 identifier.
fn stored_id(state: &Path) -> String {
    let pem = std::fs::read(state.join("cert.pem")).unwrap();
    let leaf = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem).next().unwrap().unwrap();
    let leaf: rustls::pki_types::CertificateDer = leaf;
    apex::acme::cert_id(&leaf).expect("the CA's certificate has an Authority Key Identifier")
}

#[test]
fn ari_a_window_that_has_passed_renews_at_once_and_the_next_is_scheduled_inside_its_window() {
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let front = Front::start(&p, 0);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-ari");
    let mut p2 = apex_toml(&up, &p, http, tls, &state.path().join("acme"), "auto");
    p2 = p2.replace(&p.dir_url, &front.url);
    let apex = Apex::start_toml(&p2);
    // The first certificate's window has passed: a second order at once, then the CA's
    // answer about the second one (a month ahead) is the schedule.
    wait_issued(&apex, &p, 2);
    let ok =
        wait_until(Duration::from_secs(20), || apex.stderr().matches("acme: the CA suggests renewing").count() >= 2);
    let err = apex.stderr();
    assert!(ok, "{err}");
    let ids: Vec<String> = front.seen().iter().filter_map(|p| p.strip_prefix("/ari/").map(str::to_string)).collect();
    assert_eq!(ids.len(), 2, "one question per certificate: {ids:?}\n{err}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[1], stored_id(&state.path().join("acme")), "the question names the serving certificate");
    assert!(err.contains("(the CA explains: https://ca.test/why)"), "{err}");
    assert_eq!(apex.stderr().matches("acme: certificate for").count(), 2, "no third order: {err}");
    // The second schedule: a time inside the window it was given.
    let line = err.lines().filter(|l| l.contains("acme: the CA suggests renewing")).nth(1).unwrap();
    let field = |after: &str| {
        line.split(after).nth(1).unwrap().split_whitespace().next().unwrap().trim_end_matches(';').to_string()
    };
    let (start, end, due) = (field(" between "), field(" and "), field("renewal due at "));
    assert!(start <= due && due < end, "{start} <= {due} < {end}: {line}");
    let root = p.issuing_root();
    assert_eq!(https_status(&root, "a.test", tls).0, "200");
}

#[test]
fn a_directory_refused_with_retry_after_is_asked_again_no_sooner() {
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let front = Front::start(&p, 1);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-retry");
    let toml = apex_toml(&up, &p, http, tls, &state.path().join("acme"), "auto").replace(&p.dir_url, &front.url);
    let apex = Apex::start_toml(&toml);
    wait_issued(&apex, &p, 1);
    let err = apex.stderr();
    // RFC 8555 §6.6: the CA's 5 s, not the 2 s first back-off.
    assert!(err.contains("busy, come back later") && err.contains("trying again in 5s"), "{err}");
    assert!(front.seen().iter().filter(|p| *p == "/dir").count() >= 2);
}

#[test]
fn bad_nonces_are_retried_with_the_nonce_they_carry_and_a_ca_refusing_all_is_a_clear_failure() {
    // Half of all nonces refused: the order still completes, each refusal retried (debug log).
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start_env(http, tls, &[("PEBBLE_WFE_NONCEREJECT", "50")]);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-nonce");
    let toml = apex_toml(&up, &p, http, tls, &state.path().join("acme"), "auto");
    let apex = Apex::start_toml(&format!("{toml}[log]\nlevel = \"debug\"\n"));
    wait_issued(&apex, &p, 1);
    assert!(apex.stderr().contains("badNonce; again with the nonce it carried"), "{}", apex.stderr());
    drop(apex);
    drop(p);

    // Every nonce refused: a bounded number of tries, then a failure that says so, and back-off.
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start_env(http, tls, &[("PEBBLE_WFE_NONCEREJECT", "100")]);
    let state = TempDir::new("acme-nonce-all");
    let toml = apex_toml(&up, &p, http, tls, &state.path().join("acme"), "auto");
    let apex = Apex::start_toml(&format!("{toml}[log]\nlevel = \"debug\"\n"));
    let ok = wait_until(Duration::from_secs(20), || {
        apex.stderr().contains("nonces in a row (badNonce); trying again in 2s")
    });
    let err = apex.stderr();
    assert!(ok, "{err}");
    let first = err.split("nonces in a row").next().unwrap();
    assert_eq!(first.matches("badNonce; again with the nonce it carried").count(), 10, "{err}");
    assert!(!err.contains("acme: certificate for"), "{err}");
}

#[test]
fn a_stored_certificate_is_renewed_two_thirds_into_its_lifetime() {
    let (http, tls) = (free_port(), free_port());
    let p = Pebble::start(http, tls);
    let up = Upstream::ok("hello from app");
    let state = TempDir::new("acme-two-thirds");
    let dir = state.path().join("acme");
    std::fs::create_dir_all(&dir).unwrap();
    // A certificate of 150 s, 98 s old: two thirds (100 s) in 2 s.
    let seed = |dir: &Path, age: u64, life: u64| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(vec!["a.test".to_string(), "b.test".to_string()]).unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let born = unix_now() as u64 - age;
        cp.not_before = epoch + Duration::from_secs(born);
        cp.not_after = epoch + Duration::from_secs(born + life);
        let pem = format!("{}{}", cp.self_signed(&key).unwrap().pem(), key.serialize_pem());
        std::fs::write(dir.join("cert.pem"), pem).unwrap();
    };
    seed(&dir, 98, 150);
    let toml = apex_toml(&up, &p, http, tls, &dir, "auto");
    let apex = Apex::start_toml(&toml);
    wait_issued(&apex, &p, 1);
    let err = apex.stderr();
    let due = err.split("renewal due in ").nth(1).unwrap().split('s').next().unwrap().parse::<i64>().unwrap();
    assert!((1..=3).contains(&due), "due in {due}s, want about 2 s: {err}");
    let root = p.issuing_root();
    assert_eq!(https_status(&root, "b.test", tls).0, "200", "served by the renewed certificate");
    drop(apex);

    // One a day old of ninety: renewal due on day sixty, nothing ordered now.
    let state = TempDir::new("acme-two-thirds-later");
    let dir = state.path().join("acme");
    std::fs::create_dir_all(&dir).unwrap();
    seed(&dir, 86_400, 90 * 86_400);
    let apex = Apex::start_toml(&apex_toml(&up, &p, http, tls, &dir, "auto"));
    let ok = wait_until(Duration::from_secs(10), || apex.stderr().contains("acme: serving the stored certificate"));
    let err = apex.stderr();
    assert!(ok, "{err}");
    let due = err.split("renewal due in ").nth(1).unwrap().split('s').next().unwrap().parse::<i64>().unwrap();
    assert!((59 * 86_400 - 2..=59 * 86_400).contains(&due), "due in {due}s: {err}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!apex.stderr().contains("acme: answering"), "{}", apex.stderr());
}
