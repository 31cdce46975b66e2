//! After a 101 (`Tunnel`): bytes both ways, unparsed, until both sides have closed their write
//! side. Buffered bytes go first; then, when neither side speaks TLS, each direction moves
//! through a pipe (or a buffer when no pipe is free). Each side's end is passed on as it came:
//! a clean end (FIN from a plain peer, close_notify from a TLS one) as a clean end, a bare or
//! broken one as a bare close, so a truncation stays one (RFC 8446 §6.1).

use std::io;

use mio::net::TcpStream;

use crate::buf::Buf;
use crate::limits::PIPE_BYTES;
use crate::splice::{Pipe, PipePool, Spliced};
use crate::tls::{Tls, TlsBufPool};
use crate::transport::{End, Filled, Io, fill, flush};
use crate::upstream::UpKey;

use super::body::end_of;
use super::exchange::UpEnd;
use super::{Conn, Cx, Exchange, Next, Phase, Step, up_conn};

impl Conn {
    pub(super) fn tunnel(&mut self, rq: &mut Exchange, cx: &mut Cx, up: UpKey) -> Step {
        let mut progress = self.flush_client(cx)? > 0;
        let u = up_conn(&mut cx.ups, up)?;
        let cin = cx.bufs.fill_slot(&mut self.cin);
        let uin = cx.bufs.fill_slot(&mut rq.uin);
        let mut up_eof = rq.up_end.ended();
        let moved = if self.tls.is_some() || u.tls.is_some() {
            // Through buffers both ways: TLS bytes cannot be spliced. Upstream bytes wait for
            // the 101 head in cout.
            if self.cout.as_ref().is_some_and(|b| !b.is_empty()) {
                return Ok(if progress { Next::Again } else { Next::Wait });
            }
            let c = End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() };
            let eofs = (&mut rq.client_eof, &mut up_eof);
            let counts = (&mut rq.bytes_in, &mut rq.bytes_out);
            let moved = relay_buffered(c, end_of(u), &mut cx.tls_bufs, cin, uin, eofs, counts);
            if moved.is_ok() {
                if rq.client_eof && cin.is_empty() && !rq.up_shut {
                    let clean = self.tls.as_deref().is_none_or(Tls::closed_cleanly);
                    end_of(u).shut_write(&mut cx.tls_bufs, clean);
                    rq.up_shut = true;
                }
                if up_eof && uin.is_empty() && !rq.client_shut {
                    let clean = u.ended_cleanly();
                    End { sock: &self.sock, io: &mut self.io, tls: self.tls.as_deref_mut() }
                        .shut_write(&mut cx.tls_bufs, clean);
                    rq.client_shut = true;
                }
            }
            moved
        } else {
            relay_plain(
                (&self.sock, &mut self.io),
                (&u.sock, &mut u.io),
                (cin, uin),
                self.cout.as_ref().is_none_or(Buf::is_empty),
                Ends {
                    client_eof: &mut rq.client_eof,
                    up_eof: &mut up_eof,
                    client_shut: &mut rq.client_shut,
                    up_shut: &mut rq.up_shut,
                    up_bytes: [&mut rq.bytes_in, &mut rq.spliced_in],
                    down_bytes: [&mut rq.bytes_out, &mut rq.spliced_out],
                },
                (&mut rq.preq, &mut rq.presp),
                &mut cx.pipes,
            )
        };
        if up_eof && !rq.up_end.ended() {
            rq.up_end = if u.ended_cleanly() { UpEnd::Clean } else { UpEnd::Cut };
        }
        let Ok(moved) = moved else {
            self.drop_upstream(rq, cx);
            return Ok(Next::Go(Phase::Close));
        };
        progress |= moved;
        if rq.client_shut && rq.up_shut {
            self.drop_upstream(rq, cx);
            return Ok(Next::Go(Phase::Close));
        }
        if progress {
            self.deadline = cx.arm(rq.per.upstream_body);
            return Ok(Next::Again);
        }
        Ok(Next::Wait)
    }
}

/// How far each side of a tunnel has ended: read its end (`*_eof`), passed it on (`*_shut`);
/// and how many bytes went each way.
struct Ends<'a> {
    client_eof: &'a mut bool,
    up_eof: &'a mut bool,
    client_shut: &'a mut bool,
    up_shut: &'a mut bool,
    /// The exchange's byte counts, for the access log and metrics: client to upstream and
    /// back, each as [all bytes, of which spliced].
    up_bytes: [&'a mut u64; 2],
    down_bytes: [&'a mut u64; 2],
}

/// Both directions of a tunnel between plain sockets (`bufs`: client and upstream bytes already
/// read), each then through its pipe. Upstream bytes
/// wait while the 101 head is still in `cout` (`cout_empty` false).
fn relay_plain(
    client: (&TcpStream, &mut Io),
    up: (&TcpStream, &mut Io),
    bufs: (&mut Buf, &mut Buf),
    cout_empty: bool,
    ends: Ends<'_>,
    pipes: (&mut Option<Pipe>, &mut Option<Pipe>),
    pool: &mut PipePool,
) -> io::Result<bool> {
    let ((cs, cio), (us, uio)) = (client, up);
    let ((cin, uin), (preq, presp)) = (bufs, pipes);
    let mut progress = relay_raw((cs, &mut *cio), (us, &mut *uio), cin, preq, pool, ends.client_eof, ends.up_bytes)?;
    if *ends.client_eof && cin.is_empty() && preq.as_ref().is_none_or(|p| p.pending == 0) && !*ends.up_shut {
        let _ = us.shutdown(std::net::Shutdown::Write);
        *ends.up_shut = true;
    }
    // upstream -> client, after the 101 head in cout
    if cout_empty {
        progress |= relay_raw((us, uio), (cs, cio), uin, presp, pool, ends.up_eof, ends.down_bytes)?;
        let drained = uin.is_empty() && presp.as_ref().is_none_or(|p| p.pending == 0);
        if *ends.up_eof && drained && !*ends.client_shut {
            let _ = cs.shutdown(std::net::Shutdown::Write);
            *ends.client_shut = true;
        }
    }
    Ok(progress)
}

/// One direction of a tunnel, `src` to `dst`: bytes already in `buf` first, then through a pipe
/// (or `buf` again when no pipe is free). Sets `eof` when `src` has closed; adds what it read
/// to `count` ([all, spliced]). Returns progress.
fn relay_raw(
    src: (&TcpStream, &mut Io),
    dst: (&TcpStream, &mut Io),
    buf: &mut Buf,
    pipe: &mut Option<Pipe>,
    pipes: &mut PipePool,
    eof: &mut bool,
    count: [&mut u64; 2],
) -> io::Result<bool> {
    let [all, spliced] = count;
    let (src, sio) = src;
    let (dst, dio) = dst;
    let mut progress = false;
    if !buf.is_empty() {
        progress |= flush(dst, dio, buf)? > 0;
        if !buf.is_empty() {
            return Ok(progress);
        }
    }
    if pipe.is_none() {
        *pipe = pipes.take();
    }
    match pipe {
        Some(p) => {
            for _ in 0..2 {
                progress |= crate::splice::drain(dst, dio, p)? > 0;
                if p.pending > 0 || *eof {
                    break;
                }
                match crate::splice::fill(src, sio, p, PIPE_BYTES)? {
                    Spliced::Bytes(n) => {
                        *all += n as u64;
                        *spliced += n as u64;
                        progress = true;
                    }
                    Spliced::Idle => break,
                    Spliced::Eof => *eof = true,
                }
            }
        }
        None => {
            if !*eof {
                match fill(src, sio, buf)? {
                    Filled::Data(n) => {
                        *all += n as u64;
                        progress = true;
                    }
                    Filled::Idle => {}
                    Filled::Eof => *eof = true,
                }
            }
            progress |= flush(dst, dio, buf)? > 0;
        }
    }
    Ok(progress)
}

/// A tunnel with TLS on either side: client -> upstream through `cin`, upstream -> client
/// through `uin`. `eofs`: (client, upstream) closed their side; `counts`: bytes read from
/// (client, upstream), added to.
fn relay_buffered(
    mut client: End<'_>,
    mut up: End<'_>,
    pool: &mut TlsBufPool,
    cin: &mut Buf,
    uin: &mut Buf,
    eofs: (&mut bool, &mut bool),
    counts: (&mut u64, &mut u64),
) -> io::Result<bool> {
    let (client_eof, up_eof) = eofs;
    let (from_client, from_up) = counts;
    let mut progress = false;
    for _ in 0..2 {
        progress |= up.flush(pool, cin)? > 0;
        if !*client_eof && cin.spare_len() > 0 {
            match client.fill(pool, cin)? {
                Filled::Data(n) => {
                    *from_client += n as u64;
                    progress = true;
                }
                Filled::Idle => {}
                Filled::Eof => *client_eof = true,
            }
        }
        progress |= client.flush(pool, uin)? > 0;
        if !*up_eof && uin.spare_len() > 0 {
            match up.fill(pool, uin)? {
                Filled::Data(n) => {
                    *from_up += n as u64;
                    progress = true;
                }
                Filled::Idle => {}
                Filled::Eof => *up_eof = true,
            }
        }
    }
    progress |= up.flush(pool, cin)? > 0;
    progress |= client.flush(pool, uin)? > 0;
    Ok(progress)
}
