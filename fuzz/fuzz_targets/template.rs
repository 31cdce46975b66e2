//! Route-rule templates (`rules::Template::parse`) and path rewrites on arbitrary input.
//! Invariants: no panic; a parsed template keeps only allowed bytes in its literals and only
//! allowed variables; written back in `${name}` / `$$` form (within the bound) it parses to the
//! same pieces; it expands into a bounded buffer without panicking; a rewrite of an origin-form
//! target gives one.
#![no_main]
use apex::h1::write::Out;
use apex::rules::{value_byte, PathRule, Piece, Template, Var, Vars, HEADER_VARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let allowed: &[Var] = if data.first().is_some_and(|b| b & 1 == 1) { &Var::ALL } else { &HEADER_VARS };
    if let Ok(t) = Template::parse(text, allowed, value_byte) {
        assert_eq!(t.source, text);
        let mut again = String::new();
        for p in t.pieces.iter() {
            match p {
                Piece::Lit(l) => {
                    assert!(!l.is_empty() && l.iter().all(|&b| value_byte(b) || b == b'$'));
                    again += &String::from_utf8_lossy(l).replace('$', "$$");
                }
                Piece::Var(v) => {
                    assert!(allowed.contains(v));
                    again += &format!("${{{}}}", v.name());
                }
            }
        }
        // `${name}` is longer than `$name`: the bound may refuse the written-back form.
        if again.len() <= apex::limits::TEMPLATE_BYTES_MAX {
            assert_eq!(Template::parse(&again, allowed, value_byte).unwrap().pieces, t.pieces);
        }
        let vars = Vars { client_ip: "::1".parse().unwrap(), https: true, host: b"h", path: b"/p?q", id: b"id" };
        let mut buf = [0u8; 512];
        let mut out = Out::new(&mut buf);
        t.write(&vars, &mut out);
        let _ = out.finish();
    }
    // A rewrite by the first bytes up to a space, of an origin-form target after it.
    if let Some((prefix, target)) = text.split_once(' ')
        && prefix.starts_with('/')
        && target.starts_with('/')
    {
        let arena = bumpalo::Bump::new();
        for rule in [
            PathRule::Strip(prefix.len().min(target.len())),
            PathRule::Rewrite { prefix: prefix.as_bytes().into(), to: b"/to"[..].into() },
        ] {
            if let Ok(Some(p)) = rule.apply(target, &arena) {
                assert!(p.starts_with('/'), "{rule:?} {target:?} -> {p:?}");
            }
        }
    }
});
