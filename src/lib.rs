//! Apex: an HTTP/1.1 reverse proxy. One mio event loop per worker thread, share-nothing; a slab
//! of connection state machines; heads parsed with httparse into a per-worker arena; bodies
//! streamed through pooled buffers; configuration behind arc-swap.
//!
//! Linux only (SO_REUSEPORT per worker, and later splice(2)).

pub mod acme;
pub mod admin;
pub mod balance;
pub mod buf;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod conn;
pub mod h1;
pub mod health;
pub mod limits;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod per_ip;
pub mod proxy_proto;
pub mod reactor;
pub mod resolve;
pub mod rules;
pub mod server;
pub mod splice;
pub mod status;
pub mod time;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod upstream;
