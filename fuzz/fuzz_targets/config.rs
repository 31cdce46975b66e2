//! The config loader on arbitrary text: an error or a Config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = apex::config::Config::parse(text, "fuzz.toml") {
            let _ = cfg.route(b"example.com", b"/x");
            assert!(!cfg.listen.is_empty());
        } else if let Err(e) = apex::config::Config::parse(text, "fuzz.toml") {
            assert!(e.to_string().starts_with("fuzz.toml"));
        }
    }
});
