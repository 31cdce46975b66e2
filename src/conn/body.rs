//! Bodies both ways and the end of an exchange: the request going out while the response head
//! comes in (`Exchange`), the response body coming back while the rest of the request body may
//! still go out (`RespBody`), each direction copied through pooled buffers or, when long enough
//! and neither side speaks TLS, spliced through a pipe; then the upstream connection pooled or
//! closed, and the next request or the close.
//!
//! Framing stays in user space (RFC 9112 §6-7): a splice never moves more than the rest of a
//! Content-Length body or of the current chunk's data.

use crate::buf::Buf;
use crate::h1::chunked::ChunkError;
use crate::limits::{PIPE_BYTES, SPLICE_MIN_BYTES};
use crate::splice::Spliced;
use crate::tls::Tls;
use crate::transport::{End, Filled};
use crate::upstream::{UpConn, UpKey};

use super::exchange::{Body, EndedBy, UpEnd};
use super::{Broken, Conn, Cx, Exchange, Fault, Next, Phase, Step, up_conn};
use crate::metrics::Reject;

/// What pumping the request body did: moved bytes (or not), or the exchange must change course.
enum Pump {
    Moved(bool),
    Divert(Next),
}

impl Conn {
    // ---- Exchange: request out, response head in -----------------------------------------

    pub(super) fn exchange(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Step {
        let mut progress = self.flush_client(cx)? > 0;
        match self.pump_request(rq, cx, up)? {
            Pump::Moved(moved) => progress |= moved,
            Pump::Divert(next) => return Ok(next),
        }
        let u = up_conn(&mut cx.ups, up)?;
        // Send what we have upstream.
        let sent = match rq.uout.as_mut() {
            Some(b) if !rq.up_wr_failed => end_of(u).flush(&mut cx.tls_bufs, b),
            _ => Ok(0),
        };
        let sent = match sent {
            Ok(n) => n,
            Err(_) => {
                // An upstream that answers early may close on the rest of the request: read on.
                rq.up_wr_failed = true;
                0
            }
        };
        progress |= sent > 0;
        // Read the response head.
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        match end_of(u).fill(&mut cx.tls_bufs, uin) {
            Ok(Filled::Data(_)) => {
                if !rq.resp_seen {
                    // The upstream's time to first byte is counted with the exchange (log_done).
                    rq.first_byte = Some(cx.now_ns);
                }
                rq.resp_seen = true;
                progress = true;
            }
            Ok(Filled::Idle) => {}
            end @ (Ok(Filled::Eof) | Err(_)) => {
                if uin.is_empty() || !rq.resp_seen {
                    return self.upstream_failed(rq, cx, up);
                }
                rq.up_end = if end.is_err() || !u.ended_cleanly() { UpEnd::Cut } else { UpEnd::Clean };
            }
        }
        // The request has just gone out and no response byte is in: what `response_head` would
        // do (no head in an empty buffer: re-arm on progress, run again), without its pass over
        // an empty buffer, and without the pass after it when that one can do nothing either:
        // all of the request sent, nothing queued for the client, and neither socket with
        // anything to take without a new edge (a TLS session only when it holds no bytes read
        // or sealed: `Tls::is_quiet`).
        let quiet = progress
            && self.tls.as_deref().is_none_or(Tls::is_quiet)
            && u.tls.as_deref().is_none_or(Tls::is_quiet)
            && !u.io.readable
            && !rq.up_end.ended()
            && rq.uin.as_ref().is_some_and(Buf::is_empty)
            && rq.resp_scan == 0
            && rq.req_sent()
            && self.cout.as_ref().is_none_or(Buf::is_empty);
        if quiet {
            self.deadline = cx.arm(rq.per.upstream_head); // `await_response`'s, as `sent_all` holds
            return Ok(Next::Wait);
        }
        self.response_head(rq, cx, up, progress)
    }

    /// Moves request body bytes from the client to `uout`, reading the client as needed.
    fn pump_request(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Result<Pump, Fault> {
        if rq.req_done() {
            return Ok(Pump::Moved(false));
        }
        if rq.up_wr_failed {
            // The rest of the body cannot be told from a next request: close after the response.
            rq.close_after = true;
            return Ok(Pump::Moved(false));
        }
        let cin_empty = self.cin.as_ref().is_none_or(Buf::is_empty);
        let uout_empty = rq.uout.as_ref().is_none_or(Buf::is_empty);
        let pending = rq.preq.as_ref().is_some_and(|p| p.pending > 0);
        // TLS on either side: records, not bytes, so bodies are copied. (The upstream slot is
        // looked up last: only for a body long enough to splice.)
        let spliceable = self.tls.is_none()
            && matches!(rq.req_body, Body::Length(_) | Body::Chunked(_))
            && rq.req_body.spliceable().is_some_and(|n| n > SPLICE_MIN_BYTES)
            && cx.ups.get(up).is_none_or(|u| u.tls.is_none());
        if pending || (spliceable && cin_empty && uout_empty) {
            if rq.preq.is_none() {
                rq.preq = cx.pipes.take();
            }
            if rq.preq.is_some() {
                return self.splice_request(rq, cx, up);
            }
        }
        let mut progress = false;
        let cin = cx.bufs.fill_slot(&mut self.cin);
        let uout = cx.bufs.fill_slot(&mut rq.uout);
        if !rq.client_eof {
            let mut client = End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() };
            match client.fill(&mut cx.tls_bufs, cin) {
                Ok(Filled::Data(_)) => progress = true,
                Ok(Filled::Idle) => {}
                // The body may already be whole in `cin` (data and FIN in one event): decide
                // after relaying it whether this is an abort.
                Ok(Filled::Eof) | Err(_) => rq.client_eof = true,
            }
        }
        let spare = uout.spare();
        let relayed = match &mut rq.req_body {
            Body::Length(rem) => {
                let n = copy_prefix(cin.filled(), spare, *rem);
                *rem -= n as u64;
                Some((n, n))
            }
            Body::Chunked(dec) => dec.relay(cin.filled(), spare, true).ok(),
            Body::Done | Body::Raw => Some((0, 0)),
        };
        let Some((used, made)) = relayed else {
            // RFC 9112 §7.1: malformed chunked framing is the client's error.
            return self.fail(rq, cx, Reject::BadFraming, true).map(Pump::Divert);
        };
        cin.consume(used);
        uout.commit(made);
        rq.bytes_in += used as u64;
        let limit = rq.per.body_bytes;
        if matches!(rq.req_body, Body::Chunked(d) if d.data_total > limit) {
            return self.fail(rq, cx, Reject::BodyTooLarge, true).map(Pump::Divert);
        }
        // A client that vanished with its body unfinished aborts its exchange; one that
        // half-closed after a whole body gets its response, then the connection closes.
        if rq.client_eof {
            rq.close_after = true;
            if !rq.req_body.is_done() && self.cin.as_ref().is_none_or(Buf::is_empty) {
                rq.ended_by = EndedBy::Client;
                self.drop_upstream(rq, cx);
                return Ok(Pump::Divert(Next::Go(Phase::Close)));
            }
        }
        Ok(Pump::Moved(progress || used > 0))
    }

    /// The rest of a Content-Length request body, client socket -> pipe -> upstream socket.
    fn splice_request(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Result<Pump, Fault> {
        let u = up_conn(&mut cx.ups, up)?;
        let Some(pipe) = rq.preq.as_mut() else {
            debug_assert!(false, "splice_request without a pipe");
            return Err(Fault::Internal(Broken::RequestPipe));
        };
        let mut progress = false;
        for _ in 0..2 {
            match crate::splice::drain(&u.sock, &mut u.io, pipe) {
                Ok(n) => progress |= n > 0,
                Err(_) => {
                    rq.up_wr_failed = true;
                    rq.close_after = true;
                    return Ok(Pump::Moved(progress));
                }
            }
            let Some(rem) = rq.req_body.spliceable() else { break };
            let room = PIPE_BYTES.saturating_sub(pipe.pending);
            if room == 0 || rem == 0 {
                break;
            }
            let max = usize::try_from(rem).unwrap_or(usize::MAX).min(room);
            match crate::splice::fill(&self.sock, &mut self.io, pipe, max) {
                Ok(Spliced::Bytes(n)) => {
                    rq.req_body.spliced(n as u64);
                    rq.bytes_in += n as u64;
                    rq.spliced_in += n as u64;
                    progress = true;
                }
                Ok(Spliced::Idle) => break,
                // A client that vanishes mid-request aborts its exchange.
                Ok(Spliced::Eof) | Err(_) => {
                    rq.client_eof = true;
                    rq.ended_by = EndedBy::Client;
                    self.drop_upstream(rq, cx);
                    return Ok(Pump::Divert(Next::Go(Phase::Close)));
                }
            }
        }
        Ok(Pump::Moved(progress))
    }

    /// The rest of a long Content-Length or close-delimited response, upstream -> pipe -> client.
    /// Returns whether bytes moved.
    fn splice_response(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Result<bool, Fault> {
        let u = up_conn(&mut cx.ups, up)?;
        let Some(pipe) = rq.presp.as_mut() else {
            debug_assert!(false, "splice_response without a pipe");
            return Err(Fault::Internal(Broken::ResponsePipe));
        };
        let mut progress = false;
        for _ in 0..2 {
            progress |= crate::splice::drain(&self.sock, &mut self.io, pipe).map_err(|_| Fault::Client)? > 0;
            let room = PIPE_BYTES.saturating_sub(pipe.pending);
            if room == 0 || rq.up_end.ended() {
                break;
            }
            let max = rq.resp_body.spliceable().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(room));
            if max == 0 {
                break;
            }
            match crate::splice::fill(&u.sock, &mut u.io, pipe, max) {
                Ok(Spliced::Bytes(n)) => {
                    rq.resp_body.spliced(n as u64);
                    rq.bytes_out += n as u64;
                    rq.spliced_out += n as u64;
                    progress = true;
                }
                Ok(Spliced::Idle) => break,
                Ok(Spliced::Eof) => rq.up_end = UpEnd::Clean,
                Err(_) => rq.up_end = UpEnd::Cut,
            }
        }
        Ok(progress)
    }

    // ---- RespBody ---------------------------------------------------------------------------

    pub(super) fn resp_body(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Step {
        let mut progress = match self.pump_request(rq, cx, up)? {
            Pump::Moved(moved) => moved,
            Pump::Divert(next) => return Ok(next),
        };
        let u = up_conn(&mut cx.ups, up)?;
        if let Some(b) = rq.uout.as_mut()
            && !rq.up_wr_failed
        {
            match end_of(u).flush(&mut cx.tls_bufs, b) {
                Ok(n) => progress |= n > 0,
                // The response keeps coming in; the rest of the request is dropped.
                Err(_) => rq.up_wr_failed = true,
            }
        }
        // TLS on either side: records, not bytes, so bodies are copied.
        let spliceable =
            self.tls.is_none() && u.tls.is_none() && rq.resp_body.spliceable().is_some_and(|n| n > SPLICE_MIN_BYTES);
        let drained = rq.uin.as_ref().is_none_or(Buf::is_empty) && self.cout.as_ref().is_none_or(Buf::is_empty);
        let pending = rq.presp.as_ref().is_some_and(|p| p.pending > 0);
        if pending || (spliceable && drained) {
            if rq.presp.is_none() {
                rq.presp = cx.pipes.take();
            }
            if rq.presp.is_some() {
                progress |= self.splice_response(rq, cx, up)?;
                return Ok(self.resp_progress(rq, cx, up, progress));
            }
        }
        let u = up_conn(&mut cx.ups, up)?;
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        let cout = cx.bufs.fill_slot(&mut self.cout);
        if !rq.up_end.ended() {
            match end_of(u).fill(&mut cx.tls_bufs, uin) {
                Ok(Filled::Data(_)) => progress = true,
                Ok(Filled::Idle) => {}
                Ok(Filled::Eof) => rq.up_end = if u.ended_cleanly() { UpEnd::Clean } else { UpEnd::Cut },
                Err(_) => rq.up_end = UpEnd::Cut,
            }
        }
        let Ok((used, made)) = relay_body(&mut rq.resp_body, uin.filled(), cout.spare(), rq.rechunk) else {
            // Bad framing mid-body: the response head is out; all we can do is cut it.
            self.drop_upstream(rq, cx);
            return Ok(Next::Go(Phase::Close));
        };
        uin.consume(used);
        cout.commit(made);
        rq.bytes_out += made as u64;
        progress |= used > 0;
        progress |= self.flush_client(cx)? > 0;
        Ok(self.resp_progress(rq, cx, up, progress))
    }

    /// Right after the response head: relays the body bytes that came with it, and when that
    /// is the whole body (a short response, the common case) ends the exchange in the same
    /// pass, without entering `RespBody` for a pass that would find nothing more to do (issue
    /// #21). Only when that pass could do nothing more than this: all of the request sent, and
    /// nothing left to read from the upstream (its stream ended, or its socket read dry and its
    /// TLS session, if any, holding nothing). None: the rest goes through `RespBody`.
    pub(super) fn whole_body(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Result<Option<Next>, Fault> {
        let u = up_conn(&mut cx.ups, up)?;
        let dry = rq.up_end.ended() || (!u.io.readable && u.tls.as_deref().is_none_or(Tls::is_quiet));
        if !dry || !rq.req_sent() {
            return Ok(None);
        }
        let (Some(uin), Some(cout)) = (rq.uin.as_mut(), self.cout.as_mut()) else { return Ok(None) };
        let Ok((used, made)) = relay_body(&mut rq.resp_body, uin.filled(), cout.spare(), rq.rechunk) else {
            // As in `resp_body`: the response head is queued; all we can do is cut it.
            self.drop_upstream(rq, cx);
            return Ok(Some(Next::Go(Phase::Close)));
        };
        uin.consume(used);
        cout.commit(made);
        rq.bytes_out += made as u64;
        if !rq.resp_done() {
            return Ok(None);
        }
        self.flush_client(cx)?;
        Ok(Some(self.finish_exchange(rq, cx, up)))
    }

    /// After a round of response body: finished, cut short, or waiting.
    fn resp_progress(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey, progress: bool) -> Next {
        let t = cx.cfg.timeouts;
        if rq.resp_done() {
            return self.finish_exchange(rq, cx, up);
        }
        let pipe_empty = rq.presp.as_ref().is_none_or(|p| p.pending == 0);
        if rq.up_end.ended() && rq.uin.as_ref().is_none_or(Buf::is_empty) && pipe_empty {
            // A close-delimited body ends with the upstream's stream, unless that was cut.
            if matches!(rq.resp_body, Body::Raw) && rq.up_end == UpEnd::Clean {
                rq.resp_body = Body::Done;
                rq.resp_reusable = false;
                return self.finish_exchange(rq, cx, up);
            }
            // Cut short: the client sees a body shorter than its framing promised (or, for a
            // close-delimited one, no close_notify), then a close.
            rq.ended_by = EndedBy::Upstream;
            rq.resp_cut = true;
            self.drop_upstream(rq, cx);
            rq.close_after = true;
            return Next::Go(Phase::Respond);
        }
        if progress {
            let client_slow = self.cout.as_ref().is_some_and(|b| !b.is_empty()) || !pipe_empty;
            self.deadline = cx.arm(if client_slow { t.client_send } else { rq.per.upstream_body });
            return Next::Again;
        }
        Next::Wait
    }

    /// The response has ended: pool or drop the upstream connection, then the next request or
    /// the close.
    fn finish_exchange(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Next {
        let clean = rq.resp_reusable
            && rq.req_done()
            && !rq.up_end.ended()
            && rq.uin.as_ref().is_none_or(Buf::is_empty)
            && rq.uout.as_ref().is_none_or(Buf::is_empty);
        if !rq.req_done() {
            rq.close_after = true; // the rest of the body cannot be told from a request
        }
        if rq.is_head && cx.ups.get(up).is_some_and(|u| u.tls.is_none()) {
            // A HEAD response has no body (RFC 9110 §9.3.2), but an application that answers
            // HEAD as GET writes one anyway, often in a later segment: pooled, the connection
            // would hand those bytes to the next request sent on it as its response. A plain
            // connection is not pooled, and is reset rather than closed, so that a flood of
            // HEADs leaves no TIME_WAIT ports behind. A TLS one is pooled (SECURITY.md says so):
            // a handshake per HEAD would be an amplification, and allocates.
            cx.ups.reset(up);
            cx.fd_freed = true;
        } else if clean && rq.send_proxy.is_none() {
            // A connection that began with a PROXY header names its client for its whole
            // life: it is never pooled for another (`send_proxy`).
            let at = cx.arm(cx.cfg.timeouts.upstream_idle);
            cx.ups.release(up, at);
        } else {
            cx.ups.close(up);
            cx.fd_freed = true;
        }
        rq.drop_up_bytes();
        cx.pipes.give_slot(&mut rq.preq);
        cx.pipes.give_slot(&mut rq.presp);
        self.log_done(rq, cx);
        if rq.close_after { Next::Go(Phase::Respond) } else { Next::Go(Phase::ReadHead) }
    }
}

/// An upstream connection's end, for reads and writes through its TLS if it has one.
pub(super) fn end_of(u: &mut UpConn) -> End<'_> {
    End { sock: &u.sock, io: &mut u.io, tls: u.tls.as_deref_mut() }
}

/// Moves the response body bytes in `src` (what `uin` holds) into `dst` (`cout`'s spare room):
/// as much as fits and belongs to the body, de-chunked or re-chunked as `rechunk` says.
/// Returns (consumed, produced); Err for chunked framing that is not.
fn relay_body(body: &mut Body, src: &[u8], dst: &mut [u8], rechunk: bool) -> Result<(usize, usize), ChunkError> {
    Ok(match body {
        Body::Length(rem) => {
            let n = copy_prefix(src, dst, *rem);
            *rem -= n as u64;
            (n, n)
        }
        Body::Raw => {
            let n = copy_prefix(src, dst, u64::MAX);
            (n, n)
        }
        Body::Chunked(dec) => dec.relay(src, dst, rechunk)?,
        Body::Done => (0, 0),
    })
}

/// Copies the front of `src` into `dst`: as much as fits, at most `max` bytes. Returns how many.
fn copy_prefix(src: &[u8], dst: &mut [u8], max: u64) -> usize {
    let n = usize::try_from(max).unwrap_or(usize::MAX).min(src.len()).min(dst.len());
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
    n
}
