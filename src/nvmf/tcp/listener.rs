//! A listening socket on a reactor: accepts connections and hands each to a reactor chosen round
//! robin, where it lives as a queue pair for its whole life.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::nvmf::{ListenAddr, Target};
use crate::reactor::{Core, Handler, HandlerRef};

struct Listener {
    target: Arc<Target>,
    sock: mio::net::TcpListener,
    addr: Arc<ListenAddr>,
}

impl Handler for Listener {
    fn on_ready(&mut self, _core: &mut Core, _me: HandlerRef, _ev: &mio::event::Event) {
        // Edge-triggered: accept until the backlog is empty.
        loop {
            match self.sock.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let target = self.target.clone();
                    let addr = self.addr.clone();
                    let r = target.reactors.next_reactor();
                    let reactors = target.reactors.clone();
                    reactors.send(r, move |reactor| {
                        reactor.add_handler(move |core, me| super::conn::Conn::start(core, me, target, addr, stream, peer));
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
            Some(Box::new(Listener { target: target2, sock: s, addr: a }))
        });
        let _ = tx.send(h);
    });
    rx.recv().ok().flatten().ok_or_else(|| std::io::Error::other("reactor refused the listener"))
}
