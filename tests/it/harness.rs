//! Shared harness: the Apex process guard, a config builder, a raw HTTP/1.1 client and
//! scriptable upstream servers that record the exact bytes they receive.
//! Invariants: everything binds 127.0.0.1:0; every socket has a timeout; every wait is bounded;
//! the Apex child is killed when its guard drops; an upstream stops when its guard drops.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const APEX: &str = env!("CARGO_BIN_EXE_apex");
/// Socket timeout for test clients: a hang guard, never a timing assertion.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an upstream connection waits for bytes before giving up.
const UP_DEADLINE: Duration = Duration::from_secs(30);
const UP_POLL: Duration = Duration::from_millis(50);

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- temp dirs

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("apex-it-{}-{}-{tag}", std::process::id(), SEQ.fetch_add(1, SeqCst)));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- config builder

/// Builds an apex.toml listening on 127.0.0.1:0 with `workers = 1` unless changed.
#[derive(Clone)]
pub struct Config {
    workers: u32,
    timeouts: Vec<(String, String)>,
    limits: Vec<(String, String)>,
    routes: Vec<[String; 4]>,
    groups: Vec<(String, Vec<SocketAddr>, Option<String>)>,
    extra: String,
}

impl Config {
    pub fn new() -> Self {
        Self { workers: 1, timeouts: vec![], limits: vec![], routes: vec![], groups: vec![], extra: String::new() }
    }
    /// One catch-all route to one group "app" holding `addr`.
    pub fn to(addr: SocketAddr) -> Self {
        Self::new().route("*", "/", "app").group("app", &[addr])
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }
    /// `v` is a duration string without quotes: "300ms".
    pub fn timeout(mut self, k: &str, v: &str) -> Self {
        self.timeouts.push((k.into(), format!("\"{v}\"")));
        self
    }
    /// `v` is a raw TOML value: `10` or `"1KiB"`.
    pub fn limit(mut self, k: &str, v: &str) -> Self {
        self.limits.push((k.into(), v.into()));
        self
    }
    pub fn route(mut self, host: &str, path: &str, group: &str) -> Self {
        self.routes.push([host.into(), path.into(), group.into(), String::new()]);
        self
    }
    /// Raw TOML lines for the last route added (`retry = { … }`).
    pub fn route_extra(mut self, toml: &str) -> Self {
        if let Some(r) = self.routes.last_mut() {
            r[3] += toml;
            r[3] += "\n";
        }
        self
    }
    pub fn group(mut self, name: &str, servers: &[SocketAddr]) -> Self {
        self.groups.push((name.into(), servers.to_vec(), None));
        self
    }
    pub fn group_cooldown(mut self, name: &str, servers: &[SocketAddr], cooldown: &str) -> Self {
        self.groups.push((name.into(), servers.to_vec(), Some(cooldown.into())));
        self
    }
    /// Appends raw TOML after everything else: whole tables, such as a `[tls]` section.
    pub fn append(mut self, toml: &str) -> Self {
        self.extra += "\n";
        self.extra += toml;
        self
    }
    pub fn render(&self) -> String {
        let mut t = String::from("listen = [\"127.0.0.1:0\"]\n");
        t += &format!("workers = {}\n", self.workers);
        if !self.timeouts.is_empty() {
            t += "\n[timeouts]\n";
            for (k, v) in &self.timeouts {
                t += &format!("{k} = {v}\n");
            }
        }
        if !self.limits.is_empty() {
            t += "\n[limits]\n";
            for (k, v) in &self.limits {
                t += &format!("{k} = {v}\n");
            }
        }
        for [h, p, g, extra] in &self.routes {
            t += &format!("\n[[route]]\nhost = \"{h}\"\npath = \"{p}\"\nupstream = \"{g}\"\n{extra}");
        }
        for (name, servers, cooldown) in &self.groups {
            let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
            t += &format!("\n[upstream.{name}]\nservers = [{}]\n", list.join(", "));
            if let Some(c) = cooldown {
                t += &format!("cooldown = \"{c}\"\n");
            }
        }
        t += &self.extra;
        t
    }
}

// ---------------------------------------------------------------- other servers

/// A server program a test runs in the foreground (nginx, HAProxy) on `addr`; killed when it
/// drops.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Daemon {
    /// Runs `bin` (from PATH, else /usr/sbin, which is not on every user's PATH) with `args`,
    /// its stderr kept in `dir` (which lives as long as it does), and waits up to 10 s for it
    /// to listen on `addr`. `None` when it is not installed (the caller says SKIPPED).
    pub fn start(bin: &str, args: &[&std::ffi::OsStr], addr: SocketAddr, dir: TempDir) -> Option<Daemon> {
        let stderr = dir.path().join(format!("{bin}.stderr"));
        let spawn = |path: &str| {
            Command::new(path)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&stderr).unwrap())
                .spawn()
        };
        let child = match spawn(bin).or_else(|_| spawn(&format!("/usr/sbin/{bin}"))) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => panic!("spawn {bin}: {e}"),
        };
        let d = Daemon { child, addr, _dir: dir };
        let up = wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
        assert!(up, "{bin} did not listen on {addr} within 10 s: {}", fs::read_to_string(&stderr).unwrap_or_default());
        Some(d)
    }
}

impl Daemon {
    /// SIGKILL: the process and its sockets go at once, as a crashed server's do.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx in the foreground as one process (`master_process off`: a kill ends all of it) on a
/// spare port, its one server block's directives from `server(addr)`. `None` when it is not
/// installed (the caller says SKIPPED).
pub fn nginx_with(server: impl Fn(SocketAddr) -> String) -> Option<Daemon> {
    let dir = TempDir::new("nginx");
    let addr = dead_addr();
    let d = dir.path().display();
    let conf = dir.write(
        "nginx.conf",
        &format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/b;\n\
             proxy_temp_path {d}/p;\n  fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
             server {{\n{}\n  }}\n}}\n",
            server(addr)
        ),
    );
    let (prefix, log) = (dir.path().to_path_buf(), dir.path().join("error.log"));
    let args = ["-p".as_ref(), prefix.as_os_str(), "-e".as_ref(), log.as_os_str(), "-c".as_ref(), conf.as_os_str()];
    Daemon::start("nginx", &args, addr, dir)
}

// ---------------------------------------------------------------- the Apex process

/// A running `apex FILE`; killed on drop.
pub struct Apex {
    child: Child,
    /// The first plain listener (`apex: listening on ADDR`).
    pub addr: SocketAddr,
    /// The first TLS listener (`apex: listening on ADDR tls`), when the config has `[tls]`.
    pub tls_addr: Option<SocketAddr>,
    /// The config file Apex was started with (rewrite it, then `signal("HUP")`, to reload).
    pub conf: PathBuf,
    stderr_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Apex {
    pub fn start(cfg: &Config) -> Apex {
        Self::start_toml(&cfg.render())
    }

    pub fn start_toml(toml: &str) -> Apex {
        Self::start_in(toml, None)
    }

    /// `start_toml` in a mount namespace of its own whose /etc/hosts is `hosts` (`unshare -m`;
    /// needs root, as CI runs). Rewriting `hosts` in place changes what Apex resolves.
    pub fn start_with_hosts(toml: &str, hosts: &Path) -> Apex {
        Self::start_in(toml, Some(hosts))
    }

    fn start_in(toml: &str, hosts: Option<&Path>) -> Apex {
        let dir = TempDir::new("run");
        let conf = dir.write("apex.toml", toml);
        let stderr_path = dir.path().join("stderr");
        // Plain listeners are announced first, then TLS ones: with TLS, wait for the first TLS line.
        let wants_tls =
            toml.lines().map(str::trim).any(|l| l == "[tls]" || l.starts_with("[[tls.") || l.starts_with("[tls."));
        let mut cmd = match hosts {
            None => Command::new(APEX),
            Some(h) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$1\" \"$2\""]).arg(h).arg(APEX);
                c
            }
        };
        let mut child = cmd
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn apex");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        thread::spawn(move || {
            // Keeps draining stdout for the life of the child so it never blocks on a full pipe.
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                if let Some(a) = line.strip_prefix("apex: listening on ") {
                    let a = a.trim();
                    let _ = match a.strip_suffix(" tls") {
                        Some(a) => tx.send((a.trim().to_string(), true)),
                        None => tx.send((a.to_string(), false)),
                    };
                }
            }
        });
        let mut apex =
            Apex { child, addr: "0.0.0.0:0".parse().unwrap(), tls_addr: None, conf, stderr_path, stdout, _dir: dir };
        let (mut plain, deadline) = (None, Instant::now() + Duration::from_secs(10));
        while !(if wants_tls { apex.tls_addr.is_some() } else { plain.is_some() }) {
            let (a, tls) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
                panic!(
                    "apex did not print `apex: listening on ADDR{}` within 10 s; config:\n{toml}\nstderr:\n{}",
                    if wants_tls { " tls" } else { "" },
                    apex.stderr()
                )
            });
            let a: SocketAddr = a.parse().unwrap_or_else(|_| panic!("bad listening address {a:?}"));
            if tls {
                apex.tls_addr.get_or_insert(a);
            } else {
                plain.get_or_insert(a);
            }
        }
        // A TLS-only config leaves `addr` at 0.0.0.0:0.
        if let Some(a) = plain {
            apex.addr = a;
        }
        apex
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines Apex has printed on stdout so far (listening lines, access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Peak resident set size (VmHWM) of the apex process, in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends a signal by name ("HUP", "TERM", ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap().success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits at most `d` for the process to exit; its exit code, or None if still running.
    pub fn wait_exit(&mut self, d: Duration) -> Option<i32> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or(-1));
            }
            thread::sleep(ms(10));
        }
        None
    }

    /// Waits until stderr contains `needle` at least `n` times (bounded).
    pub fn wait_stderr(&self, needle: &str, n: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.stderr().matches(needle).count() < n {
            assert!(Instant::now() < end, "stderr never had {n} x {needle:?}:\n{}", self.stderr());
            thread::sleep(ms(2));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A client whose receive buffer is `bytes`, set before connecting (a buffer shrunk after
    /// the handshake makes the kernel drop segments and back off, which tests nothing of Apex).
    pub fn client_small_rcvbuf(&self, bytes: usize) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(bytes).unwrap();
        s.connect_timeout(&self.addr.into(), Duration::from_secs(5)).expect("connect to apex");
        Client::from_stream(s.into())
    }
}

impl Drop for Apex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `apex ARGS` to completion (killed after 10 s): (exit code, stdout, stderr).
pub fn run_apex(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = TempDir::new("cli");
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    let mut child = Command::new(APEX)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_p).unwrap())
        .stderr(File::create(&err_p).unwrap())
        .spawn()
        .expect("spawn apex");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(ms(10));
    };
    let out = fs::read_to_string(&out_p).unwrap_or_default();
    let err = fs::read_to_string(&err_p).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("apex {args:?} still running after 10 s; stdout:\n{out}\nstderr:\n{err}"));
    (status.code(), out, err)
}

// ---------------------------------------------------------------- HTTP parsing helpers

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Parses "Name: value" lines after the start line. Values are trimmed.
fn parse_fields(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut fields = vec![];
    for l in lines {
        if l.is_empty() {
            continue;
        }
        match l.split_once(':') {
            Some((n, v)) => fields.push((n.to_string(), v.trim().to_string())),
            None => fields.push((l.to_string(), String::new())),
        }
    }
    (start, fields)
}

fn get_field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn all_fields<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

fn has_token(fields: &[(String, String)], name: &str, token: &str) -> bool {
    all_fields(fields, name).iter().flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Strict decoder for a chunked body that starts at `b[0]`. Returns (decoded, bytes used),
/// or None while incomplete; Err on a framing error.
pub fn decode_chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut out = vec![];
    loop {
        let Some(eol) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = &b[pos..pos + eol];
        let size_part = line.split(|&c| c == b';').next().unwrap_or(b"");
        let size_str = std::str::from_utf8(size_part).map_err(|_| "non-utf8 size".to_string())?;
        let size = usize::from_str_radix(size_str.trim(), 16)
            .map_err(|_| format!("bad chunk size line {:?}", String::from_utf8_lossy(line)))?;
        pos += eol + 2;
        if size == 0 {
            // trailers until an empty line
            loop {
                let Some(eol) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((out, pos)));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

/// Checks that `raw` is canonical chunked framing: `<hex>\r\n<data>\r\n`... `0\r\n\r\n`, no
/// extensions, no trailers, nothing after. Returns the decoded body.
pub fn canonical_chunked(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let mut out = vec![];
    loop {
        let eol = find(&raw[pos..], b"\r\n").ok_or("unterminated size line")?;
        let line = &raw[pos..pos + eol];
        if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("non-canonical size line {:?}", String::from_utf8_lossy(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(line).unwrap(), 16).map_err(|e| e.to_string())?;
        pos += eol + 2;
        if size == 0 {
            if &raw[pos..] != b"\r\n" {
                return Err(format!(
                    "after last chunk expected exactly CRLF, got {:?}",
                    String::from_utf8_lossy(&raw[pos..])
                ));
            }
            return Ok(out);
        }
        if raw.len() < pos + size + 2 || &raw[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data length mismatch".into());
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
    }
}

pub fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![];
    for p in parts {
        v.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

// ---------------------------------------------------------------- client

#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        get_field(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        all_fields(&self.headers, name)
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        has_token(&self.headers, name, token)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// What a client sees when it waits on a connection.
#[derive(PartialEq)]
pub enum Seen {
    Closed,
    Data(Vec<u8>),
    Silent,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Closed => write!(f, "Closed"),
            Seen::Silent => write!(f, "Silent"),
            Seen::Data(d) => write!(f, "Data({:?})", String::from_utf8_lossy(d)),
        }
    }
}

pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to apex"))
    }

    /// Connects from the loopback address `local` (any of 127.0.0.0/8): a distinct client address.
    pub fn connect_from(local: std::net::Ipv4Addr, addr: SocketAddr) -> Client {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((local, 0)).into()).unwrap();
        s.connect_timeout(&addr.into(), Duration::from_secs(5)).expect("connect to apex");
        Client::from_stream(s.into())
    }

    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: vec![] }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to apex");
    }

    /// A write that may fail because Apex already answered and closed.
    pub fn try_send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.s.set_read_timeout(Some(d)).unwrap();
    }

    /// Sends `req` and reads one final response (1xx skipped).
    pub fn request(&mut self, req: &[u8]) -> Response {
        self.send(req);
        self.read_final_response()
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false).unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true).unwrap_or_else(|e| panic!("reading response to HEAD: {e}"))
    }

    pub fn read_final_response(&mut self) -> Response {
        for _ in 0..10 {
            let r = self.read_response();
            if !(100..200).contains(&r.status) {
                return r;
            }
        }
        panic!("more than 10 interim responses")
    }

    /// Reads one response; `no_body` for a response to HEAD.
    pub fn try_read_response(&mut self, no_body: bool) -> Result<Response, String> {
        let s = &mut self.s;
        read_response_from(&mut self.buf, no_body, |buf| fill_from(s, buf))
    }

    /// Reads body bytes after `try_read_response(true)`: buffered bytes first, then the socket.
    pub fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(n);
        }
        read_retrying(&mut self.s, out)
    }

    /// Reads raw bytes until they contain `needle` (or close / 5 s); returns all read.
    pub fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = std::mem::take(&mut self.buf);
        let mut tmp = [0u8; 4096];
        while !contains(&got, needle) && Instant::now() < deadline {
            self.s.set_read_timeout(Some(ms(100))).unwrap();
            match read_retrying(&mut self.s, &mut tmp) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        self.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        got
    }

    /// Waits up to `d` for something to happen on the connection.
    pub fn wait(&mut self, d: Duration) -> Seen {
        if !self.buf.is_empty() {
            return Seen::Data(std::mem::take(&mut self.buf));
        }
        self.s.set_read_timeout(Some(d)).unwrap();
        let mut tmp = [0u8; 65536];
        let r = read_retrying(&mut self.s, &mut tmp);
        self.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match r {
            Ok(0) => Seen::Closed,
            Ok(n) => Seen::Data(tmp[..n].to_vec()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Seen::Silent,
            Err(_) => Seen::Closed,
        }
    }

    /// Reads until EOF/reset or `d` passes; returns (bytes, closed).
    pub fn read_until_close(&mut self, d: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + d;
        let mut out = std::mem::take(&mut self.buf);
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, false);
            }
            self.s.set_read_timeout(Some(left.max(ms(1)))).unwrap();
            match read_retrying(&mut self.s, &mut tmp) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return (out, false);
                }
                Err(_) => return (out, true),
            }
        }
    }

    /// Asserts that Apex closes the connection within 5 s without sending more bytes.
    pub fn assert_closed(&mut self) {
        match self.wait(Duration::from_secs(5)) {
            Seen::Closed => {}
            Seen::Data(d) => {
                panic!("expected the connection to close, got more bytes: {:?}", String::from_utf8_lossy(&d))
            }
            Seen::Silent => panic!("expected the connection to close; still open after 5 s"),
        }
    }
}

/// Reads from `s` and appends to `buf`: the `fill` of `read_response_from` for a plain socket.
fn fill_from(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; 65536];
    let n = read_retrying(s, &mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// Parses one response from `buf`, calling `fill(buf)` to append more bytes (Ok(0) at EOF);
/// consumed bytes are drained, the rest stay in `buf`. `no_body` for a response to HEAD. Used by
/// `Client` and by any other transport (the TLS client in tls.rs).
pub fn read_response_from(
    buf: &mut Vec<u8>,
    no_body: bool,
    mut fill: impl FnMut(&mut Vec<u8>) -> io::Result<usize>,
) -> Result<Response, String> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match fill(buf) {
            Ok(0) => {
                return Err(format!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(format!("{e} before a complete response head; got {:?}", String::from_utf8_lossy(buf)));
            }
        }
    };
    let head: Vec<u8> = buf.drain(..head_len).collect();
    let text = String::from_utf8_lossy(&head[..head_len - 4]).into_owned();
    let (start, headers) = parse_fields(&text);
    let mut parts = start.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {start:?}"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut r = Response { version, status, reason, headers, head, body: vec![] };
    if no_body || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(r);
    }
    if has_token(&r.headers, "transfer-encoding", "chunked") {
        loop {
            match decode_chunked(buf)? {
                Some((body, used)) => {
                    buf.drain(..used);
                    r.body = body;
                    return Ok(r);
                }
                None => match fill(buf) {
                    Ok(0) => return Err("closed inside chunked body".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("{e} inside chunked body")),
                },
            }
        }
    }
    if let Some(cl) = r.header("content-length") {
        let n: usize = cl.parse().map_err(|_| format!("bad Content-Length {cl:?}"))?;
        while buf.len() < n {
            match fill(buf) {
                Ok(0) => {
                    return Err(format!("closed after {} of {n} body bytes", buf.len()));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!("{e} after {} of {n} body bytes", buf.len()));
                }
            }
        }
        r.body = buf.drain(..n).collect();
        return Ok(r);
    }
    // close-delimited
    loop {
        match fill(buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("{e} inside close-delimited body")),
        }
    }
    r.body = std::mem::take(buf);
    Ok(r)
}

/// A read that retries EINTR (a socket with SO_RCVTIMEO is never restarted by the kernel).
fn read_retrying(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `GET path` with Host.
pub fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Asserts an error response generated by Apex itself.
pub fn assert_apex_status(r: &Response, code: u16) {
    assert_eq!(r.status, code, "status; response head:\n{}", r.head_str());
    assert_eq!(r.version, "HTTP/1.1", "status line version: {}", r.head_str());
    assert!(!r.reason.trim().is_empty(), "status line without reason: {}", r.head_str());
    assert!(r.header("content-length").is_some(), "no Content-Length: {}", r.head_str());
}

/// Polls `cond` every 20 ms for up to `d`; returns whether it held.
pub fn wait_until(d: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(ms(20));
    }
}

/// An upstream that answers with the X-Forwarded-For it got ("-": none).
pub fn xff_upstream() -> Upstream {
    Upstream::http(|r| ok(r.header("x-forwarded-for").unwrap_or("-")))
}

/// The access-log line (Apex's stdout) of the request `GET path`, once written, in either format.
pub fn logged(apex: &Apex, path: &str) -> String {
    let (combined, json) = (format!("GET {path} "), format!("\"target\":\"{path}\""));
    let find = || apex.stdout_lines().into_iter().find(|l| l.contains(&combined) || l.contains(&json));
    wait_until(Duration::from_secs(5), || find().is_some());
    find().unwrap_or_else(|| panic!("no access-log line for {path}: {:#?}", apex.stdout_lines()))
}

/// `n` clients at once, client `i` sending `GET /i` with `Connection: close`; their responses
/// in client order (a burst that needs more upstream connections than a pool keeps).
pub fn burst(addr: SocketAddr, n: usize) -> Vec<Response> {
    let clients: Vec<_> = (0..n)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.request(format!("GET /{i} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes())
            })
        })
        .collect();
    clients.into_iter().map(|t| t.join().expect("client")).collect()
}

/// Asserts an Apex error response that announces and performs a close.
pub fn assert_apex_close(c: &mut Client, r: &Response, code: u16) {
    assert_apex_status(r, code);
    assert!(r.has_token("connection", "close"), "no `Connection: close`: {}", r.head_str());
    c.assert_closed();
}

// ---------------------------------------------------------------- upstream servers

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The exact head bytes, including the final CRLF CRLF.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    /// Body bytes exactly as framed on the wire.
    pub body_raw: Vec<u8>,
    /// Index of the upstream connection (accept order, from 0).
    pub conn: usize,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        get_field(&self.headers, name)
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        all_fields(&self.headers, name)
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        has_token(&self.headers, name, token)
    }
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

struct UpState {
    stop: AtomicBool,
    accepts: AtomicUsize,
    open: AtomicUsize,
    conns: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    reqs: Mutex<Vec<Req>>,
}

/// What an in-test server's accept loop needs of its state: when to stop.
pub trait Stoppable: Send + Sync + 'static {
    fn stopped(&self) -> bool;
}

impl Stoppable for UpState {
    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }
}

/// Listens on 127.0.0.1:0 and, on a thread, hands each accepted connection to `on_accept` set
/// up as every in-test server wants it (blocking, `UP_POLL` read timeout, `IO_TIMEOUT` write
/// timeout, no delay), until `st` says stop. The caller joins the thread after stopping.
pub fn accept_loop<S: Stoppable>(
    st: Arc<S>,
    on_accept: impl FnMut(TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    accept_loop_on(TcpListener::bind("127.0.0.1:0").unwrap(), st, on_accept)
}

/// A listener on 127.0.0.1:0 whose accepted sockets have a `bytes` receive buffer (set before
/// listening: a buffer shrunk after the handshake makes the kernel drop segments and back off).
pub fn small_rcvbuf_listener(bytes: usize) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(bytes).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(128).unwrap();
    s.into()
}

/// `accept_loop` on a listener of the caller's.
pub fn accept_loop_on<S: Stoppable>(
    l: TcpListener,
    st: Arc<S>,
    mut on_accept: impl FnMut(TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = thread::spawn(move || {
        while !st.stopped() {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(UP_POLL)).unwrap();
                    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    s.set_nodelay(true).unwrap();
                    on_accept(s);
                }
                Err(_) => thread::sleep(ms(2)),
            }
        }
    });
    (addr, acceptor)
}

/// An in-test origin server on 127.0.0.1:0; one thread per accepted connection runs the script.
pub struct Upstream {
    pub addr: SocketAddr,
    st: Arc<UpState>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start<F: Fn(UpConn) + Send + Sync + 'static>(script: F) -> Upstream {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    /// `start` on a listener of the caller's (e.g. `small_rcvbuf_listener`).
    pub fn start_on<F: Fn(UpConn) + Send + Sync + 'static>(l: TcpListener, script: F) -> Upstream {
        let st = Arc::new(UpState {
            stop: AtomicBool::new(false),
            accepts: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            conns: Mutex::new(vec![]),
            reqs: Mutex::new(vec![]),
        });
        let script = Arc::new(script);
        let st2 = st.clone();
        let (addr, acceptor) = accept_loop_on(l, st.clone(), move |s| {
            let rec = Arc::new(Mutex::new(vec![]));
            let index = {
                let mut c = st2.conns.lock().unwrap();
                c.push(rec.clone());
                c.len() - 1
            };
            st2.accepts.fetch_add(1, SeqCst);
            st2.open.fetch_add(1, SeqCst);
            let conn = UpConn { s, rec, recording: true, buf: vec![], st: st2.clone(), index };
            let script = script.clone();
            thread::spawn(move || script(conn));
        });
        Upstream { addr, st, acceptor: Some(acceptor) }
    }

    /// Keep-alive HTTP server: answers each request with `respond(req)`; closes after a
    /// response whose head says `Connection: close`.
    pub fn http<F: Fn(&Req) -> Vec<u8> + Send + Sync + 'static>(respond: F) -> Upstream {
        Self::start(move |mut c| {
            while let Some(req) = c.read_request() {
                let resp = respond(&req);
                let head_end = find(&resp, b"\r\n\r\n").unwrap_or(resp.len());
                let close =
                    String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase().contains("connection: close");
                if c.write(&resp).is_err() || close {
                    break;
                }
            }
        })
    }

    /// Always `200 OK` with `body`.
    pub fn ok(body: &'static str) -> Upstream {
        Self::http(move |_| ok(body))
    }

    /// Answers 200 with the request target as the body.
    pub fn echo_path() -> Upstream {
        Self::http(|r| ok(&r.target))
    }

    /// Reads and records whatever arrives, never answers.
    pub fn silent() -> Upstream {
        Self::start(|mut c| c.wait_eof())
    }

    pub fn accepts(&self) -> usize {
        self.st.accepts.load(SeqCst)
    }
    /// Connections the upstream still holds open (its script has not returned).
    pub fn open(&self) -> usize {
        self.st.open.load(SeqCst)
    }
    /// Bytes received, per connection in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.st.conns.lock().unwrap().iter().map(|r| r.lock().unwrap().clone()).collect()
    }
    pub fn received_bytes(&self) -> usize {
        self.received().iter().map(Vec::len).sum()
    }
    /// Requests parsed by scripts via `read_request`, in completion order.
    pub fn requests(&self) -> Vec<Req> {
        self.st.reqs.lock().unwrap().clone()
    }
    /// The only request received; panics unless exactly one.
    pub fn one_request(&self) -> Req {
        let r = self.requests();
        assert_eq!(r.len(), 1, "upstream requests: {r:#?}");
        r.into_iter().next().unwrap()
    }

    /// Asserts the upstream received no bytes at all (after a short settle time).
    pub fn assert_untouched(&self) {
        thread::sleep(ms(100));
        let got = self.received();
        assert!(
            got.iter().all(Vec::is_empty),
            "upstream must receive nothing, got {:?}",
            got.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
        );
    }

    /// Waits up to `d` for `cond(self)`; returns whether it held.
    pub fn wait_for(&self, d: Duration, cond: impl Fn(&Upstream) -> bool) -> bool {
        wait_until(d, || cond(self))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.st.stop.store(true, SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// A connection an in-test origin reads requests from: `buf` holds what was read and not yet
/// taken, `more` reads more into it (None at EOF, on errors or when giving up; `between` says
/// no request has begun, for servers that close idle connections).
pub trait ReadsRequests {
    fn buf(&mut self) -> &mut Vec<u8>;
    fn more(&mut self, between: bool) -> Option<()>;
    /// The connection's accept index, for `Req::conn`.
    fn index(&self) -> usize;
    /// A chunked body that does not parse (the request is then dropped).
    fn bad_body(&mut self, _why: String) {}

    /// Reads a request head (body left unread). None on EOF/error first.
    fn read_head(&mut self) -> Option<Req> {
        let head_len = loop {
            if let Some(i) = find(self.buf(), b"\r\n\r\n") {
                break i + 4;
            }
            let between = self.buf().is_empty();
            self.more(between)?;
        };
        let head: Vec<u8> = self.buf().drain(..head_len).collect();
        let text = String::from_utf8_lossy(&head[..head_len - 4]).into_owned();
        let (start, headers) = parse_fields(&text);
        let mut p = start.split(' ');
        Some(Req {
            method: p.next().unwrap_or("").into(),
            target: p.next().unwrap_or("").into(),
            version: p.next().unwrap_or("").into(),
            headers,
            head,
            body: vec![],
            body_raw: vec![],
            conn: self.index(),
        })
    }

    /// Reads a whole request: head, then a Content-Length or chunked body.
    fn read_request(&mut self) -> Option<Req> {
        let mut r = self.read_head()?;
        if r.has_token("transfer-encoding", "chunked") {
            loop {
                match decode_chunked(self.buf()) {
                    Ok(Some((body, used))) => {
                        r.body_raw = self.buf().drain(..used).collect();
                        r.body = body;
                        break;
                    }
                    Ok(None) => self.more(false)?,
                    Err(e) => {
                        self.bad_body(format!("chunked request body: {e}"));
                        return None;
                    }
                }
            }
        } else if let Some(cl) = r.header("content-length") {
            let n: usize = cl.parse().ok()?;
            while self.buf().len() < n {
                self.more(false)?;
            }
            r.body = self.buf().drain(..n).collect();
            r.body_raw = r.body.clone();
        }
        Some(r)
    }
}

impl ReadsRequests for UpConn {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
    fn more(&mut self, _between: bool) -> Option<()> {
        match self.fill() {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(()),
        }
    }
    fn index(&self) -> usize {
        self.index
    }
}

/// One accepted upstream connection, handed to the script.
pub struct UpConn {
    pub s: TcpStream,
    rec: Arc<Mutex<Vec<u8>>>,
    recording: bool,
    buf: Vec<u8>,
    st: Arc<UpState>,
    pub index: usize,
}

impl UpConn {
    /// Reads more bytes: Ok(0) on EOF, Err on reset, stop or the 30 s deadline.
    fn fill(&mut self) -> io::Result<usize> {
        let deadline = Instant::now() + UP_DEADLINE;
        let mut tmp = vec![0u8; 1 << 16];
        loop {
            if self.st.stop.load(SeqCst) {
                return Err(io::Error::other("upstream stopped"));
            }
            match read_retrying(&mut self.s, &mut tmp) {
                Ok(n) => {
                    if self.recording {
                        self.rec.lock().unwrap().extend_from_slice(&tmp[..n]);
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops (or resumes) recording received bytes (for huge bodies).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// Reads a request head (body left unread). None on EOF/error first.
    pub fn read_head(&mut self) -> Option<Req> {
        ReadsRequests::read_head(self)
    }

    /// Reads a whole request (head + CL or chunked body) and records it in `requests()`.
    pub fn read_request(&mut self) -> Option<Req> {
        let r = ReadsRequests::read_request(self)?;
        self.st.reqs.lock().unwrap().push(r.clone());
        Some(r)
    }

    /// Adds a request read with `read_head` to `Upstream::requests()`.
    pub fn record(&self, r: &Req) {
        self.st.reqs.lock().unwrap().push(r.clone());
    }

    /// Reads until the bytes received after the head contain `needle` (or EOF / `d`).
    pub fn read_until(&mut self, needle: &[u8], d: Duration) -> Vec<u8> {
        let deadline = Instant::now() + d;
        let mut got = std::mem::take(&mut self.buf);
        while !contains(&got, needle) && Instant::now() < deadline {
            let more = self.read_for(ms(50));
            got.extend_from_slice(&more);
            if more.is_empty() && self.eof_seen() {
                break;
            }
        }
        got
    }

    fn eof_seen(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.peek(&mut b), Ok(0))
    }

    pub fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Returns buffered bytes plus whatever arrives within `d` (stops at EOF).
    pub fn read_for(&mut self, d: Duration) -> Vec<u8> {
        let deadline = Instant::now() + d;
        let mut tmp = vec![0u8; 1 << 16];
        while Instant::now() < deadline && !self.st.stop.load(SeqCst) {
            match read_retrying(&mut self.s, &mut tmp) {
                Ok(0) => break,
                Ok(n) => {
                    if self.recording {
                        self.rec.lock().unwrap().extend_from_slice(&tmp[..n]);
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Consumes and returns up to `max` body bytes already read or arriving next.
    pub fn read_chunk(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        let n = self.buf.len().min(max);
        Some(self.buf.drain(..n).collect())
    }

    pub fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    /// Reads until the peer closes (or stop / deadline).
    pub fn wait_eof(&mut self) {
        while let Ok(n) = self.fill() {
            if n == 0 {
                break;
            }
            self.buf.clear();
        }
    }

    pub fn stopping(&self) -> bool {
        self.st.stop.load(SeqCst)
    }

    pub fn shutdown(&self) {
        let _ = self.s.shutdown(Shutdown::Both);
    }
}

impl Drop for UpConn {
    fn drop(&mut self) {
        self.st.open.fetch_sub(1, SeqCst);
    }
}

/// `HTTP/1.1 200 OK` with Content-Length.
pub fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// An address on which nothing listens.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], spare_port()))
}

/// A loopback port on which nothing listens now, for a listener that must be named before it
/// starts. It comes from below the kernel's ephemeral range (32768 and up) and is never handed
/// out twice in this process, so no port-0 bind of a concurrent test (an upstream, a client)
/// can take it between this check and the listener's own bind: a port bound at 0 and released
/// once went to an upstream started a moment later, on what the test had made Apex's TLS port.
/// Free means both TCP and UDP bind (Pebble's DNS uses both).
pub fn spare_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 600) as u16 * 16, SeqCst, SeqCst);
    loop {
        let p = NEXT.fetch_add(1, SeqCst);
        assert!(p < 32_768, "no spare port below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A listener that never accepts and whose accept queue is full, so a new connect hangs
/// (SYNs are dropped): stands in for an unreachable server on loopback.
pub struct BlackHole {
    pub addr: SocketAddr,
    _l: TcpListener,
    _fill: Vec<TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut fill = vec![];
        for _ in 0..5000 {
            match TcpStream::connect_timeout(&addr, ms(200)) {
                Ok(s) => fill.push(s),
                Err(_) => {
                    return BlackHole { addr, _l: l, _fill: fill };
                }
            }
        }
        panic!("could not fill the accept queue of a listener")
    }
}

/// The byte at offset `i` of the test pattern for big bodies.
#[inline]
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern).collect()
}

/// `intact N`, or where `body` first departs from the pattern.
pub fn pattern_verdict(body: &[u8]) -> String {
    match body.iter().enumerate().position(|(i, b)| *b != pattern(i as u64)) {
        None => format!("intact {}", body.len()),
        Some(i) => format!("corrupt at byte {i} of {}", body.len()),
    }
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Raises this process's RLIMIT_NOFILE soft limit towards `want` (at most the hard limit);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // As root (CI), the hard limit itself can go up; elsewhere this fails and the hard limit binds.
    let lim = getrlimit(Resource::Nofile);
    if lim.maximum.is_some_and(|h| h < want) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: lim.current, maximum: Some(want) });
    }
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum.map_or(want, |h| want.min(h));
    if lim.current.is_none_or(|c| c < target) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: lim.maximum });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Sockets held by process `pid` (from /proc/PID/fd; pipes, epoll and files are not counted).
pub fn sockets_of(pid: u32) -> usize {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    rd.flatten().filter(|e| fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))).count()
}

/// Current resident set size of `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
