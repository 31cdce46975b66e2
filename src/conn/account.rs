//! Per-exchange accounting: the access-log line and the counters of an exchange that ended
//! (`log_done`, once per exchange), why a connection closed, and which timeout fired. Only
//! counter increments on the hot path: no lock, no allocation (see `metrics.rs`).

use std::time::Duration;

use crate::config::Timeout;
use crate::limits::LINGER_MS;
use crate::log::{Entry, Rec, Sink};
use crate::metrics::{CloseWhy, class_of};

use super::exchange::EndedBy;
use super::{Conn, Cx, Exchange, Phase};

impl Conn {
    /// Writes this exchange's access-log line, once, counts it, and frees its record.
    pub(super) fn log_done(&mut self, rq: &mut Exchange, cx: &mut Cx) {
        let Some(start) = rq.start else { return };
        if rq.logged {
            return;
        }
        rq.logged = true;
        // A connect failure still held (the client left before the next pick) is said now.
        super::connect::failover(rq, cx, None);
        let micros = cx.now_ns.saturating_sub(start) / 1_000;
        let m = &cx.metrics;
        let class = class_of(rq.status);
        if let Some(r) = m.routes.get(rq.route as usize) {
            if let Some(c) = r.requests.get(class) {
                c.inc();
            }
            r.duration.observe(micros);
        }
        if rq.tried != 0
            && let Some(s) = cx.ups.slot(rq.server as usize).and_then(|i| m.server(i))
        {
            if let Some(c) = s.responses.get(class) {
                c.inc();
            }
            if let Some(at) = rq.first_byte {
                s.ttfb.observe(at.saturating_sub(start) / 1_000);
            }
        }
        // [in, out] x [all, spliced]: the scrape shows copied bytes as all - spliced.
        let [[in_all, in_splice], [out_all, out_splice]] = &m.bytes;
        in_all.add(rq.bytes_in);
        in_splice.add(rq.spliced_in);
        out_all.add(rq.bytes_out);
        out_splice.add(rq.spliced_out);
        let rec = rq.rec.take();
        if cx.cfg.log.access != Sink::Off {
            let r = rec.and_then(|k| cx.recs.get(k as usize));
            let e = Entry {
                // Port 0: the client X-Forwarded-For named (its port is not known).
                client: rq.client.map_or(self.peer, |ip| std::net::SocketAddr::new(ip, 0)),
                method: r.map_or(&[][..], Rec::method),
                target: r.map_or(&[][..], Rec::target),
                minor: r.map_or(rq.client_minor, |r| r.minor),
                status: rq.status,
                bytes_in: rq.bytes_in,
                bytes_out: rq.bytes_out,
                body_out: rq.bytes_out.saturating_sub(rq.head_out),
                upstream: if rq.tried != 0 { cx.ups.addr(rq.server as usize) } else { None },
                micros,
                referer: r.map_or(&[][..], Rec::referer),
                agent: r.map_or(&[][..], Rec::agent),
                ended_by: rq.ended_by.as_str(),
                request_id: cx.cfg.log.request_id.then(|| rq.id()),
                tls: self.tls.as_deref().and_then(crate::tls::Tls::agreed).map(crate::tls::Agreed::fields),
            };
            cx.log.access(cx.now(), cx.cfg.log.format, &e);
        }
        if let Some(k) = rec {
            cx.recs.try_remove(k as usize);
        }
    }

    /// Which configured timeout the current phase's deadline was (see `enter`), and its value.
    #[cold]
    pub(super) fn timeout_fired(&self, rq: &Exchange, cx: &Cx) -> (&'static str, Duration) {
        let t = &cx.cfg.timeouts;
        let client_slow =
            self.cout.as_ref().is_some_and(|b| !b.is_empty()) || rq.presp.as_ref().is_some_and(|p| p.pending > 0);
        let (name, t) = match self.phase {
            Phase::ReadHead if rq.head_timer => ("client_head", t.client_head),
            Phase::ReadHead => ("client_idle", t.client_idle),
            Phase::Connect | Phase::Opening(_) => ("upstream_connect", t.upstream_connect),
            Phase::Exchange(_) if rq.sent_all() => ("upstream_head", t.upstream_head),
            Phase::Exchange(_) => ("client_body", t.client_body),
            Phase::RespBody(_) | Phase::Tunnel(_) if client_slow => ("client_send", t.client_send),
            Phase::RespBody(_) | Phase::Tunnel(_) => ("upstream_body", t.upstream_body),
            Phase::Respond => ("client_send", t.client_send),
            Phase::Linger | Phase::Close => ("linger", Timeout::from_millis(LINGER_MS)),
        };
        (name, t.duration())
    }
}

/// Why a connection entering `Close` from `from` closes (see `metrics::CloseWhy`).
pub(super) fn close_why(from: Phase, rq: &Exchange, draining: bool) -> CloseWhy {
    if rq.ended_by == EndedBy::Timeout {
        // Between requests with nothing read: the keep-alive idle timeout.
        return if from == Phase::ReadHead && rq.start.is_none() { CloseWhy::Idle } else { CloseWhy::Timeout };
    }
    match from {
        Phase::Linger => CloseWhy::AfterResponse,
        Phase::Tunnel(_) => CloseWhy::Tunnel,
        Phase::ReadHead | Phase::Respond | Phase::RespBody(_) if draining => CloseWhy::Drain,
        _ if rq.ended_by == EndedBy::Upstream => CloseWhy::Upstream,
        _ => CloseWhy::Client,
    }
}
