//! The PROXY protocol header a trusted load balancer sends before anything else on a listener in
//! `[proxy_protocol] listeners` (the reactor has refused untrusted peers at accept). It is
//! peeked at, never read blind: only the header's own bytes are taken from the socket, so a TLS
//! handshake or a request behind it stays queued for the usual reader. Until it is whole the
//! connection does nothing else; `client_head` (armed at accept) bounds the wait.
//!
//! A header that cannot become valid, or a close before it is whole, ends the connection
//! (`Fault::Proxy`, logged with what was wrong). The address it names replaces the peer's for
//! everything after: the access log, X-Forwarded-For, hashing and the rules.

use crate::proxy_proto::{self, ProxyError};
use crate::transport::Filled;

use super::{ClientKey, Conn, Cx, Exchange, Fault, Phase};

impl Conn {
    /// Takes the header, then runs the state machine as `step` would. `Ok(false)` when waiting.
    #[cold]
    pub(super) fn proxy_then_run(&mut self, rq: &mut Exchange, cx: &mut Cx, key: ClientKey) -> Result<bool, Fault> {
        match self.take_proxy_header(cx)? {
            Some(true) => self.run(rq, cx, key),
            Some(false) => Ok(false),
            None => {
                // Closed before sending a byte (a balancer's TCP health check): nothing to say.
                self.enter(rq, Phase::Close, cx, key);
                Ok(false)
            }
        }
    }

    /// `Some(true)`: header taken; `Some(false)`: more bytes needed; `None`: closed, no bytes.
    fn take_proxy_header(&mut self, cx: &mut Cx) -> Result<Option<bool>, Fault> {
        let buf = cx.bufs.fill_slot(&mut self.cin);
        debug_assert!(buf.is_empty(), "nothing is read before the PROXY header");
        let spare = buf.spare();
        let window = spare.len().min(crate::limits::PROXY_V2_BYTES_MAX);
        let Some(spare) = spare.get_mut(..window) else { return Err(Fault::Proxy(ProxyError::TooLong)) };
        let seen = match crate::transport::peek(&self.sock, &mut self.io, spare) {
            Ok(Filled::Data(n)) => n,
            Ok(Filled::Idle) => {
                cx.bufs.release_if_empty(&mut self.cin);
                return Ok(Some(false));
            }
            Ok(Filled::Eof) => {
                cx.bufs.release_if_empty(&mut self.cin);
                return Ok(None);
            }
            Err(_) => return Err(Fault::Client),
        };
        let parsed = proxy_proto::parse(spare.get(..seen).unwrap_or(&[])).map_err(Fault::Proxy)?;
        let Some(h) = parsed else {
            // A proper prefix: the rest has not arrived. A new segment raises a new edge; a
            // close will not bring it.
            self.io.readable = false;
            cx.bufs.release_if_empty(&mut self.cin);
            return if self.io.hup { Err(Fault::Proxy(ProxyError::Truncated)) } else { Ok(Some(false)) };
        };
        let Some(spare) = spare.get_mut(..h.len) else { return Err(Fault::Proxy(ProxyError::TooLong)) };
        crate::transport::discard(&self.sock, spare).map_err(|_| Fault::Client)?;
        cx.bufs.release_if_empty(&mut self.cin);
        if let Some(src) = h.source {
            self.peer = src;
        }
        self.admit = super::Admit::Plain;
        // `limits.connections_per_ip` counts the client the header names, not the balancer
        // (which was not counted at accept): over it, closed before a byte is answered.
        let max = cx.cfg.limits.connections_per_ip;
        if max > 0 {
            match cx.conns_per_ip.open(self.peer.ip(), max) {
                crate::per_ip::Open::Over => return Err(Fault::PerIp),
                crate::per_ip::Open::Counted => self.admit = super::Admit::Counted,
                crate::per_ip::Open::Uncounted => {}
            }
        }
        Ok(Some(true))
    }
}
