//! `[tls.acme]` against a real ACME server: Debian's Pebble (Let's Encrypt's RFC 8555 test CA)
//! with pebble-challtestsrv as its DNS, resolving every name to 127.0.0.1, so Pebble validates
//! the challenges against Apex's own listeners (its `httpPort` / `tlsPort` are Apex's ports).
//! Pebble keeps its defaults: 5% of nonces rejected (badNonce) and authorizations reused.
//! Then curl, trusting Pebble's root from its management API (`/roots/0`), gets 200 over the
//! new certificate.

use crate::harness::*;
use crate::tls_kit::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
