//! NVMe/TCP listeners: the shared reactor listener with this transport's admission (the target's
//! `max_connections`) and connection constructor.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::net::TcpStream;

use super::conn::{Conn, Counted};
use crate::nvmf::{ListenAddr, Target};
use crate::reactor::listener::{self, Acceptor, ConnCtor};
use crate::reactor::HandlerRef;

struct NvmeTcp {
    target: Arc<Target>,
    addr: Arc<ListenAddr>,
}

impl Acceptor for NvmeTcp {
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) -> Result<ConnCtor, String> {
        let max = self.target.transport().map(|o| o.max_connections).unwrap_or(crate::nvmf::DEFAULT_MAX_CONNECTIONS) as usize;
        let open = self.target.conns.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.target.clone());
        if open >= max {
            return Err(format!("the target holds max_connections={max} (nvmf_create_transport max_connections)"));
        }
        let (t, a) = (self.target.clone(), self.addr.clone());
        Ok(Box::new(move |core, me| Conn::start(core, me, counted, t, a, stream, peer)))
    }
    fn describe(&self) -> String {
        format!("NVMe/TCP {}:{}", self.addr.traddr, self.addr.trsvcid)
    }
}

/// Bind `addr` and start accepting on a reactor. Called from management code.
pub fn start(target: &Arc<Target>, addr: &ListenAddr) -> std::io::Result<HandlerRef> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if !addr.trtype.eq_ignore_ascii_case("tcp") {
        return Err(invalid(format!("transport {} is not supported", addr.trtype)));
    }
    let port: u16 = addr.trsvcid.parse().map_err(|_| invalid(format!("trsvcid {:?} is not a port", addr.trsvcid)))?;
    let ip: std::net::IpAddr = addr.traddr.parse().map_err(|_| invalid(format!("traddr {:?} is not an IP address", addr.traddr)))?;
    let sock = listener::bind(SocketAddr::new(ip, port))?;
    let acc = NvmeTcp { target: target.clone(), addr: Arc::new(addr.clone()) };
    listener::start(&target.reactors, target.reactors.next_reactor(), sock, acc)
}
