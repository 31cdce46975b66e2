//! ACME Renewal Information (RFC 9773): the CA says when to renew. Where the directory has a
//! `renewalInfo` URL, the ACME thread asks it about the serving certificate right after issue
//! or load and again when its Retry-After says, picks a uniform random time in the suggested
//! window (§4.2) and renews then, instead of at two thirds of the lifetime; the renewal's order
//! names the certificate it `replaces` (§5). A CA without it, or an answer that does not read,
//! leaves the two-thirds schedule in force.

use std::time::Duration;

use serde_json::Value;

use super::client::Https;

/// The CA's suggested renewal window, Unix seconds, `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// §4.3.2: a Retry-After under one minute counts as one minute, over one day as one day.
const RECHECK_MIN: Duration = Duration::from_secs(60);
const RECHECK_MAX: Duration = Duration::from_secs(86_400);
/// §4.3.3: after a long-term error (or no Retry-After), ask again in six hours.
pub const LONG_TERM: Duration = Duration::from_secs(6 * 3600);

/// What one query learned.
#[derive(Debug)]
pub enum Answer {
    /// The window, its explanation URL if any, and when to ask again.
    Window(Window, Option<String>, Duration),
    /// §4.3.3 temporary (no connection, a timeout, 5xx): back off and ask again.
    Temporary(String),
    /// §4.3.3 long-term (4xx, a body that does not read): ask again in `LONG_TERM`.
    LongTerm(String),
}

/// §4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER contents), unpadded.
pub fn cert_id(leaf: &[u8]) -> Option<String> {
    let (serial, aki) = crate::tls::serial_and_aki(leaf)?;
    Some(format!("{}.{}", super::b64url(aki), super::b64url(serial)))
}

/// GET `base`/`id` (§4.1: unauthenticated, not POST-as-GET).
pub fn query(http: &Https, base: &str, id: &str) -> Answer {
    let url = format!("{}/{id}", base.trim_end_matches('/'));
    let resp = match http.send("GET", &url, None) {
        Ok(r) => r,
        Err(f) => return Answer::Temporary(f.msg),
    };
    if resp.status >= 500 {
        return Answer::Temporary(format!("GET {url}: {}", super::problem_text(resp.status, &resp.body)));
    }
    if resp.status != 200 {
        return Answer::LongTerm(format!("GET {url}: {}", super::problem_text(resp.status, &resp.body)));
    }
    match parse(&resp.body) {
        Ok((w, why)) => {
            let again = resp.retry_after.map_or(LONG_TERM, |s| Duration::from_secs(s).clamp(RECHECK_MIN, RECHECK_MAX));
            Answer::Window(w, why, again)
        }
        Err(e) => Answer::LongTerm(format!("GET {url}: {e}")),
    }
}

/// A RenewalInfo object (§4.2): the window, and the explanation URL if given.
pub fn parse(body: &[u8]) -> Result<(Window, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not a RenewalInfo object ({e})"))?;
    let w = v.get("suggestedWindow").ok_or("no suggestedWindow")?;
    let at = |k: &str| {
        w.get(k)
            .and_then(Value::as_str)
            .and_then(rfc3339)
            .ok_or_else(|| format!("suggestedWindow.{k} is not an RFC 3339 time"))
    };
    let (start, end) = (at("start")?, at("end")?);
    // §4.2: an end at or before the start makes the object invalid.
    if end <= start {
        return Err("suggestedWindow ends before it starts".into());
    }
    let why = v.get("explanationURL").and_then(Value::as_str).map(|s| s.chars().take(200).collect());
    Ok((Window { start, end }, why))
}

/// §4.2 step 2: a uniform time in [start, end), from `random` bits.
pub fn pick(w: Window, random: u64) -> i64 {
    let span = u64::try_from(w.end - w.start).unwrap_or(1).max(1);
    w.start.saturating_add(i64::try_from(random % span).unwrap_or(0))
}

/// An RFC 3339 date-time (§5.6): `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, to Unix
/// seconds (fractions dropped).
pub fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter().try_fold(0i64, |a, &c| c.is_ascii_digit().then(|| a * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: u8| b.get(i).is_some_and(|x| x.eq_ignore_ascii_case(&c));
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if sep(i, b'.') {
        i += 1;
        let digits = b.get(i..)?.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        i += digits;
    }
    let offset = if sep(i, b'Z') && b.len() == i + 1 {
        0
    } else if (sep(i, b'+') || sep(i, b'-')) && sep(i + 3, b':') && b.len() == i + 6 {
        let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
        if oh > 23 || om > 59 {
            return None;
        }
        if sep(i, b'+') { oh * 3600 + om * 60 } else { -(oh * 3600 + om * 60) }
    } else {
        return None;
    };
    let days = crate::time::days_from_civil(y, mo, d);
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    /// RFC 9773 Appendix A's certificate, and §4.1's worked example of its identifier.
    const APPENDIX_A: &str = "-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
";

    #[test]
    fn the_rfc_example_certificate_has_the_rfc_identifier() {
        let der = CertificateDer::from_pem_slice(APPENDIX_A.as_bytes()).unwrap();
        assert_eq!(cert_id(&der).as_deref(), Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"));
        // Cut anywhere, it reads as nothing rather than as something else.
        for n in 0..der.len() {
            assert_eq!(cert_id(&der[..n]), None, "{n}");
        }
    }

    #[test]
    fn windows_read_and_refuse_what_is_invalid() {
        let ok = br#"{"suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-07T00:00:00Z"},
                     "explanationURL": "https://example.com/docs/ari"}"#;
        let (w, why) = parse(ok).unwrap();
        assert_eq!((w.start, w.end), (1_609_632_000, 1_609_977_600));
        assert_eq!(why.as_deref(), Some("https://example.com/docs/ari"));
        for bad in [
            &br#"{"suggestedWindow": {"start": "2021-01-07T00:00:00Z", "end": "2021-01-03T00:00:00Z"}}"#[..],
            br#"{"suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-03T00:00:00Z"}}"#,
            br#"{"suggestedWindow": {"start": "2021-01-03", "end": "2021-01-07T00:00:00Z"}}"#,
            br#"{"suggestedWindow": {"start": 1, "end": 2}}"#,
            br#"{"window": {}}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rfc3339_times_with_fractions_and_offsets() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339("1985-04-12T23:20:50.52Z"), Some(482_196_050)); // RFC 3339 §5.8
        assert_eq!(rfc3339("1996-12-19T16:39:57-08:00"), rfc3339("1996-12-20T00:39:57Z"));
        assert_eq!(rfc3339("1996-12-20t00:39:57z"), rfc3339("1996-12-20T00:39:57Z"));
        for bad in
            ["", "1996-12-20T00:39:57", "1996-12-20T00:39:57Zjunk", "1996-13-20T00:39:57Z", "1996-12-20T00:39:57.Z"]
        {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn picks_stay_inside_the_window() {
        let w = Window { start: 1000, end: 1010 };
        let picks: Vec<i64> = (0..50u64).map(|r| pick(w, r.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
        assert!(picks.iter().all(|t| (1000..1010).contains(t)), "{picks:?}");
        assert!(picks.iter().collect::<std::collections::HashSet<_>>().len() > 5, "{picks:?}");
    }
}
