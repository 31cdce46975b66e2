//! The whole connection state machine, driven by arbitrary client bytes and arbitrary upstream
//! bytes over real loopback sockets, with a worker turned by hand on this thread.
//!
//! Invariants checked, beyond not crashing:
//! - everything the upstream receives is a sequence of well-formed, canonical requests (one Host,
//!   at most one framing header, no hop-by-hop header, framing that accounts for every byte),
//!   except that the last one may be cut short when the client's own body was;
//! - the upstream never receives more requests than the client sent heads;
//! - everything the client receives is a sequence of well-formed responses whose framing accounts
//!   for every byte (the last may be cut short), and no more final responses than it sent heads,
//!   plus one for an error Apex answers itself.
#![no_main]
use std::cell::RefCell;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use apex::config::Config;
use apex::reactor::Worker;
use libfuzzer_sys::fuzz_target;

#[path = "shared/check.rs"]
mod check;
use check::{check_stream, drain};

struct Harness {
    worker: Worker,
    events: apex::reactor::Events,
    addr: SocketAddr,
    upstream: TcpListener,
}

thread_local!(static H: RefCell<Option<Harness>> = const { RefCell::new(None) });

fn harness() -> Harness {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[timeouts]\nclient_head = \"2s\"\n\
         [limits]\nconnections = 512\nbody_bytes = 100000\n[log]\naccess = \"off\"\n\
         [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"{}\"]\n",
        upstream.local_addr().unwrap()
    );
    let cfg = Config::parse(&text, "fuzz").unwrap();
    let (addrs, mut ls) = apex::reactor::bind_all(&cfg).unwrap();
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(cfg));
    let (logger, mut logs) = apex::log::Logger::start(apex::log::Sink::Off, 1).unwrap();
    std::mem::forget(logger);
    let worker = Worker::new(shared, ls.remove(0), logs.remove(0)).unwrap();
    Harness { worker, events: apex::reactor::Events::new(), addr: addrs[0], upstream }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let k = (split as usize * data.len()) / 255;
    let (client_bytes, upstream_bytes) = data.split_at(k.min(data.len()));
    H.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(harness);
        let mut client = TcpStream::connect(h.addr).unwrap();
        client.set_nonblocking(true).unwrap();
        client.set_nodelay(true).unwrap();
        let mut to_send = client_bytes;
        let mut got_client = Vec::new();
        let mut ups: Vec<(TcpStream, Vec<u8>, bool)> = Vec::new();
        let mut idle = 0;
        let mut client_done = false;
        for _ in 0..400 {
            let mut progress = false;
            if !to_send.is_empty() {
                match client.write(to_send) {
                    Ok(n) => {
                        to_send = &to_send[n..];
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => to_send = &[],
                }
            }
            h.worker.turn_within(&mut h.events, Duration::from_millis(1)).unwrap();
            while let Ok((s, _)) = h.upstream.accept() {
                s.set_nonblocking(true).unwrap();
                ups.push((s, Vec::new(), false));
                progress = true;
            }
            for (s, got, answered) in &mut ups {
                let (p, _) = drain(s, got);
                progress |= p;
                if !*answered && !got.is_empty() {
                    let _ = s.write_all(upstream_bytes);
                    let _ = s.shutdown(Shutdown::Write);
                    *answered = true;
                    progress = true;
                }
            }
            if !client_done {
                let (p, eof) = drain(&mut client, &mut got_client);
                progress |= p;
                client_done = eof;
            }
            if progress {
                idle = 0;
            } else {
                idle += 1;
                if idle > 6 && to_send.is_empty() {
                    break;
                }
            }
        }
        let heads_sent = client_bytes.windows(4).filter(|w| w == b"\r\n\r\n").count();
        let mut forwarded = 0;
        for (_, got, _) in &ups {
            forwarded += check_stream(got, true, false);
        }
        assert!(forwarded <= heads_sent, "upstream saw {forwarded} requests, client sent {heads_sent} heads");
        let sent_head = client_bytes.windows(5).any(|w| w == b"HEAD ");
        let responses = check_stream(&got_client, false, sent_head);
        assert!(responses <= heads_sent + 1, "client got {responses} responses for {heads_sent} heads");
        drop(client);
        drop(ups);
        for _ in 0..5 {
            h.worker.turn_within(&mut h.events, Duration::from_millis(1)).unwrap();
        }
    });
});
