//! iSCSI portals: the shared reactor listener with this target's admission (connection caps,
//! pre-login cap) and connection constructor.

use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::{TcpListener, TcpStream};

use super::conn::Conn;
use super::target::Target;
use crate::reactor::listener::{self, Acceptor, ConnCtor};
use crate::reactor::{HandlerRef, ReactorSet};

struct Portal {
    target: Arc<Target>,
    pg_tag: u32,
    addr: String,
}

impl Acceptor for Portal {
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) -> Result<ConnCtor, String> {
        let slot = self.target.admit().map_err(|why| why.to_string())?;
        let (target, pg) = (self.target.clone(), self.pg_tag);
        Ok(Box::new(move |core, me| Conn::handler(stream, peer, target, slot, pg, core, me)))
    }
    fn describe(&self) -> String {
        format!("iSCSI portal group {} {}", self.pg_tag, self.addr)
    }
}

/// Bind a portal's address (so the caller learns of EADDRINUSE at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listener::bind(addr)
}

/// Start accepting on a bound portal socket on `reactor`; close the returned handler to stop.
pub fn start(reactors: &ReactorSet, reactor: u32, sock: TcpListener, target: Arc<Target>, pg_tag: u32) -> std::io::Result<HandlerRef> {
    let addr = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    listener::start(reactors, reactor, sock, Portal { target, pg_tag, addr })
}
