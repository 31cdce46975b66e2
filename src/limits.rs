//! Every fixed bound in Apex, as a named constant. Configurable limits (head bytes, header count,
//! body bytes, connections) live in `config::Limits` and are validated against the caps here.

/// Size of one pooled I/O buffer. A request head must fit in one (see `HEAD_BYTES_CAP`).
pub const BUF_BYTES: usize = 16 * 1024;

/// The largest `limits.head_bytes` an operator may configure: a head is parsed in one buffer.
pub const HEAD_BYTES_CAP: usize = BUF_BYTES;

/// Smallest `limits.head_bytes`: below this, ordinary browsers' requests would not fit.
pub const HEAD_BYTES_FLOOR: usize = 1024;

/// The largest `limits.headers` an operator may configure (httparse's slot array lives in the arena).
pub const HEADERS_CAP: usize = 256;

/// Upstream servers per group: a request remembers which it tried in a `u64` bit set.
pub const GROUP_SERVERS_CAP: usize = 64;

/// Bytes of per-request scratch memory (parsed header slots, Connection tokens).
pub const ARENA_BYTES: usize = 32 * 1024;

/// Turns of one connection's state machine per event. A connection that uses them all with work
/// left is stepped again after the worker's other events (logged once), not closed: the bound is
/// on how long one connection can hold the worker, not on how much it may move.
pub const STEP_TURNS_MAX: usize = 64;

/// Events taken from epoll per `poll` call.
pub const EVENTS_CAPACITY: usize = 1024;

/// A chunk-size line, with its extensions, may not exceed this (RFC 9112 §7.1.1 sets no bound;
/// we do, so a client cannot make us scan forever).
pub const CHUNK_LINE_MAX: usize = 4096;

/// Total bytes of a chunked trailer section (RFC 9112 §7.1.2), parsed and then dropped.
pub const TRAILER_BYTES_MAX: usize = 16 * 1024;

/// After Apex answers an error and shuts down its write side, it reads and discards what the
/// client still sends for at most this long (nginx's lingering close), so the client sees the
/// response instead of a reset.
pub const LINGER_MS: u64 = 2_000;

/// Interim (1xx) responses from an upstream skipped per request before it is called a liar.
pub const INTERIM_MAX: u8 = 8;

/// Leading empty lines tolerated before a request line (RFC 9112 §2.2 says "at least one").
pub const LEADING_CRLF_MAX: usize = 8;

/// Timers are swept at most this often; each deadline fires within this much of its time.
pub const SWEEP_MIN_MS: u64 = 10;

/// And at least this often, so a paused accept loop retries after fd exhaustion.
pub const SWEEP_MAX_MS: u64 = 1_000;

const _: () = assert!(HEAD_BYTES_FLOOR <= HEAD_BYTES_CAP);
const _: () = assert!(GROUP_SERVERS_CAP <= 64);
const _: () = assert!(BUF_BYTES <= u32::MAX as usize);
const _: () = assert!(HEADERS_CAP * 64 < ARENA_BYTES);

/// Pipes per worker for splice(2); past this, bodies are copied through buffers.
pub const PIPES_PER_WORKER: usize = 256;

/// Capacity asked of each pipe (F_SETPIPE_SZ). The kernel may grant less; nothing relies on it.
pub const PIPE_BYTES: usize = 256 * 1024;

/// A body is spliced only while more than this many bytes of it remain: below, one read and one
/// write through a buffer cost fewer syscalls than filling and draining a pipe.
pub const SPLICE_MIN_BYTES: u64 = BUF_BYTES as u64;

// The chunked decoder counts line and trailer bytes in u16.
const _: () = assert!(CHUNK_LINE_MAX < u16::MAX as usize);
const _: () = assert!(TRAILER_BYTES_MAX < u16::MAX as usize);

/// TLS record buffers (raw bytes from and to a TLS client): a whole TLS 1.2 record of the
/// largest size RFC 5246 §6.2.3 allows (5 + 2^14 + 2048 bytes) fits.
pub const TLS_BUF_BYTES: usize = 18 * 1024 + 512;

/// A handshake buffer: a flight whose message is spread over more records than one record
/// buffer holds (a ClientHello past 18.5 KiB: post-quantum key shares, many PSK identities; a
/// long certificate chain from an upstream) borrows one of these until the message is whole,
/// then gives it back. rustls bounds a handshake message at 64 KiB (0xffff) and so does
/// nginx's OpenSSL; that much in records of 2^14 bytes, with room for the headers of up to
/// 200 records, fits. More is refused with a fatal alert at once.
pub const TLS_HS_BUF_BYTES: usize = 64 * 1024 + 1024;

/// Plaintext per record Apex seals: RFC 8446 §5.1's maximum, 2^14.
pub const TLS_RECORD_PLAIN_MAX: usize = 1 << 14;

const _: () = assert!(TLS_HS_BUF_BYTES > TLS_BUF_BYTES && TLS_HS_BUF_BYTES <= u32::MAX as usize);

/// TLS sessions each worker remembers for resumption by session ID (tickets need no memory).
pub const TLS_SESSIONS_PER_WORKER: usize = 4096;

/// TLS record buffers each worker allocates at start when TLS is configured (two per TLS
/// connection with bytes in flight; more are allocated once if a peak needs them).
pub const TLS_BUFS_PREALLOC: usize = 32;

/// A binary upgrade's new process must say it is ready within this long, or it is stopped and
/// the old one keeps serving (it loads the config, certificates included, and starts workers).
pub const UPGRADE_READY_MS: u64 = 15_000;

/// The longest PROXY v2 header Apex takes (its 16 fixed bytes, the addresses and TLVs). Its
/// length field allows 64 KiB; load balancers send tens of bytes of TLVs (HAProxy with every
/// SSL TLV, a few hundred). Bounded so the header is peeked in one buffer.
pub const PROXY_V2_BYTES_MAX: usize = 4096;
const _: () = assert!(PROXY_V2_BYTES_MAX <= BUF_BYTES);

/// An X-Request-Id taken from a request is at most this long (longer: replaced by Apex's own).
/// UUIDs are 36 bytes, Apex's own ids 32; 64 leaves room for a prefix.
pub const REQUEST_ID_MAX: usize = 64;
/// A template in a route's rules (a header value, a redirect target), in bytes as written.
pub const TEMPLATE_BYTES_MAX: usize = 1024;
/// Header rules per direction of a route (`set`, `add` and `remove` together).
pub const HEADER_RULES_MAX: usize = 32;
/// A route's `respond` body.
pub const RESPOND_BODY_MAX: usize = 4096;
const _: () = assert!(REQUEST_ID_MAX < u8::MAX as usize);
/// Slots of each worker's table of rate-limit buckets (`per_ip`, 32 bytes each: 2 MiB at most,
/// touched as addresses arrive). Distinct (route, address) pairs active within a bucket's
/// refill time beyond this share slots, and the stalest is forgotten.
pub const RATE_SLOTS: usize = 1 << 16;

/// Slots of each worker's table of open connections per address, per allowed connection (two
/// per connection keeps neighbourhoods sparse), within these bounds.
pub const CONN_SLOTS_PER_CONN: usize = 2;
pub const CONN_SLOTS_MAX: usize = 1 << 20;
