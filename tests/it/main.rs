//! Integration tests: each test starts the real `apex` binary on 127.0.0.1:0 with its own
//! config and talks to it over raw sockets; origins are in-test std::net servers.
// The Mutex ban (clippy.toml) guards the proxy's hot path; the test harness records bytes
// behind a Mutex on purpose.
#![allow(
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    dead_code
)]

mod harness;

mod acme;
mod balance;
mod bodies;
mod catalogue;
mod cli;
mod edge;
mod faults;
mod framing;
mod headers;
mod health;
mod hostile;
mod keepalive;
mod limits;
mod limits_ip;
mod metrics;
mod ops;
mod redirect;
mod resolve;
mod retry;
mod routing;
mod rules;
mod send_proxy;
mod timeouts;
mod tls;
mod tls_edges;
mod tls_kit;
mod tls_pq;
mod tls_strict;
mod tls_upstream;
mod upgrade;
