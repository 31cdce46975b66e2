//! CLI and config validation: `apex --check`, `--version`, `--help`, bad configs name FILE:LINE.

use crate::harness::*;

const BASE: &[&str] = &[
    r#"listen = ["127.0.0.1:0"]"#,  // 1
    "workers = 1",                  // 2
    "",                             // 3
    "[timeouts]",                   // 4
    r#"client_head = "10s""#,       // 5
    "",                             // 6
    "[[route]]",                    // 7
    r#"host = "*""#,                // 8
    r#"path = "/""#,                // 9
    r#"upstream = "app""#,          // 10
    "",                             // 11
    "[upstream.app]",               // 12
    r#"servers = ["127.0.0.1:9"]"#, // 13
    r#"cooldown = "10s""#,          // 14
];

/// BASE with line `n` (1-based) replaced, plus `extra` lines appended.
fn variant(replace: &[(usize, &str)], extra: &[&str]) -> String {
    let mut lines: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
    for (n, text) in replace {
        lines[n - 1] = text.to_string();
    }
    for e in extra {
        lines.push(e.to_string());
    }
    lines.join("\n") + "\n"
}

/// Line numbers `FILE:N:` that stderr mentions for `file`.
fn lines_named(stderr: &str, file: &str) -> Vec<usize> {
    let pat = format!("{file}:");
    let mut out = vec![];
    let mut rest = stderr;
    while let Some(i) = rest.find(&pat) {
        rest = &rest[i + pat.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(':') {
            out.push(digits.parse().unwrap());
        }
    }
    out
}

/// Asserts both `apex --check FILE` and `apex FILE` reject `toml` naming FILE:LINE with LINE in
/// `lines`, and that stderr mentions one of `words` (case-insensitive; empty = no check).
pub(crate) fn check_bad(toml: &str, lines: std::ops::RangeInclusive<usize>, words: &[&str]) {
    let dir = TempDir::new("badcfg");
    let file = dir.write("bad.toml", toml);
    let file_s = file.to_str().unwrap();
    for (mode, args) in [("--check", vec!["--check", file_s]), ("run", vec![file_s])] {
        let (code, _out, err) = run_apex(&args);
        assert!(!err.contains("panicked"), "{mode}: apex panicked:\n{err}\nconfig:\n{toml}");
        if mode == "--check" {
            assert_eq!(code, Some(1), "{mode}: exit code; stderr:\n{err}\nconfig:\n{toml}");
        } else {
            assert!(code.is_some() && code != Some(0), "{mode}: exit code {code:?}; stderr:\n{err}");
        }
        let named = lines_named(&err, file_s);
        assert!(
            named.iter().any(|n| lines.contains(n)),
            "{mode}: stderr must contain `{file_s}:LINE:` with LINE in {lines:?}; got lines \
             {named:?}; stderr:\n{err}\nconfig:\n{toml}"
        );
        if !words.is_empty() {
            let low = err.to_ascii_lowercase();
            assert!(
                words.iter().any(|w| low.contains(&w.to_ascii_lowercase())),
                "{mode}: stderr should name the problem (one of {words:?}):\n{err}"
            );
        }
    }
}

#[test]
fn check_accepts_shipped_apex_toml() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/apex.toml");
    let (code, _out, err) = run_apex(&["--check", path]);
    assert_eq!(code, Some(0), "apex --check apex.toml; stderr:\n{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn check_accepts_minimal_config() {
    let dir = TempDir::new("goodcfg");
    let file = dir.write("good.toml", &variant(&[], &[]));
    let (code, _out, err) = run_apex(&["--check", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stderr:\n{err}");
}

#[test]
fn check_accepts_sizes_and_durations_in_all_forms() {
    let dir = TempDir::new("goodcfg2");
    let toml = variant(
        &[(5, r#"client_head = "250ms""#)],
        &[
            "[limits]",
            "head_bytes = 8192",
            r#"body_bytes = "1MiB""#,
            "headers = 50",
            "",
            "[[route]]",
            r#"host = "*.example.com""#,
            r#"path = "/api""#,
            r#"upstream = "app""#,
        ],
    );
    let file = dir.write("good.toml", &toml);
    let (code, _out, err) = run_apex(&["--check", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stderr:\n{err}\nconfig:\n{toml}");
}

#[test]
fn version_prints_name_and_version() {
    let (code, out, err) = run_apex(&["--version"]);
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert_eq!(out.trim(), format!("apex {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_prints_usage_and_exits_zero() {
    let (code, out, err) = run_apex(&["--help"]);
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert!(out.to_ascii_lowercase().contains("usage"), "stdout:\n{out}");
}

#[test]
fn no_args_prints_usage_on_stderr_and_exits_2() {
    let (code, _out, err) = run_apex(&[]);
    assert_eq!(code, Some(2));
    assert!(err.to_ascii_lowercase().contains("usage"), "stderr:\n{err}");
}

#[test]
fn check_missing_file_fails_naming_it() {
    let path = "/nonexistent-apex-it/none.toml";
    let (code, _out, err) = run_apex(&["--check", path]);
    assert_eq!(code, Some(1), "stderr:\n{err}");
    assert!(err.contains(path), "stderr must name the file:\n{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_config_unknown_key() {
    check_bad(&variant(&[(5, r#"client_hed = "10s""#)], &[]), 5..=5, &["client_hed"]);
}

#[test]
fn bad_config_unknown_key_in_route() {
    check_bad(&variant(&[(8, r#"hots = "*""#)], &[]), 8..=8, &["hots"]);
}

#[test]
fn bad_config_bad_listen_address() {
    check_bad(&variant(&[(1, r#"listen = ["127.0.0.1:99999"]"#)], &[]), 1..=1, &["address", "99999"]);
}

#[test]
fn bad_config_bad_server_address() {
    check_bad(&variant(&[(13, r#"servers = ["not-an-address"]"#)], &[]), 13..=13, &["address", "not-an-address"]);
}

#[test]
fn bad_config_duplicate_route() {
    let toml = variant(&[], &["", "[[route]]", r#"host = "*""#, r#"path = "/""#, r#"upstream = "app""#]);
    // lines 15 (blank) .. 19: the second route
    check_bad(&toml, 16..=19, &["duplicate", "route"]);
}

#[test]
fn bad_config_empty_upstream_group() {
    check_bad(&variant(&[(13, "servers = []")], &[]), 12..=13, &["empty", "servers"]);
}

#[test]
fn bad_config_route_to_unknown_group() {
    check_bad(&variant(&[(10, r#"upstream = "nope""#)], &[]), 7..=10, &["nope"]);
}

#[test]
fn bad_config_zero_timeout() {
    check_bad(&variant(&[(5, r#"client_head = "0s""#)], &[]), 5..=5, &["client_head", "zero", "0s", "positive"]);
}

#[test]
fn bad_config_toml_syntax_error() {
    check_bad(&variant(&[(8, "host = *")], &[]), 8..=8, &[]);
}

#[test]
fn durations_accept_integer_seconds() {
    let dir = TempDir::new("intdur");
    let toml = variant(&[(5, "client_head = 60"), (14, "cooldown = 0")], &[]);
    let file = dir.write("good.toml", &toml);
    let (code, out, err) = run_apex(&["--check", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stderr:\n{err}\nconfig:\n{toml}");
    assert!(out.contains("client_head = \"60s\"\n"), "{out}");
}

#[test]
fn bad_config_duration_of_the_wrong_type_says_how_to_write_it() {
    for bad in ["client_head = 1.5", "client_head = -3", "client_head = true"] {
        check_bad(&variant(&[(5, bad)], &[]), 5..=5, &["\"10s\""]);
    }
}

/// `apex FILE` started by `sh` with `ulimit -n LIMIT` (soft and hard); killed on drop.
struct Limited {
    child: std::process::Child,
    err: std::path::PathBuf,
}

impl Limited {
    fn start(limit: u32, conf: &std::path::Path, dir: &TempDir) -> Limited {
        use std::io::BufRead;
        let err = dir.path().join("stderr");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} || exit 99; exec \"$0\" \"$1\""))
            .arg(APEX)
            .arg(conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(out.lines().next().and_then(Result::ok).unwrap_or_default());
        });
        let mut me = Limited { child, err };
        let first = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_default();
        assert!(first.starts_with("apex: listening on "), "stdout: {first:?}; stderr:\n{}", me.stderr());
        assert_eq!(me.child.try_wait().unwrap(), None);
        me
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped apex.toml (on port 0) starts without a warning where `ulimit -n` is 1024: its
/// `connections = 0` is sized from the limit. A number the limit cannot carry still warns.
#[test]
fn shipped_config_starts_quietly_with_ulimit_1024() {
    let shipped = include_str!("../../apex.toml");
    assert!(shipped.contains("listen = [\"127.0.0.1:8080\"]"));
    let text = shipped.replace("listen = [\"127.0.0.1:8080\"]", "listen = [\"127.0.0.1:0\"]");
    let dir = TempDir::new("ulimit");
    let file = dir.write("apex.toml", &text);
    let apex = Limited::start(1024, &file, &dir);
    // A warning, if any, is printed before the listening line.
    let err = apex.stderr();
    assert!(!err.contains("warn"), "the shipped config warned:\n{err}");
    drop(apex);

    let explicit = text.replace("connections = 0 ", "connections = 10000 ");
    assert_ne!(explicit, text);
    let file = dir.write("explicit.toml", &explicit.replace("workers = 0", "workers = 2"));
    let apex = Limited::start(1024, &file, &dir);
    let err = apex.stderr();
    assert!(
        err.contains("warn: the open-file limit (1024) allows 500 client connections per worker"),
        "an explicit connections = 10000 on 2 workers needs a warning:\n{err}"
    );
}

/// README's set-up is two commands, the tests first, then the run command, said to stay in the
/// foreground.
#[test]
fn readme_setup_tests_first_then_runs() {
    let readme = include_str!("../../README.md");
    let setup = readme.split("## Set-up").nth(1).unwrap();
    let block = setup.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let cmds: Vec<&str> =
        block.lines().map(|l| l.split('#').next().unwrap().trim()).filter(|l| !l.is_empty()).collect();
    assert_eq!(cmds, ["cargo test --release", "cargo run --release -- apex.toml"], "{block}");
    let after = setup.split("```").nth(2).unwrap();
    assert!(after.contains("foreground"), "{after}");
    assert!(readme.contains("cargo install --path ."));
}

/// apex(1) documents every option `--help` lists, and the units run the binary the Debian
/// package installs, with the config it installs.
#[test]
fn man_page_and_units_match_the_binary() {
    let man = include_str!("../../packaging/apex.1");
    let (_, help, _) = run_apex(&["--help"]);
    for word in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let roff = word.replace('-', "\\-");
        assert!(man.contains(&roff), "apex.1 does not document {word}");
    }
    let unit = include_str!("../../packaging/apex.service");
    assert!(unit.contains("ExecStart=/usr/bin/apex /etc/apex/apex.toml\n"), "{unit}");
    assert!(unit.contains("Type=notify\n") && unit.contains("NotifyAccess=all\n"), "{unit}");
    let cargo = include_str!("../../Cargo.toml");
    assert!(cargo.contains(r#"["target/release/apex", "usr/bin/", "755"]"#));
    assert!(cargo.contains(r#"["apex.toml", "etc/apex/apex.toml", "644"]"#));
}
