//! A listening TCP socket on a reactor, shared by the iSCSI portals and the NVMe/TCP listeners:
//! accept until the backlog is empty, let the protocol admit or refuse each connection (its
//! connection caps), and hand the admitted ones to a reactor chosen round robin, where each lives
//! for its whole life. Refusals are logged at most once a second, so a flood cannot flood the log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};

use super::{Core, Handler, HandlerRef, ReactorSet};

/// A connection handler's constructor, run on the reactor the connection will live on.
pub type ConnCtor = Box<dyn FnOnce(&mut Core, HandlerRef) -> Option<Box<dyn Handler>> + Send>;

/// What a protocol does with the connections its listener accepts.
pub trait Acceptor: Send + 'static {
    /// Count a new connection against the protocol's limits, or say why not. The constructor it
    /// returns builds the connection's handler (and owns whatever counts it).
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) -> Result<ConnCtor, String>;
    /// Protocol and address, for log lines.
    fn describe(&self) -> String;
}

/// At most one "refused" line per this interval.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

struct Listener<A: Acceptor> {
    sock: TcpListener,
    acc: A,
    refused_log: Option<Instant>,
    refused_quiet: u64,
}

impl<A: Acceptor> Listener<A> {
    fn refused(&mut self, now: Instant, peer: SocketAddr, why: &str) {
        if self.refused_log.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
            tracing::warn!(%peer, "{}: connection refused: {why}; {} more refused since the last message", self.acc.describe(), self.refused_quiet);
            self.refused_log = Some(now);
            self.refused_quiet = 0;
        } else {
            self.refused_quiet += 1;
        }
    }
}

impl<A: Acceptor> Handler for Listener<A> {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, _ev: &mio::event::Event) {
        // Edge-triggered: accept until the backlog is empty.
        loop {
            match self.sock.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let ctor = match self.acc.admit(stream, peer) {
                        Ok(c) => c,
                        Err(why) => {
                            self.refused(core.now, peer, &why);
                            continue;
                        }
                    };
                    let id = core.reactors().next_reactor();
                    if id == core.id {
                        core.spawn(ctor);
                    } else {
                        core.reactors().send(id, move |r| {
                            r.add_handler(ctor);
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next readiness event.
                    tracing::warn!("{}: accept failed: {e}", self.acc.describe());
                    break;
                }
            }
        }
    }

    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
    }
}

/// Bind `addr` (so the caller learns of EADDRINUSE at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(TcpListener::from_std(l))
}

/// Start accepting on `sock` on reactor `reactor`; the listener's handler is returned (close it
/// to stop listening). Management code only: waits for the reactor.
pub fn start<A: Acceptor>(reactors: &ReactorSet, reactor: u32, sock: TcpListener, acc: A) -> std::io::Result<HandlerRef> {
    reactors
        .call(reactor, move |r| {
            r.add_handler(move |core, me| {
                let mut sock = sock;
                if let Err(e) = core.registry().register(&mut sock, me.token(), mio::Interest::READABLE) {
                    tracing::error!("{}: cannot register the listener: {e}", acc.describe());
                    return None;
                }
                Some(Box::new(Listener { sock, acc, refused_log: None, refused_quiet: 0 }) as Box<dyn Handler>)
            })
        })
        .flatten()
        .ok_or_else(|| std::io::Error::other("the reactor refused the listener"))
}
