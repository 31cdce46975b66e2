//! A route's rules (issue #18): header edits on the request and the response, a path rewrite,
//! and the answers Apex gives itself (a redirect, a fixed response). Built once, at config load
//! (`config/build.rs`): names and values checked, templates parsed into literal and variable
//! pieces. On a request they only copy bytes: a template is written straight into the head
//! being written (`Out`), a rewritten path into the request's arena. Nothing here allocates on
//! the heap or panics on the hot path; a head that no longer fits fails as a whole (`Out`).
//!
//! Invariant: a rule never touches framing. Names Apex frames a message by or writes itself
//! (`Field::of` is not `Other`: Host, Content-Length, Transfer-Encoding, Connection and the other
//! hop-by-hop fields, Expect, X-Forwarded-*), their `_` disguises, and X-Request-Id (`[log]
//! request_id`) are refused at load.

use std::net::IpAddr;

use bumpalo::Bump;

use crate::h1::H1Error;
use crate::h1::write::Out;
use crate::limits::{HEADER_RULES_MAX, REQUEST_ID_MAX, TEMPLATE_BYTES_MAX};

/// A variable a template may name: `$client_ip`, `$host`, `$request_id`, `$scheme`, `$path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    ClientIp,
    /// The request's host, without its port.
    Host,
    RequestId,
    /// `http` or `https`: how the client reached Apex.
    Scheme,
    /// The request target as the client sent it: path and query.
    Path,
}

impl Var {
    pub const ALL: [Var; 5] = [Var::ClientIp, Var::Host, Var::RequestId, Var::Scheme, Var::Path];

    pub const fn name(self) -> &'static str {
        match self {
            Var::ClientIp => "client_ip",
            Var::Host => "host",
            Var::RequestId => "request_id",
            Var::Scheme => "scheme",
            Var::Path => "path",
        }
    }
}

/// Variables in a header value: all but `$path` (a redirect's business, and gone by the
/// time a response comes).
pub const HEADER_VARS: [Var; 4] = [Var::ClientIp, Var::Host, Var::RequestId, Var::Scheme];
/// In a response header: what is still known when the response head comes (the request head
/// is gone by then, so no `$host`).
pub const RESPONSE_VARS: [Var; 3] = [Var::ClientIp, Var::RequestId, Var::Scheme];

#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(Box<[u8]>),
    Var(Var),
}

/// A value with variables, as pieces; `source` is the text it was parsed from (`--check`).
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    pub pieces: Box<[Piece]>,
    pub source: String,
}

impl Template {
    /// Parses `text`: `$name` or `${name}` names a variable (`allowed` only), `$$` is a `$`;
    /// every other byte must pass `byte_ok`. Errors say what is wrong, for the config's message.
    pub fn parse(text: &str, allowed: &[Var], byte_ok: fn(u8) -> bool) -> Result<Template, String> {
        if text.len() > TEMPLATE_BYTES_MAX {
            return Err(format!("longer than {TEMPLATE_BYTES_MAX} bytes"));
        }
        let mut pieces: Vec<Piece> = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let mut uses = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            if c != b'$' {
                if !byte_ok(c) {
                    return Err(format!("byte {c:#04x} at {i} is not allowed here"));
                }
                lit.push(c);
                i += 1;
                continue;
            }
            let rest = b.get(i + 1..).unwrap_or(&[]);
            let (name, used) = match rest.first() {
                Some(b'$') => {
                    lit.push(b'$');
                    i += 2;
                    continue;
                }
                Some(b'{') => {
                    let Some(close) = rest.iter().position(|&x| x == b'}') else {
                        return Err(format!("`${{` at {i} without its `}}`"));
                    };
                    (rest.get(1..close).unwrap_or(&[]), close + 1)
                }
                _ => {
                    let n = rest.iter().take_while(|x| x.is_ascii_alphanumeric() || **x == b'_').count();
                    (rest.get(..n).unwrap_or(&[]), n)
                }
            };
            if name.is_empty() {
                return Err(format!("a `$` at {i} names no variable (write `$$` for a dollar sign)"));
            }
            let shown = String::from_utf8_lossy(name);
            let Some(var) = Var::ALL.into_iter().find(|v| v.name().as_bytes() == name) else {
                return Err(format!("unknown variable ${shown} (known: {})", names(&Var::ALL)));
            };
            if !allowed.contains(&var) {
                return Err(format!("${shown} is not available here (here: {})", names(allowed)));
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
            }
            pieces.push(Piece::Var(var));
            uses.push(var);
            i += 1 + used;
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.into()));
        }
        Ok(Template { pieces: pieces.into(), source: text.to_string() })
    }

    pub fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// Writes the value for this request.
    pub fn write(&self, v: &Vars, out: &mut Out) {
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => out.put(l),
                Piece::Var(Var::ClientIp) => out.put_ip(v.client_ip),
                Piece::Var(Var::Host) => out.put(v.host),
                Piece::Var(Var::RequestId) => out.put(v.id),
                Piece::Var(Var::Scheme) => out.put(if v.https { b"https" } else { b"http" }),
                Piece::Var(Var::Path) => out.put(v.path),
            }
        }
    }
}

fn names(vars: &[Var]) -> String {
    vars.iter().map(|v| format!("${}", v.name())).collect::<Vec<_>>().join(", ")
}

/// RFC 9110 §5.5: a field value is VCHAR, SP and HTAB (obs-text is refused here: config text is
/// ours to keep clean); no CR, LF or NUL.
pub fn value_byte(b: u8) -> bool {
    b.is_ascii_graphic() || b == b' ' || b == b'\t'
}

/// A URI reference (RFC 3986): visible ASCII.
pub fn uri_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// RFC 9110 §5.6.2: tchar.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a template's variables stand for in this request.
pub struct Vars<'a> {
    pub client_ip: IpAddr,
    pub https: bool,
    pub host: &'a [u8],
    pub path: &'a [u8],
    pub id: &'a [u8],
}

/// `request_headers` or `response_headers`: `set` replaces every field line of its name,
/// `add` appends one, `remove` deletes every one. Names compare ignoring case (RFC 9110 §5.1).
#[derive(Debug, Default)]
pub struct HeaderRules {
    pub set: Box<[(Box<[u8]>, Template)]>,
    pub add: Box<[(Box<[u8]>, Template)]>,
    pub remove: Box<[Box<[u8]>]>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a field line the message came with, named `name`, is left out.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
            || self.remove.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn uses(&self, var: Var) -> bool {
        self.set.iter().chain(self.add.iter()).any(|(_, t)| t.uses(var))
    }

    /// Checks a list for the config: each name a token and none of Apex's (see the module
    /// doc), no name twice within or across `set`, `add` and `remove`, at most
    /// `HEADER_RULES_MAX` in all.
    pub fn check_name(name: &str, seen: &mut Vec<String>) -> Result<(), String> {
        if !is_token(name.as_bytes()) {
            return Err(format!("{name:?} is not a field name (RFC 9110 §5.1: a token)"));
        }
        if reserved(name.as_bytes()) {
            return Err(format!(
                "{name:?} is Apex's own (framing, hop-by-hop, Host, Expect, X-Forwarded-*, X-Request-Id): rules cannot change it"
            ));
        }
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(format!("{name:?} is named twice (names ignore case; use one of set, add or remove)"));
        }
        if seen.len() == HEADER_RULES_MAX {
            return Err(format!("at most {HEADER_RULES_MAX} header rules"));
        }
        seen.push(name.to_string());
        Ok(())
    }

    /// Writes the `set` and `add` lines.
    pub fn write(&self, v: &Vars, out: &mut Out) {
        for (name, t) in self.set.iter().chain(self.add.iter()) {
            out.put(name);
            out.put(b": ");
            t.write(v, out);
            out.put(b"\r\n");
        }
    }
}

/// Names no rule may set or remove: those `Field::of` knows (framing, hop-by-hop, Host, Expect,
/// X-Forwarded-*), one of them with `_` for `-` (a backend may read it as the real one), and
/// X-Request-Id.
fn reserved(name: &[u8]) -> bool {
    crate::h1::Field::of(name) != crate::h1::Field::Other
        || crate::h1::head::is_ours_in_disguise(name)
        || name.eq_ignore_ascii_case(REQUEST_ID)
}

pub const REQUEST_ID: &[u8] = b"x-request-id";

/// What a head Apex writes gets beyond its own fields: a route's header rules (with what its
/// variables stand for) and the X-Request-Id line.
#[derive(Clone, Copy)]
pub struct Edits<'a> {
    pub rules: Option<(&'a HeaderRules, &'a Vars<'a>)>,
    pub id: Option<&'a [u8]>,
}

impl Edits<'_> {
    /// A field line the message came with that is left out: replaced or removed by a rule, or
    /// an X-Request-Id where Apex writes its own.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        (self.id.is_some() && name.eq_ignore_ascii_case(REQUEST_ID)) || self.rules.is_some_and(|(r, _)| r.drops(name))
    }

    pub fn write(&self, out: &mut Out) {
        if let Some(id) = self.id {
            out.put(b"X-Request-Id: ");
            out.put(id);
            out.put(b"\r\n");
        }
        if let Some((r, v)) = self.rules {
            r.write(v, out);
        }
    }
}

/// What happens to the path before it goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum PathRule {
    Keep,
    /// `strip_prefix = true`: the route's path (this many bytes) comes off.
    Strip(usize),
    /// `rewrite = { prefix, to }`: a path starting with `prefix` has it replaced by `to`.
    Rewrite {
        prefix: Box<[u8]>,
        to: Box<[u8]>,
    },
}

impl PathRule {
    /// The target to forward for `target` (origin-form, query included), or None to keep it.
    /// Whatever comes out starts with `/`: a path left empty becomes `/` (the query kept).
    /// `Err` when the arena has no room: the head is then too large to rewrite.
    pub fn apply<'a>(&self, target: &'a str, arena: &'a Bump) -> Result<Option<&'a str>, H1Error> {
        let (head, rest): (&[u8], &str) = match self {
            PathRule::Keep => return Ok(None),
            // Routed by this prefix, so it is there (`Config::route`); `*` is never rewritten.
            PathRule::Strip(n) => match target.get(*n..) {
                Some(rest) if target.starts_with('/') => match rest.as_bytes().first() {
                    Some(b'/') => return Ok(Some(rest)),
                    _ => (b"/", rest),
                },
                _ => return Ok(None),
            },
            PathRule::Rewrite { prefix, to } => {
                let path_len = target.find('?').unwrap_or(target.len());
                if !target.as_bytes().get(..path_len).is_some_and(|p| p.starts_with(prefix)) {
                    return Ok(None);
                }
                (to, target.get(prefix.len()..).unwrap_or(""))
            }
        };
        let built = arena.try_alloc_slice_fill_copy(head.len() + rest.len(), 0u8).map_err(|_| H1Error::HeadTooLarge)?;
        let (a, b) = built.split_at_mut(head.len());
        a.copy_from_slice(head);
        b.copy_from_slice(rest.as_bytes());
        // `to` and the target are visible ASCII (checked at load and by the parser).
        std::str::from_utf8(built).map(Some).map_err(|_| H1Error::BadTarget)
    }
}

/// A route that Apex answers itself, with no upstream.
#[derive(Debug)]
pub enum Answer {
    /// `redirect = { to, status }`: 301, 302, 303, 307 or 308, `Location` from `to`.
    Redirect { status: u16, to: Template },
    /// `respond = { status, body }`.
    Respond { status: u16, body: Box<[u8]> },
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Redirect { status, .. } | Answer::Respond { status, .. } => *status,
        }
    }

    /// The body length sent for it (none to HEAD).
    pub fn body_len(&self, head_only: bool) -> usize {
        match self {
            Answer::Respond { body, .. } if !head_only => body.len(),
            _ => 0,
        }
    }
}

/// A route's rules, all of them. A route without any has none at all (`Route::rules`).
#[derive(Debug)]
pub struct Rules {
    pub request: HeaderRules,
    pub response: HeaderRules,
    pub path: PathRule,
    pub answer: Option<Answer>,
    /// Some template names `$request_id`: one is made for each request even when `[log]
    /// request_id` is off (it then only goes where the templates put it).
    pub uses_id: bool,
}

/// X-Request-Id (issue #16). One taken from the request is kept when it is sane: at most
/// `REQUEST_ID_MAX` bytes of visible ASCII, the only one. Anything else is replaced.
pub fn sane_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= REQUEST_ID_MAX && v.iter().all(u8::is_ascii_graphic)
}

/// A worker's generator of request ids: xoshiro256++ seeded from the OS at worker start, so a
/// request costs a few arithmetic instructions, no syscall and no allocation. Not for secrets:
/// an id only has to be unique, and 128 random bits are.
pub struct Ids {
    s: [u64; 4],
}

impl Ids {
    pub fn from_os() -> Ids {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
            // No OS randomness (never seen on Linux): the clock and this stack address, mixed.
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let mut x = (t as u64) ^ (std::ptr::from_ref(&seed) as u64).rotate_left(32);
            for chunk in seed.chunks_mut(8) {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
        }
        let word =
            |i: usize| u64::from_le_bytes(seed.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).unwrap_or([1; 8]));
        let s = [word(0), word(1), word(2), word(3)];
        // The all-zero state is xoshiro's one fixed point.
        Ids { s: if s == [0; 4] { [1, 2, 3, 4] } else { s } }
    }

    fn next(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.s;
        let out = s0.wrapping_add(s3).rotate_left(23).wrapping_add(s0);
        let t = s1 << 17;
        let (mut s0, mut s1, mut s2, mut s3) = (s0, s1, s2 ^ s0, s3 ^ s1);
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = s3.rotate_left(45);
        self.s = [s0, s1, s2, s3];
        out
    }

    /// A new id: 128 random bits as 32 lower-case hex digits.
    pub fn fill(&mut self, out: &mut [u8; 32]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let (a, b) = (self.next(), self.next());
        for (i, slot) in out.iter_mut().enumerate() {
            let word = if i < 16 { a } else { b };
            let nibble = (word >> ((i % 16) * 4)) & 0xf;
            *slot = HEX.get(nibble as usize).copied().unwrap_or(b'0');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(t: &Template, v: &Vars) -> String {
        let mut buf = [0u8; 256];
        let mut out = Out::new(&mut buf);
        t.write(v, &mut out);
        let n = out.finish().unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn templates_parse_and_expand() {
        let v =
            Vars { client_ip: "10.0.0.9".parse().unwrap(), https: true, host: b"a.test", path: b"/x?y", id: b"abc" };
        let all = &Var::ALL;
        for (text, want) in [
            ("plain", "plain"),
            ("", ""),
            ("$scheme://$host$path", "https://a.test/x?y"),
            ("${host}x", "a.testx"),
            ("id=$request_id;ip=$client_ip", "id=abc;ip=10.0.0.9"),
            ("$$5 and $$$scheme", "$5 and $https"),
        ] {
            let t = Template::parse(text, all, uri_or_space).unwrap();
            assert_eq!(expand(&t, &v), want, "{text:?}");
        }
        for (text, err) in [
            ("$", "names no variable"),
            ("a$ b", "names no variable"),
            ("${host", "without its `}`"),
            ("${}", "names no variable"),
            ("$hostx", "unknown variable $hostx"),
            ("$HOST", "unknown variable $HOST"),
            ("a\r\nb", "byte 0x0d"),
            ("nul\0", "byte 0x00"),
        ] {
            let e = Template::parse(text, all, value_byte).unwrap_err();
            assert!(e.contains(err), "{text:?}: {e}");
        }
        let e = Template::parse("$path", &HEADER_VARS, value_byte).unwrap_err();
        assert!(e.contains("$path is not available here"), "{e}");
        assert!(Template::parse("$host", &RESPONSE_VARS, value_byte).is_err());
        assert!(Template::parse(&"x".repeat(TEMPLATE_BYTES_MAX + 1), all, value_byte).is_err());
    }

    fn uri_or_space(b: u8) -> bool {
        uri_byte(b) || b == b' '
    }

    #[test]
    fn paths_are_stripped_and_rewritten() {
        let arena = Bump::new();
        let strip = PathRule::Strip(4);
        let rw = PathRule::Rewrite { prefix: b"/old"[..].into(), to: b"/new/v2"[..].into() };
        for (rule, target, want) in [
            (&strip, "/api/x?q=1", Some("/x?q=1")),
            (&strip, "/api", Some("/")),
            (&strip, "/api?q", Some("/?q")),
            (&strip, "/apix", Some("/x")),
            (&strip, "*", None),
            (&rw, "/old/a?b=/old", Some("/new/v2/a?b=/old")),
            (&rw, "/old", Some("/new/v2")),
            (&rw, "/older?x", Some("/new/v2er?x")),
            (&rw, "/x?/old", None),
            (&rw, "/ol", None),
            (&PathRule::Keep, "/old", None),
        ] {
            assert_eq!(rule.apply(target, &arena).unwrap(), want, "{rule:?} {target}");
        }
    }

    #[test]
    fn ids_are_hex_and_differ() {
        let mut ids = Ids::from_os();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        ids.fill(&mut a);
        ids.fill(&mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(sane_id(&a) && !sane_id(b"") && !sane_id(b"a b") && !sane_id(&[b'a'; REQUEST_ID_MAX + 1]));
    }

    #[test]
    fn names_apex_writes_are_refused() {
        let mut seen = Vec::new();
        for bad in [
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "Host",
            "TE",
            "Upgrade",
            "Expect",
            "X-Forwarded-For",
            "X_Forwarded_Proto",
            "x-request-id",
            "Bad Name",
            "",
        ] {
            assert!(HeaderRules::check_name(bad, &mut seen).is_err(), "{bad}");
        }
        assert!(HeaderRules::check_name("X-A", &mut seen).is_ok());
        assert!(HeaderRules::check_name("x-a", &mut seen).unwrap_err().contains("twice"));
    }
}
