//! A listening socket on a reactor: accepts connections and hands each to a reactor chosen round
//! robin, where it lives as a queue pair for its whole life.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Counted;

use crate::nvmf::{ListenAddr, Target};
use crate::reactor::{Core, Handler, HandlerRef};

struct Listener {
    target: Arc<Target>,
    sock: mio::net::TcpListener,
    addr: Arc<ListenAddr>,
    /// Refusals at the connection limit: when we last logged one, and how many since.
    refused_log: Option<Instant>,
    refused_quiet: u64,
}

/// At most one "connection refused" line per this interval (a flood must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

impl Listener {
    /// Count a new connection against `max_connections`, or refuse it (None) with a log line.
    fn admit(&mut self, now: Instant, peer: SocketAddr) -> Option<Counted> {
        let max = self.target.transport().map(|o| o.max_connections).unwrap_or(crate::nvmf::DEFAULT_MAX_CONNECTIONS) as usize;
        let open = self.target.conns.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.target.clone());
        if open < max {
            return Some(counted);
        }
        drop(counted);
        if self.refused_log.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                %peer, open, "NVMe/TCP connection refused: the target holds max_connections={max} (nvmf_create_transport max_connections); {} more refused since the last message",
                self.refused_quiet
            );
            self.refused_log = Some(now);
            self.refused_quiet = 0;
        } else {
            self.refused_quiet += 1;
        }
        None
    }
}

impl Handler for Listener {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, _ev: &mio::event::Event) {
        // Edge-triggered: accept until the backlog is empty.
        loop {
            match self.sock.accept() {
                Ok((stream, peer)) => {
                    // Over the limit: the stream drops here, which closes it.
                    let Some(counted) = self.admit(core.now, peer) else { continue };
                    let _ = stream.set_nodelay(true);
                    let target = self.target.clone();
                    let addr = self.addr.clone();
                    let r = target.reactors.next_reactor();
                    let reactors = target.reactors.clone();
                    reactors.send(r, move |reactor| {
                        reactor.add_handler(move |core, me| super::conn::Conn::start(core, me, counted, target, addr, stream, peer));
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next readiness event.
                    tracing::warn!(addr = %self.addr.traddr, "accept failed: {e}");
                    break;
                }
            }
        }
    }
    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
    }
}

/// Bind `addr` and start accepting on a reactor. Called from management code.
pub fn start(target: &Arc<Target>, addr: &ListenAddr) -> std::io::Result<HandlerRef> {
    if !addr.trtype.eq_ignore_ascii_case("tcp") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("transport {} is not supported", addr.trtype)));
    }
    let port: u16 = addr.trsvcid.parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("trsvcid {:?} is not a port", addr.trsvcid)))?;
    let ip: std::net::IpAddr = addr.traddr.parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("traddr {:?} is not an IP address", addr.traddr)))?;
    let std_l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
    std_l.set_nonblocking(true)?;
    let sock = mio::net::TcpListener::from_std(std_l);
    let target2 = target.clone();
    let a = Arc::new(addr.clone());
    let r = target.reactors.next_reactor();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    target.reactors.send(r, move |reactor| {
        let mut sock = Some(sock);
        let h = reactor.add_handler(|core, me| {
            let mut s = sock.take()?;
            if let Err(e) = core.registry().register(&mut s, me.token(), mio::Interest::READABLE) {
                tracing::error!("cannot register listener: {e}");
                return None;
            }
            Some(Box::new(Listener { target: target2, sock: s, addr: a, refused_log: None, refused_quiet: 0 }))
        });
        let _ = tx.send(h);
    });
    rx.recv().ok().flatten().ok_or_else(|| std::io::Error::other("reactor refused the listener"))
}
