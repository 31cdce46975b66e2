//! How a group spreads requests over its servers (`balance = …`), decided per worker with no
//! shared state but each server's `Health`:
//!
//! - `round_robin` (default): smooth weighted round-robin, as nginx does it: each pick adds
//!   every candidate's weight to its score and takes the highest, which then gives back the
//!   total. Weights 5, 3, 2 give a b c a a b a c b a, then again: exact shares over every cycle,
//!   never a burst. Equal weights (the common case) take the plain rotation in `Upstreams::pick`.
//! - `least_requests`: the better of two random candidates (power of two choices) by requests
//!   in flight per weight. In flight is counted per worker, as Envoy's workers do: no cache line
//!   is written by two cores per request.
//! - `hash`: Maglev consistent hashing on `hash_on` (`client_ip`, `header:NAME`,
//!   `cookie:NAME`). Each server's place in the table comes from its address alone, so a server
//!   that leaves moves only its own keys; a key whose server is out goes to the next server in
//!   the table, the same one in every worker. A request without the header or cookie is
//!   balanced round-robin, as HAProxy does.

/// Maglev lookup table size: a prime well above 100 × the most servers a group may have (64),
/// so that shares stay within a fraction of a percent of the weights.
pub const TABLE: usize = 65_537;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
    Hash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientIp,
    /// Lower-case field name.
    Header(Box<[u8]>),
    Cookie(Box<[u8]>),
}

impl HashOn {
    pub fn parse(s: &str) -> Option<HashOn> {
        let token =
            |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        match s.split_once(':') {
            None if s == "client_ip" => Some(HashOn::ClientIp),
            // RFC 9110 §5.1: a field name is a token.
            Some(("header", n)) if token(n) => Some(HashOn::Header(n.to_ascii_lowercase().into_bytes().into())),
            // RFC 6265 §4.1.1: a cookie name is a token too.
            Some(("cookie", n)) if token(n) => Some(HashOn::Cookie(n.as_bytes().into())),
            _ => None,
        }
    }

    pub fn show(&self) -> String {
        match self {
            HashOn::ClientIp => "client_ip".into(),
            HashOn::Header(n) => format!("header:{}", String::from_utf8_lossy(n)),
            HashOn::Cookie(n) => format!("cookie:{}", String::from_utf8_lossy(n)),
        }
    }
}

/// 64-bit FNV-1a, then a finaliser that spreads every input bit over the output (MurmurHash3's
/// fmix64): the same key hashes the same in every worker and every run.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The value of cookie `name` in a Cookie field value (RFC 6265 §4.2.1: `name=value` pairs
/// separated by `; `; tolerant of missing spaces, as browsers are).
pub fn cookie<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    value.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        (n == name).then_some(v)
    })
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4) with weights: each round, a server
/// takes as many of its preferred free slots as its weight.
pub struct Maglev {
    slots: Box<[u8]>,
}

impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Maglev({} slots)", self.slots.len())
    }
}

impl Maglev {
    /// `names[i]` (the server's address) places server `i`; `weights` has the same length.
    pub fn new(names: &[String], weights: &[u32]) -> Maglev {
        let m = TABLE as u64;
        let mut slots = vec![u8::MAX; TABLE].into_boxed_slice();
        // Each server's permutation of the slots: offset + j * skip (mod a prime), from its name.
        let mut prefs: Vec<(u64, u64, u64)> = names
            .iter()
            .map(|n| (hash(n.as_bytes()) % m, hash(&[n.as_bytes(), b"#skip"].concat()) % (m - 1) + 1, 0))
            .collect();
        let mut filled = 0;
        while filled < TABLE && !prefs.is_empty() {
            for (i, (offset, skip, next)) in prefs.iter_mut().enumerate() {
                for _ in 0..weights.get(i).copied().unwrap_or(1).max(1) {
                    if filled == TABLE {
                        break;
                    }
                    // Its next preferred slot that is still free (one exists: filled < TABLE,
                    // and a permutation visits every slot).
                    loop {
                        let slot = ((*offset + *next * *skip) % m) as usize;
                        *next += 1;
                        if let Some(s) = slots.get_mut(slot)
                            && *s == u8::MAX
                        {
                            *s = i as u8; // at most GROUP_SERVERS_CAP (64) servers
                            filled += 1;
                            break;
                        }
                    }
                }
            }
        }
        Maglev { slots }
    }

    /// The group index of the server for `key`, then the next ones to try, in table order.
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = (key % TABLE as u64) as usize;
        let (tail, head) = self.slots.split_at(start.min(self.slots.len()));
        head.iter().chain(tail.iter()).map(|&s| usize::from(s))
    }
}

/// Smooth weighted round-robin (nginx's `ngx_http_upstream_get_peer`): the candidate with the
/// highest score after each adds its weight, which then gives back the candidates' total.
pub fn smooth_pick(scores: &mut [i64], weights: &[u32], candidate: impl Fn(usize) -> bool) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<(usize, i64)> = None;
    for (i, score) in scores.iter_mut().enumerate() {
        if !candidate(i) {
            continue;
        }
        let w = i64::from(weights.get(i).copied().unwrap_or(1));
        *score += w;
        total += w;
        if best.is_none_or(|(_, b)| *score > b) {
            best = Some((i, *score));
        }
    }
    let (b, _) = best?;
    if let Some(s) = scores.get_mut(b) {
        *s -= total;
    }
    Some(b)
}

/// The power of two choices: of two distinct random candidates, the one with fewer requests in
/// flight per unit of weight (`busy[a] / w[a] < busy[b] / w[b]`, compared without dividing).
pub fn two_choices(
    cands: &[usize],
    busy: impl Fn(usize) -> u64,
    weight: impl Fn(usize) -> u64,
    rng: &mut u64,
) -> Option<usize> {
    let n = cands.len() as u64;
    match n {
        0 => None,
        1 => cands.first().copied(),
        _ => {
            let x = next_random(rng);
            let a = (x % n) as usize;
            let b = (a + 1 + ((x >> 32) % (n - 1)) as usize) % n as usize;
            let (a, b) = (*cands.get(a)?, *cands.get(b)?);
            Some(if busy(a) * weight(b) <= busy(b) * weight(a) { a } else { b })
        }
    }
}

/// xorshift64*: a worker's own random numbers for `two_choices` (state never 0).
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
    }

    /// The spread of 100,000 requests over servers weighted 5, 3, 2: exact, and never more than
    /// the heaviest server's share in a row.
    #[test]
    fn smooth_round_robin_spreads_exactly_by_weight() {
        let w = [5, 3, 2];
        let mut scores = [0i64; 3];
        let mut got = [0u32; 3];
        let mut seq = Vec::new();
        for _ in 0..100_000 {
            let i = smooth_pick(&mut scores, &w, |_| true).unwrap();
            got[i] += 1;
            if seq.len() < 10 {
                seq.push(i);
            }
        }
        assert_eq!(got, [50_000, 30_000, 20_000]);
        assert_eq!(seq, [0, 1, 2, 0, 0, 1, 0, 2, 1, 0].map(|x| x as usize), "interleaved, not bursts");
        // A server out is skipped; the others keep their ratio.
        let mut got = [0u32; 3];
        for _ in 0..80_000 {
            got[smooth_pick(&mut scores, &w, |i| i != 0).unwrap()] += 1;
        }
        assert_eq!(got, [0, 48_000, 32_000]);
        assert_eq!(smooth_pick(&mut scores, &w, |_| false), None);
    }

    /// Least requests with weights 5, 3, 2: requests that take as long on every server end
    /// up in flight in proportion to the weights.
    #[test]
    fn two_choices_follows_in_flight_per_weight() {
        let w = [5u64, 3, 2];
        let mut busy = [0u64; 3];
        let mut got = [0u32; 3];
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        let mut flight: std::collections::VecDeque<usize> = Default::default();
        for _ in 0..100_000 {
            let i = two_choices(&[0, 1, 2], |i| busy[i], |i| w[i], &mut rng).unwrap();
            busy[i] += 1;
            got[i] += 1;
            flight.push_back(i);
            if flight.len() > 30 {
                busy[flight.pop_front().unwrap()] -= 1;
            }
        }
        let share = got.map(|g| f64::from(g) / 1000.0);
        eprintln!("least_requests, weights 5/3/2, 100,000 requests: {got:?}");
        for (s, want) in share.iter().zip([50.0, 30.0, 20.0]) {
            assert!((s - want).abs() < 5.0, "shares {share:?} (%), want 50/30/20");
        }
    }

    #[test]
    fn maglev_spreads_by_weight_and_moves_only_the_leavers_keys() {
        let t = Maglev::new(&names(3), &[5, 3, 2]);
        let mut got = [0u32; 3];
        for k in 0..100_000u64 {
            got[t.walk(hash(&k.to_le_bytes())).next().unwrap()] += 1;
        }
        let share = got.map(|g| f64::from(g) / 1000.0);
        eprintln!("hash, weights 5/3/2, 100,000 keys: {got:?}");
        for (s, want) in share.iter().zip([50.0, 30.0, 20.0]) {
            assert!((s - want).abs() < 2.0, "shares {share:?} (%), want 50/30/20");
        }

        // Five servers, then the third leaves: ideally 20% of keys move, all of them its own.
        let five = names(5);
        let before = Maglev::new(&five, &[1; 5]);
        let four: Vec<String> = five.iter().filter(|n| *n != &five[2]).cloned().collect();
        let after = Maglev::new(&four, &[1; 4]);
        let (mut moved, mut others_moved) = (0, 0);
        for k in 0..100_000u64 {
            let h = hash(&k.to_le_bytes());
            let a = &five[before.walk(h).next().unwrap()];
            let b = &four[after.walk(h).next().unwrap()];
            if a != b {
                moved += 1;
                if *a != five[2] {
                    others_moved += 1;
                }
            }
        }
        eprintln!("hash, 1 of 5 servers leaves: {moved} of 100,000 keys moved, {others_moved} of them not its own");
        assert!((19_000..=22_000).contains(&moved), "{moved} of 100,000 keys moved (ideal 20,000)");
        assert!(others_moved <= 2_000, "{others_moved} keys of the servers that stayed moved");
    }

    #[test]
    fn hash_on_and_cookies() {
        assert_eq!(HashOn::parse("client_ip"), Some(HashOn::ClientIp));
        assert_eq!(HashOn::parse("header:X-User"), Some(HashOn::Header(b"x-user"[..].into())));
        assert_eq!(HashOn::parse("cookie:sid"), Some(HashOn::Cookie(b"sid"[..].into())));
        for bad in ["", "ip", "header:", "header:a b", "cookie:x;y", "query:a"] {
            assert_eq!(HashOn::parse(bad), None, "{bad:?}");
        }
        assert_eq!(cookie(b"a=1; sid=abc; b=2", b"sid"), Some(&b"abc"[..]));
        assert_eq!(cookie(b"a=1;sid=", b"sid"), Some(&b""[..]));
        assert_eq!(cookie(b"xsid=1; sidx=2", b"sid"), None);
        assert_eq!(hash(b"abc"), hash(b"abc"));
        assert_ne!(hash(b"abc"), hash(b"abd"));
    }
}
