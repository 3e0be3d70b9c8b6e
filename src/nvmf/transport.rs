//! The boundary between the NVMe-oF core and a transport (NVMe-oF 1.1 §2: a transport carries
//! capsules and data; the core never sees how). A transport accepts connections, frames what it
//! receives into commands for a [`QPair`](super::qpair::QPair), and implements [`Transport`]
//! for what goes back. Linux nvmet's `nvmet_fabrics_ops` and SPDK's `spdk_nvmf_transport_ops`
//! are this boundary; ours is smaller because pooled buffers and the reactor are shared.

use std::io;
use std::sync::Arc;

use crate::nvme::spec::Cqe;
use crate::reactor::{Core, HandlerRef, IoBuf};

use super::{ListenAddr, Target};

/// What a queue pair sends to its host, and how it asks for host data. Called only from the
/// reactor the connection lives on; implementations queue and write out in `on_flush`.
pub trait Transport {
    /// Ask the host for `len` bytes of command `cid`'s data. The data comes back through
    /// [`QPair::data_dest`](super::qpair::QPair::data_dest) / `data_done` with transfer tag `ttag`
    /// (TCP: an R2T).
    fn request_data(&mut self, core: &mut Core, cid: u16, ttag: u16, len: u32);
    /// A small answer (Identify, log pages, reservation reports): copied.
    fn send_data(&mut self, core: &mut Core, cid: u16, data: &[u8]);
    /// Read data in a pooled buffer: handed over, not copied. With `completes`, the transfer is
    /// also the command's completion ([`Transport::data_completes`]).
    fn send_data_buf(&mut self, core: &mut Core, cid: u16, data: IoBuf, completes: bool);
    /// A command is done with host memory the transport lent it (loop: it goes back to the host
    /// with the completion that follows). Transports that lend nothing let the pool have it.
    fn recycle(&mut self, buf: IoBuf) {
        drop(buf);
    }
    /// A completion queue entry.
    fn send_cqe(&mut self, core: &mut Core, cqe: &Cqe);
    /// May a data transfer carry the completion (TCP's C2HData SUCCESS flag) on this queue?
    fn data_completes(&self) -> bool;
    /// Position just after everything handed over so far, and how far the host has taken it: a
    /// command slot stays busy until its response is taken, so a host that does not read cannot
    /// make the target hold more than a queue's depth of answers.
    fn queued(&self) -> u64;
    fn taken(&self) -> u64;
    /// Finish what is queued, then end the connection (Disconnect, controller teardown).
    fn close(&mut self, core: &mut Core);
}

/// A transport type the target can open listeners for (registered by whoever wires the target,
/// so the core does not depend on any transport).
pub trait TransportKind: Send + Sync {
    /// Start listening on `addr`; the returned handler is the listener (closed to stop it).
    fn listen(&self, t: &Arc<Target>, addr: &ListenAddr) -> io::Result<HandlerRef>;
}

/// Host data that arrived with a command.
pub enum CmdData<'a> {
    None,
    /// In-capsule bytes still in the transport's receive buffer: copied if the command keeps them.
    Slice(&'a [u8]),
    /// A buffer the transport already filled, or host memory lent for the whole command (the
    /// loop transport): for a write it is the data, for a read the destination.
    Buf(IoBuf),
    /// In-capsule data of this many bytes still on its way: the transport lands it in the
    /// command's buffer ([`QPair::take_landing`](super::qpair::QPair::take_landing) names it) and
    /// reports it with `data_done`, as for requested data.
    Later(u32),
}

/// A transport-level error in what the host sent; the transport reports it its own way (TCP:
/// C2HTermReq) and ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QpError {
    #[error("more commands than the submission queue holds")]
    SqOverflow,
    #[error("data for an unknown transfer tag or command")]
    BadTag,
    #[error("data outside the requested range")]
    OutOfRange,
}
