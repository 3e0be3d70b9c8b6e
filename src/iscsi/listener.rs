//! A portal's listening socket: accepts connections and hands each to a reactor (round robin),
//! where it lives for its whole life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::Interest;

use super::conn::Conn;
use super::target::Target;
use crate::reactor::{Core, Handler, HandlerRef};

pub struct Listener {
    sock: TcpListener,
    target: Arc<Target>,
    pg_tag: u32,
    /// Refusals not yet logged: one line a second at most, so a flood cannot flood the log.
    refused: u64,
    last_refusal_log: Option<Instant>,
}

impl Listener {
    /// Bind `addr` and build the handler constructor (run it on a reactor with `add_handler`).
    pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr)
    }

    pub fn handler(mut sock: TcpListener, target: Arc<Target>, pg_tag: u32, core: &mut Core, me: HandlerRef) -> Option<Box<dyn Handler>> {
        if let Err(e) = core.registry().register(&mut sock, me.token(), Interest::READABLE) {
            tracing::error!("iscsi: cannot register listener: {e}");
            return None;
        }
        Some(Box::new(Listener { sock, target, pg_tag, refused: 0, last_refusal_log: None }))
    }
}

impl Handler for Listener {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, _ev: &mio::event::Event) {
        loop {
            match self.sock.accept() {
                Ok((stream, peer)) => {
                    let slot = match self.target.admit() {
                        Ok(slot) => slot,
                        Err(why) => {
                            self.refused += 1;
                            if self.last_refusal_log.is_none_or(|t| core.now.duration_since(t) >= Duration::from_secs(1)) {
                                tracing::warn!(portal_group = self.pg_tag, %peer, refused = self.refused, "iscsi: refusing connections: {why}");
                                self.refused = 0;
                                self.last_refusal_log = Some(core.now);
                            }
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let target = self.target.clone();
                    let pg = self.pg_tag;
                    let id = core.reactors().next_reactor();
                    let ctor = move |core: &mut Core, me: HandlerRef| Conn::handler(stream, peer, target, slot, pg, core, me);
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
                    tracing::warn!("iscsi: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
    }
}
