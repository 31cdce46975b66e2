//! Heads: the request head read, parsed and routed (`ReadHead`), the head sent upstream written
//! from the parsed request, the response head parsed and rewritten for the client, and Apex's
//! own answers (errors, redirects, a route's `redirect` / `respond`). A route's rules (`rules.rs`)
//! are applied here: its path rewrite before the head is written, its header rules and the
//! request id as the heads are written. Parsing and serialising live in `h1/`, without sockets;
//! this file decides what a parsed head means for the connection.

use std::sync::Arc;

use crate::buf::{Buf, BufPool};
use crate::config::{ForwardedFor, RetryPolicy};
use crate::h1::chunked::Decoder;
use crate::h1::head::{parse_request, parse_request_in};
use crate::h1::response::{parse_response, parse_response_in};
use crate::h1::write::{
    Location, Out, Own, RespMode, write_answer, write_request, write_response, write_route_answer, write_text_answer,
    write_too_many,
};
use crate::h1::{Field, Framing, H1Error, check_request_line, find_head_end, token_hash};
use crate::limits::{HEADERS_CAP, INTERIM_MAX, LEADING_CRLF_MAX};
use crate::log::{Kind, Level, Rec, Sink};
use crate::metrics::Reject;
use crate::rules::{Edits, HeaderRules, PathRule, Vars};
use crate::transport::{End, Filled};
use crate::upstream::UpKey;

use super::exchange::{Body, Retry};
use super::{Conn, Cx, Exchange, Fault, Next, Phase, Step};

/// RFC 9112 §2.2: a few empty lines before a request line are ignored.
fn skip_empty_lines(cin: &mut crate::buf::Buf<{ crate::limits::BUF_BYTES }>) {
    for _ in 0..LEADING_CRLF_MAX {
        if cin.filled().starts_with(b"\r\n") {
            cin.consume(2);
        } else {
            break;
        }
    }
}

impl Conn {
    // ---- ReadHead -------------------------------------------------------------------------

    /// Out of line, as `response_head` is: the two largest bodies of the request path, each
    /// with its own frame and registers instead of adding to `Conn::run`'s (see `apart`).
    #[inline(never)]
    pub(super) fn read_head(&mut self, rq: &mut Exchange, cx: &mut Cx) -> Step {
        let progress = self.flush_client(cx)? > 0;
        let limits = cx.cfg.limits;
        let mut cin = cx.bufs.fill_slot(&mut self.cin);
        skip_empty_lines(cin);
        if cin.is_empty() {
            // Between requests: read, and parse what came in this same pass rather than on a
            // second trip through the phase loop (issue #21).
            let next = self.await_head(rq, cx, progress)?;
            match self.cin.as_mut() {
                Some(b) if matches!(next, Next::Again) && !b.is_empty() => cin = b,
                _ => return Ok(next),
            }
            skip_empty_lines(cin);
            if cin.is_empty() {
                return Ok(Next::Again); // only empty lines came: read again
            }
        }
        // A whole head in one read, the common case, is parsed straight from the buffer; the
        // resumable scan takes over for a head that arrives in pieces (a scan started, or none
        // found whole), and has the final say on one that starts with an empty line.
        cx.arena.reset();
        let fresh =
            if rq.head_scan == 0 { parse_request_in(cin.filled(), &cx.arena, limits.headers) } else { Ok(None) };
        let (mut req, end) = match fresh {
            Ok(Some(whole)) => whole,
            Err(e) => return self.reject(rq, cx, e),
            Ok(None) => {
                let mut scan = rq.head_scan as usize;
                let found = find_head_end(cin.filled(), &mut scan);
                // Within a buffer: fits. It stays 0 only while the buffer is empty or starts
                // with a CR, where `parse_request_in` gives up at its first byte: the fast path
                // costs a whole parse at most once per head.
                rq.head_scan = scan as u32;
                let found = match found {
                    Ok(f) => f,
                    Err(e) => return self.reject(rq, cx, e),
                };
                let Some(end) = found else {
                    return self.await_head(rq, cx, progress);
                };
                let head = self.cin.as_ref().and_then(|b| b.filled().get(..end));
                debug_assert!(head.is_some(), "find_head_end returns an end within the buffer");
                match parse_request(head.unwrap_or(&[]), &cx.arena, limits.headers) {
                    Ok(r) => (r, end),
                    // A syntax error says nothing about the version; answer for what we saw.
                    Err(e) => return self.reject(rq, cx, e),
                }
            }
        };
        if end > limits.head_bytes {
            return self.reject(rq, cx, H1Error::HeadTooLarge);
        }
        rq.start = Some(cx.now_ns);
        rq.bytes_in = end as u64;
        // The client: the peer (after any PROXY header), or, from a peer in `trusted_proxies`,
        // the right-most untrusted X-Forwarded-For entry (`h1::forwarded`).
        let peer = self.peer.ip();
        let trusted = &cx.cfg.trusted_proxies;
        let client = if trusted.is_empty() || !crate::cidr::any_contains(trusted, peer) {
            peer
        } else {
            let lines = req.headers.iter().zip(req.fields).filter(|(_, f)| **f == Field::XForwardedFor);
            let client = crate::h1::forwarded::client(lines.map(|(h, _)| h.value), peer, trusted);
            rq.client = Some(client);
            client
        };
        if let Some(rec) = new_rec(&mut cx.recs, cx.cfg.log.access != Sink::Off, rq) {
            let header = |name: &str| {
                req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map_or(&[][..], |h| h.value)
            };
            rec.capture(req.method.as_bytes(), req.path.as_bytes(), req.minor, header("referer"), header("user-agent"));
        }
        if cx.cfg.log.request_id {
            rq.take_id(req.headers, &mut cx.ids);
            rq.id_out = true;
        }
        rq.keep_alive = req.keep_alive;
        rq.client_minor = req.minor;
        rq.is_head = req.is_head();
        rq.upgrade = [0; 2];
        if let Some(u) = req.upgrade {
            for (slot, p) in rq.upgrade.iter_mut().zip(crate::h1::list_items(u)) {
                *slot = token_hash(p);
            }
        }
        rq.req_body = match req.framing {
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Decoder::new()),
            Framing::None | Framing::Close => Body::Done,
        };
        rq.retry = if req.idempotent() && matches!(req.framing, Framing::None) { Retry::Once } else { Retry::Never };
        let has_body = !matches!(req.framing, Framing::None);
        let expect_continue = req.expect_continue && has_body;
        if let Framing::Length(n) = req.framing
            && n > cx.cfg.body_bytes_max
        {
            return self.reject(rq, cx, H1Error::BodyTooLarge);
        }
        // OPTIONS * (RFC 9112 §3.2.4) is about the server as a whole: route it as "/".
        let path = if req.path == "*" { b"/" } else { req.path.as_bytes() };
        if self.tls.is_none()
            && let Some(token) = path.strip_prefix(crate::acme::HTTP01_PREFIX)
            && let Some(n) = crate::acme::key_authorization(token, |ka| {
                // RFC 8555 §8.3: a pending HTTP-01 token is answered on any plain listener,
                // before the redirect and the routes. The body is not read: close after, like
                // a 308's (decided before the head is written, which says so).
                rq.close_after |= has_body || !rq.keep_alive || cx.draining;
                let n = queue_body_answer(&mut self.cout, &mut cx.bufs, rq, ka)?;
                Ok::<_, Fault>((n, if rq.is_head { 0 } else { ka.len() }))
            })
        {
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            let (n, body) = n?;
            return self.answered(rq, cx, 200, n, body);
        }
        if self.redirect {
            // A plain listener that sends everyone to HTTPS: 308 keeps the method and body
            // (RFC 9110 §15.4.9). The body is not read: close after, like a 404's.
            rq.close_after |= has_body || !rq.keep_alive || cx.draining;
            let to = Location { host: req.host_name, port: cx.https_port, target: path };
            let n = queue_answer(&mut self.cout, &mut cx.bufs, rq, 308, Some(to))?;
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            return self.answered(rq, cx, 308, n, super::answer_body(rq, 308));
        }
        let path_only = path.split(|&b| b == b'?').next().unwrap_or(path);
        let Some(route) = cx.cfg.route(req.host_name, path_only) else {
            let close = has_body; // the body was not read: it cannot be told from the next request
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            return self.fail(rq, cx, Reject::NoRoute, close);
        };
        // The real client's address (after a PROXY header) against the route's rules.
        if !route.access.is_open() && !route.access.admits(client) {
            let close = has_body; // the body is not read, as for a 404
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            return self.fail(rq, cx, Reject::Forbidden, close);
        }
        if let Some(rate) = &route.rate
            && let Err(secs) = cx.rates.take(client, route.id, rate, cx.now())
        {
            let close = has_body; // the body is not read, as for a 403
            if let Some(b) = self.cin.as_mut() {
                b.consume(end);
            }
            return self.limited(rq, cx, secs, close);
        }
        rq.route = route.slot as u32; // below ROUTE_SLOTS
        let rules = route.rules.and_then(|i| cx.cfg.rules.get(i));
        if let Some(r) = rules {
            rq.rules = route.rules.map(|i| i as u32); // config rules are few
            if r.uses_id && rq.id_len == 0 {
                rq.make_id(&mut cx.ids);
            }
            if let Some(a) = &r.answer {
                // Apex answers this route itself. The body is not read: close after, as for a 404.
                rq.close_after |= has_body || !rq.keep_alive || cx.draining;
                let vars = Vars {
                    client_ip: client,
                    https: self.tls.is_some(),
                    host: req.host_name,
                    path: req.path.as_bytes(),
                    id: rq.id(),
                };
                let resp = (!r.response.is_empty()).then_some((&r.response, &vars));
                let n =
                    queue_own(&mut self.cout, &mut cx.bufs, rq, resp, |w, own| write_route_answer(a, &vars, own, w))?;
                let (status, body) = (a.status(), a.body_len(rq.is_head));
                if let Some(b) = self.cin.as_mut() {
                    b.consume(end);
                }
                return self.answered(rq, cx, status, n, body);
            }
        }
        let group = route.group;
        rq.per = route.per;
        if let Framing::Length(n) = req.framing
            && n > rq.per.body_bytes
        {
            return self.reject(rq, cx, H1Error::BodyTooLarge);
        }
        rq.group = group as u32; // config groups are few
        let g = cx.cfg.groups.get(group);
        rq.key = match g.map(|g| &g.balance) {
            Some(crate::balance::Balance::Hash(on)) => hash_key(on, &req, client),
            _ => None,
        };
        rq.send_proxy = g.and_then(|g| g.send_proxy);
        rq.snap = Some(Arc::clone(&cx.cfg));
        // strip_prefix / rewrite: the target that goes upstream, built in the arena.
        if let Some(r) = rules
            && r.path != PathRule::Keep
        {
            match r.path.apply(req.path, &cx.arena) {
                Ok(Some(path)) => req.path = path,
                Ok(None) => {}
                Err(e) => return self.reject(rq, cx, e),
            }
        }

        let uout = cx.bufs.fill_slot(&mut rq.uout);
        uout.clear();
        let mut w = Out::new(uout.spare());
        // Built only for a route with request rules or with ids on: the common route pays a branch.
        let req_rules = rules.map(|r| &r.request).filter(|r| !r.is_empty());
        let (vars, edits);
        let edits = if req_rules.is_some() || rq.id_out {
            let id = rq.id.get(..usize::from(rq.id_len)).unwrap_or(&[]);
            vars = Vars { client_ip: client, https: self.tls.is_some(), host: req.host_name, path: b"", id };
            edits = Edits { rules: req_rules.map(|r| (r, &vars)), id: rq.id_out.then_some(id) };
            Some(&edits)
        } else {
            None
        };
        // `forwarded_for = "append"`: the list as received, then the peer Apex saw; "replace":
        // the client Apex decided on, alone.
        let (xff, append) = match cx.cfg.forwarded_for {
            ForwardedFor::Append => (peer, true),
            ForwardedFor::Replace => (client, false),
        };
        write_request(&req, xff, append, self.tls.is_some(), edits, &mut w);
        let Some(n) = w.finish() else {
            return self.reject(rq, cx, H1Error::HeadTooLarge);
        };
        uout.commit(n);
        rq.head_len = n as u32; // within a buffer
        if let Some(b) = self.cin.as_mut() {
            b.consume(end);
        }
        // Buffers are held only while they hold bytes: a body or the next request takes one again.
        cx.bufs.release_if_empty(&mut self.cin);
        // RFC 9110 §10.1.1: Apex answers 100-continue itself, once it has an upstream to send to
        // (the Expect header is not forwarded, so the upstream never sends a second one).
        if expect_continue {
            let cout = cx.bufs.fill_slot(&mut self.cout);
            const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
            if !cout.put(CONTINUE) {
                return Err(Fault::Client);
            }
            rq.bytes_out += CONTINUE.len() as u64;
            rq.head_out += CONTINUE.len() as u64;
        }
        Ok(Next::Go(Phase::Connect))
    }

    /// No whole head yet: check the request line early, enforce the size limit, and read more.
    fn await_head(&mut self, rq: &mut Exchange, cx: &mut Cx, progress: bool) -> Step {
        let limits = cx.cfg.limits;
        let cin = cx.bufs.fill_slot(&mut self.cin);
        if !rq.line_ok && !cin.is_empty() {
            match check_request_line(cin.filled()) {
                Ok(ok) => rq.line_ok = ok,
                Err(e) => return self.reject(rq, cx, e),
            }
        }
        if cin.len() >= limits.head_bytes {
            return self.reject(rq, cx, H1Error::HeadTooLarge);
        }
        let got = End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() }.fill(&mut cx.tls_bufs, cin);
        if got.is_err() && self.tls.as_ref().is_some_and(|t| t.failed()) {
            // A TLS handshake refused with an alert: close gracefully so it is read.
            return Ok(Next::Go(Phase::Linger));
        }
        match got.map_err(|_| Fault::Client)? {
            Filled::Data(_) => {
                // Bytes read after a reload completed are parsed and routed by the new config,
                // even in a batch that began before the swap.
                cx.refresh();
                if !rq.head_timer {
                    rq.head_timer = true;
                    self.deadline = cx.arm(cx.cfg.timeouts.client_head);
                }
                Ok(Next::Again)
            }
            Filled::Eof => {
                // Between requests, a close is the client's way to end; mid-head it aborts
                // only the request it cut. Responses to earlier requests still go out.
                if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
                    if let Some(b) = self.cin.as_mut() {
                        b.clear();
                    }
                    rq.close_after = true;
                    return Ok(Next::Go(Phase::Respond));
                }
                // RFC 8446 §6.1: each side sends close_notify before closing its write
                // side; a TLS client's came first, Apex's answers it.
                if let Some(t) = self.tls.as_deref_mut().filter(|t| t.closed_cleanly()) {
                    t.close_notify(&self.sock, &mut self.io, &mut cx.tls_bufs);
                }
                Ok(Next::Go(Phase::Close))
            }
            Filled::Idle => {
                cx.bufs.release_if_empty(&mut self.cin);
                Ok(if progress { Next::Again } else { Next::Wait })
            }
        }
    }

    /// A malformed request: its status, `Connection: close`, and nothing forwarded.
    fn reject(&mut self, rq: &mut Exchange, cx: &mut Cx, e: H1Error) -> Step {
        let peer = self.peer;
        cx.log.event_of(
            cx.now(),
            Level::Info,
            Kind::Request,
            format_args!("client {peer}: {} {}", e.status(), e.as_str()),
        );
        // Rejected before its head was captured (it did not parse): log what can be read of it.
        if rq.rec.is_none()
            && let Some(rec) = new_rec(&mut cx.recs, cx.cfg.log.access != Sink::Off, rq)
        {
            rec.capture_raw(self.cin.as_ref().map_or(&[][..], Buf::filled));
        }
        if let Some(b) = self.cin.as_mut() {
            b.clear();
        }
        self.fail(rq, cx, Reject::of(e), true)
    }

    /// Over its route's `rate`: 429 (RFC 6585 §4) with Retry-After in whole seconds, when the
    /// bucket will hold a token again (RFC 9110 §10.2.3). Nothing is forwarded.
    fn limited(&mut self, rq: &mut Exchange, cx: &mut Cx, secs: u32, close: bool) -> Step {
        if let Some(c) = cx.metrics.rejected.get(Reject::RateLimited as usize) {
            c.inc();
        }
        rq.close_after |= close || !rq.keep_alive || cx.draining;
        let n = queue_own(&mut self.cout, &mut cx.bufs, rq, None, |w, own| write_too_many(secs, own, w))?;
        self.answered(rq, cx, 429, n, super::answer_body(rq, 429))
    }

    // ---- The response head ----------------------------------------------------------------

    /// Finds the response head in `uin` (parsed straight from the buffer when it came whole,
    /// as in `read_head`), checks it, writes the client's, and goes on to the body (or the
    /// tunnel, after a 101). Without a whole head yet, waits for more. Out of line: see
    /// `read_head`.
    #[inline(never)]
    pub(super) fn response_head(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey, progress: bool) -> Step {
        cx.arena.reset();
        let buf = rq.uin.as_ref().map_or(&[][..], Buf::filled);
        let fresh =
            if rq.resp_scan == 0 { parse_response_in(buf, &cx.arena, HEADERS_CAP, rq.is_head) } else { Ok(None) };
        let (resp, end) = match fresh {
            Ok(Some(whole)) => whole,
            Err(_) => return self.upstream_bad(rq, cx),
            Ok(None) => {
                let mut scan = rq.resp_scan as usize;
                let found = find_head_end(buf, &mut scan);
                rq.resp_scan = scan as u32; // within a buffer: fits; see read_head for when it stays 0
                let end = match found {
                    Ok(Some(end)) => end,
                    Ok(None) => return self.await_response(rq, cx, progress),
                    Err(_) => return self.upstream_bad(rq, cx),
                };
                match parse_response(buf.get(..end).unwrap_or(&[]), &cx.arena, HEADERS_CAP, rq.is_head) {
                    Ok(r) => (r, end),
                    Err(_) => return self.upstream_bad(rq, cx),
                }
            }
        };
        if resp.code == 101 {
            // RFC 9110 §7.8: a server switches only to a protocol the client listed. Anything
            // else, h2c included, is an upstream switching on its own: refused.
            let asked = |p: &[u8]| rq.upgrade.contains(&token_hash(p));
            let ok = resp
                .upgrade
                .is_some_and(|u| crate::h1::list_items(u).all(|p| !p.is_empty() && asked(p)) && !u.is_empty());
            // And only once the request is fully sent, its tail in `uout` included: the
            // tunnel relays client bytes only, so body bytes still in Apex would be lost and
            // the client's next bytes taken for them (RFC 9112 §6.3).
            // Upgrade is HTTP/1.1's (§7.8); HTTP/1.0 has no 1xx (§15.2): a 1.0 "switch" is not one.
            if rq.upgrade == [0; 2] || !ok || !rq.req_sent() || resp.minor != 1 {
                return self.upstream_bad(rq, cx); // a switch nobody asked for
            }
        } else if resp.code < 200 {
            // Interim responses: Apex answered 100-continue itself; the rest are dropped.
            rq.interim += 1;
            if rq.interim > INTERIM_MAX {
                return self.upstream_bad(rq, cx);
            }
            if let Some(b) = rq.uin.as_mut() {
                b.consume(end);
            }
            rq.resp_scan = 0;
            return Ok(Next::Again);
        } else if rq.per.retry.on_status(resp.code) {
            // The route's `retry` on this status: nothing of it has reached the client yet.
            let said = match resp.code {
                500 => "answered 500",
                502 => "answered 502",
                503 => "answered 503",
                _ => "answered 504",
            };
            if super::connect::may_retry(rq, cx, RetryPolicy::status_bit(resp.code)) {
                return Ok(self.retry(rq, cx, said));
            }
        }
        let tunnel = resp.code == 101;
        let (framing, body) = match resp.framing {
            Framing::None => (Framing::None, Body::Done),
            Framing::Length(n) => (Framing::Length(n), Body::Length(n)),
            // RFC 9112 §7.1: HTTP/1.0 has no chunked coding: de-chunk and delimit by close.
            Framing::Chunked if rq.client_minor == 1 => (Framing::Chunked, Body::Chunked(Decoder::new())),
            Framing::Chunked => (Framing::Close, Body::Chunked(Decoder::new())),
            Framing::Close => (Framing::Close, Body::Raw),
        };
        rq.rechunk = framing == Framing::Chunked;
        if framing == Framing::Close {
            rq.close_after = true;
        }
        // A request body still coming in cannot be told from the next request: say close.
        let keep_alive = rq.keep_alive && !rq.close_after && !tunnel && !cx.draining && rq.req_done();
        let mode = RespMode { framing, keep_alive, client_minor: rq.client_minor, tunnel };
        let cout = cx.bufs.fill_slot(&mut self.cout);
        let mut w = Out::new(cout.spare());
        // The route's response rules (their variables: what is still known now) and the id.
        let (vars, edits);
        let edits = if rq.rules.is_some() || rq.id_out {
            let id = rq.id.get(..usize::from(rq.id_len)).unwrap_or(&[]);
            vars = Vars {
                client_ip: rq.client.unwrap_or(self.peer.ip()),
                https: self.tls.is_some(),
                host: b"",
                path: b"",
                id,
            };
            let rules = rq.rules.and_then(|i| rq.snap.as_deref()?.rules.get(i as usize)).map(|r| &r.response);
            edits = Edits { rules: rules.filter(|r| !r.is_empty()).map(|r| (r, &vars)), id: rq.id_out.then_some(id) };
            Some(&edits)
        } else {
            None
        };
        write_response(&resp, mode, edits, &mut w);
        match w.finish() {
            Some(n) => {
                cout.commit(n);
                rq.bytes_out += n as u64;
                rq.head_out += n as u64;
                rq.status = resp.code;
            }
            None if !cout.is_empty() => {
                // Earlier bytes first; the head is found again from the start next time.
                rq.resp_scan = 0;
                return Ok(Next::Wait);
            }
            None => return self.upstream_bad(rq, cx),
        }
        rq.resp_reusable = resp.reusable;
        rq.resp_body = body;
        if let Some(b) = rq.uin.as_mut() {
            b.consume(end);
        }
        // The head sent upstream is no longer needed for a retry once a response has come.
        cx.bufs.release_if_empty(&mut rq.uout);
        if !keep_alive {
            rq.close_after = true;
        }
        if tunnel {
            return Ok(Next::Go(Phase::Tunnel(up)));
        }
        if let Some(next) = self.whole_body(rq, cx, up)? {
            return Ok(next);
        }
        Ok(Next::Go(Phase::RespBody(up)))
    }

    /// No whole response head yet: a head larger than a buffer, or one cut short, is the
    /// upstream's fault; otherwise wait for more, the deadline re-armed on progress.
    fn await_response(&mut self, rq: &mut Exchange, cx: &mut Cx, progress: bool) -> Step {
        if rq.uin.as_ref().is_none_or(|b| b.spare_len() == 0) || rq.up_end.ended() {
            return self.upstream_bad(rq, cx);
        }
        if progress {
            let t = rq.per;
            self.deadline = cx.arm(if rq.sent_all() { t.upstream_head } else { t.client_body });
            return Ok(Next::Again);
        }
        Ok(Next::Wait)
    }
}

/// Writes Apex's own response (an error, or a redirect) into `cout`. Returns its length.
pub(super) fn queue_answer(
    cout: &mut Option<Buf>,
    bufs: &mut BufPool,
    rq: &Exchange,
    status: u16,
    to: Option<Location<'_>>,
) -> Result<usize, Fault> {
    queue_own(cout, bufs, rq, None, |w, own| write_answer(status, to, own, w))
}

/// Writes an ACME HTTP-01 answer (RFC 8555 §8.3: 200, the key authorization as the body)
/// into `cout`. Returns its length.
fn queue_body_answer(cout: &mut Option<Buf>, bufs: &mut BufPool, rq: &Exchange, body: &[u8]) -> Result<usize, Fault> {
    queue_own(cout, bufs, rq, None, |w, own| write_text_answer(body, own, w))
}

/// Queues a response Apex writes itself with `write(out, own)`, with the request's id and
/// `rules` (a route's response rules). Returns its length.
fn queue_own(
    cout: &mut Option<Buf>,
    bufs: &mut BufPool,
    rq: &Exchange,
    rules: Option<(&HeaderRules, &Vars)>,
    write: impl FnOnce(&mut Out, Own),
) -> Result<usize, Fault> {
    let edits = Edits { rules, id: rq.id_out.then(|| rq.id()) };
    let own = Own {
        edits: (edits.rules.is_some() || edits.id.is_some()).then_some(&edits),
        close: rq.close_after,
        head_only: rq.is_head,
        keep_alive_10: rq.client_minor == 0 && !rq.close_after,
    };
    let out = bufs.fill_slot(cout);
    let mut w = Out::new(out.spare());
    write(&mut w, own);
    // No room: the client has not read earlier responses (or a redirect's target is nearly a
    // whole buffer long); give up.
    let n = w.finish().ok_or(Fault::Client)?;
    out.commit(n);
    Ok(n)
}

/// A free access-log record for this exchange (`rq.rec`), while the access log is on and the
/// per-worker table has room (it never grows: no allocation).
fn new_rec<'a>(recs: &'a mut slab::Slab<Rec>, logging: bool, rq: &mut Exchange) -> Option<&'a mut Rec> {
    if !logging || recs.len() >= recs.capacity() {
        return None;
    }
    let entry = recs.vacant_entry();
    rq.rec = u32::try_from(entry.key()).ok();
    Some(entry.insert(Rec::empty()))
}

/// A request's key for `balance = "hash"`: none without the header or cookie (it is then
/// balanced round-robin, as HAProxy does).
fn hash_key(on: &crate::balance::HashOn, req: &crate::h1::head::Request, peer: std::net::IpAddr) -> Option<u64> {
    use crate::balance::{HashOn, cookie, hash};
    match on {
        HashOn::ClientIp => Some(match peer {
            std::net::IpAddr::V4(a) => hash(&a.octets()),
            std::net::IpAddr::V6(a) => hash(&a.octets()),
        }),
        HashOn::Header(name) => {
            req.headers.iter().find(|h| h.name.as_bytes().eq_ignore_ascii_case(name)).map(|h| hash(h.value))
        }
        // RFC 6265 §5.4: a client sends one Cookie field; HTTP/1.1 clients may still split it.
        HashOn::Cookie(name) => req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| cookie(h.value, name))
            .map(hash),
    }
}
