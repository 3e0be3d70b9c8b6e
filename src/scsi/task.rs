//! In-flight task state: what a command waits for while its volume I/O (or a range-lock grant)
//! is outstanding. Types only: the state machines that advance them live in `complete`, the
//! EXTENDED COPY engine in `copy`; this module depends on neither (the copy job's type is
//! `xcopy`'s, which knows nothing of tasks).

use super::sense::Sense;
use super::xcopy::CopyJob;
use crate::reactor::IoBuf;
use crate::volume::range_lock::LockId;

pub(super) struct Task {
    pub tag: u32,
    /// Index of the LUN in the port's map.
    pub lun: u32,
    /// Aborted by task management: finish the I/O, answer nothing.
    pub aborted: bool,
    pub kind: Kind,
}

pub(super) enum Kind {
    /// READ: hand the buffer back as Data-In.
    Read { len: u32 },
    /// A single write-like request (WRITE, WRITE AND VERIFY, WRITE SAME as zeroes or unmap,
    /// SYNCHRONIZE CACHE, VERIFY without compare): GOOD when it completes.
    Single { write: bool },
    /// VERIFY: the range `start..end` read `chunk` blocks at a time (the read of `next..` is in
    /// flight); with BYTCHK each chunk is compared with the Data-Out (`repeat`: one block of
    /// Data-Out compared against every block, BYTCHK=11b).
    Verify { data: Option<IoBuf>, repeat: bool, start: u64, next: u64, end: u64, chunk: u64 },
    /// Several requests in parallel (UNMAP descriptors); answer when all are back.
    Multi { outstanding: u32, error: Option<Sense> },
    /// WRITE SAME with a non-zero pattern: chunks written one after another from one buffer.
    WriteSame { next: u64, end: u64, chunk: u64, fua: bool },
    /// Read-modify-write under a range lock.
    Rmw(Rmw),
    /// EXTENDED COPY: chunks read from the source and written to the destination in turn.
    Copy(Box<CopyJob>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RmwOp {
    CompareAndWrite,
    OrWrite,
    WriteAtomic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Locking,
    Reading,
    Writing,
}

pub(super) struct Rmw {
    pub op: RmwOp,
    pub stage: Stage,
    pub lock: LockId,
    pub lba: u64,
    pub blocks: u64,
    /// The Data-Out (CAW: verify data then write data).
    pub data: Option<IoBuf>,
    pub fua: bool,
    /// To release the range if the port goes away with the task in flight.
    pub reactors: crate::reactor::ReactorSet,
}

/// Offset of the first differing byte.
pub(super) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn difference_offsets() {
        assert_eq!(first_difference(b"abcd", b"abcd"), None);
        assert_eq!(first_difference(b"abcd", b"abXd"), Some(2));
    }
}
