//! relay: the floor under any user-space proxy in bench/run's setup, measured in the same run.
//!
//!   relay --listen 127.0.0.1:P --upstream 127.0.0.1:U
//!
//! Each client connection gets its own upstream connection (1:1, like an L4 relay) and bytes are
//! copied both ways with one read and one write per message, no parsing, no pool, no timers: the
//! fewest syscalls a recv/send proxy can make (2 per direction), so its CPU per request is what
//! the kernel's loopback TCP costs a proxy here. One thread, edge-triggered epoll via mio.
//! Not a proxy anyone should run: it has no HTTP, no limits, and allocates per connection.
//!
//!   relay --listen 127.0.0.1:P --upstream 127.0.0.1:U --http
//!
//! With `--http`, each message read whole is also parsed once by httparse (a request head one
//! way, a response head the other, into uninitialised header slots, as Apex parses them) and
//! forwarded unchanged: the floor under any httparse-based proxy's instructions per request,
//! for bench/floor (issue #21). It still forwards bytes whatever the parse says.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 16 * 1024;

struct Dir {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    readable: bool,
}

impl Dir {
    fn new() -> Dir {
        Dir { buf: vec![0u8; BUF].into_boxed_slice(), start: 0, end: 0, readable: true }
    }

    /// Moves what `src` has to `dst`. Ok(true) when `src` closed. `parse`: what each read is
    /// parsed as (`--http`); the parse's result is only counted, never acted on.
    fn pump(&mut self, src: &TcpStream, dst: &TcpStream, parse: Parse, parsed: &mut u64) -> io::Result<bool> {
        loop {
            while self.start < self.end {
                match (&*dst).write(&self.buf[self.start..self.end]) {
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            self.start = 0;
            self.end = 0;
            if !self.readable {
                return Ok(false);
            }
            match (&*src).read(&mut self.buf) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    self.end = n;
                    if n < BUF {
                        self.readable = false; // a short read drained the socket
                    }
                    *parsed += u64::from(parse.head(&self.buf[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a direction's bytes are parsed as.
#[derive(Clone, Copy)]
enum Parse {
    Nothing,
    Request,
    Response,
}

impl Parse {
    /// Parses a head at the start of `buf`; true if one was there whole. 100 slots, as Apex's
    /// default `limits.headers`.
    #[inline(never)]
    fn head(self, buf: &[u8]) -> bool {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        match self {
            Parse::Nothing => false,
            Parse::Request => {
                let mut req = httparse::Request::new(&mut []);
                let r = req.parse_with_uninit_headers(buf, &mut slots);
                std::hint::black_box(&req);
                matches!(r, Ok(httparse::Status::Complete(_)))
            }
            Parse::Response => {
                let mut resp = httparse::Response::new(&mut []);
                let r = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
                std::hint::black_box(&resp);
                matches!(r, Ok(httparse::Status::Complete(_)))
            }
        }
    }
}

struct Pair {
    c: TcpStream,
    u: TcpStream,
    up: Dir,
    down: Dir,
}

fn arg(args: &[String], name: &str) -> Option<SocketAddr> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (arg(&args, "--listen"), arg(&args, "--upstream")) else {
        eprintln!("usage: relay --listen ADDR --upstream ADDR [--http]");
        std::process::exit(2);
    };
    let http = args.iter().any(|a| a == "--http");
    if let Err(e) = run(listen, upstream, http) {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

fn run(listen: SocketAddr, upstream: SocketAddr, http: bool) -> io::Result<()> {
    let (up, down) = if http { (Parse::Request, Parse::Response) } else { (Parse::Nothing, Parse::Nothing) };
    let mut parsed = 0u64;
    let mut poll = Poll::new()?;
    let mut l = TcpListener::bind(listen)?;
    poll.registry().register(&mut l, LISTENER, Interest::READABLE)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    println!("relay: listening on {listen}");
    loop {
        match poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            // callgrind_control (bench/floor) interrupts the wait.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut c, _)) = l.accept() {
                    let Ok(u) = std::net::TcpStream::connect(upstream) else { continue };
                    u.set_nonblocking(true)?;
                    let mut u = TcpStream::from_std(u);
                    c.set_nodelay(true)?;
                    u.set_nodelay(true)?;
                    let i = pairs.iter().position(Option::is_none).unwrap_or(pairs.len());
                    poll.registry().register(&mut c, Token(2 * i), Interest::READABLE | Interest::WRITABLE)?;
                    poll.registry().register(&mut u, Token(2 * i + 1), Interest::READABLE | Interest::WRITABLE)?;
                    let p = Pair { c, u, up: Dir::new(), down: Dir::new() };
                    if i == pairs.len() {
                        pairs.push(Some(p));
                    } else {
                        pairs[i] = Some(p);
                    }
                }
                continue;
            }
            let i = ev.token().0 / 2;
            let Some(Some(p)) = pairs.get_mut(i) else { continue };
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                if ev.token().0 % 2 == 0 {
                    p.up.readable = true;
                } else {
                    p.down.readable = true;
                }
            }
            let closed = match (p.up.pump(&p.c, &p.u, up, &mut parsed), p.down.pump(&p.u, &p.c, down, &mut parsed)) {
                (Ok(a), Ok(b)) => a || b,
                _ => true,
            };
            if closed && let Some(mut p) = pairs[i].take() {
                let _ = poll.registry().deregister(&mut p.c);
                let _ = poll.registry().deregister(&mut p.u);
            }
        }
    }
}
