//! A block device as the bdev journal sees it: whole-block reads and writes and a flush, called
//! from a blocking (management) thread. Two implementations: a bdev through the reactors (in the
//! RPC layer, which may use them) and [`FileMetaDev`], a file or block device with
//! pread/pwrite/fdatasync, which `palisade fsck` uses on the image or device behind the bdev.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub trait MetaDev: Send {
    /// Bytes per block (a divisor of the journal's 4 KiB block).
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    /// Read `nblocks` blocks at `lba`.
    fn read(&self, lba: u64, nblocks: u64) -> io::Result<Vec<u8>>;
    /// Write whole blocks at `lba`; with `fua` the data is on stable storage when this returns.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// For messages: "bdev M0", a path.
    fn describe(&self) -> String;
}

/// The block size [`FileMetaDev`] presents (any divisor of 4096 works: pread has no alignment).
const FILE_BLOCK: u32 = 512;

/// A regular file or a block device through pread/pwrite/fdatasync.
pub struct FileMetaDev {
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileMetaDev {
    /// Open `path`, read-only unless `write`.
    pub fn open(path: &Path, write: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        let mut size = file.metadata()?.len();
        if size == 0 {
            // A block device reports its size through seek.
            use std::io::{Seek, SeekFrom};
            size = (&file).seek(SeekFrom::End(0))?;
        }
        Ok(FileMetaDev { path: path.to_path_buf(), file, size })
    }

    fn range(&self, lba: u64, bytes: u64) -> io::Result<u64> {
        let off = lba * FILE_BLOCK as u64;
        if off + bytes > self.size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: I/O at byte {off} (+{bytes}) is beyond the end ({} bytes)", self.path.display(), self.size)));
        }
        Ok(off)
    }
}

impl MetaDev for FileMetaDev {
    fn block_size(&self) -> u32 {
        FILE_BLOCK
    }
    fn num_blocks(&self) -> u64 {
        self.size / FILE_BLOCK as u64
    }
    fn read(&self, lba: u64, nblocks: u64) -> io::Result<Vec<u8>> {
        let n = nblocks * FILE_BLOCK as u64;
        let off = self.range(lba, n)?;
        let mut b = vec![0u8; n as usize];
        self.file.read_exact_at(&mut b, off)?;
        Ok(b)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if data.len() % FILE_BLOCK as usize != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write of a partial block"));
        }
        let off = self.range(lba, data.len() as u64)?;
        self.file.write_all_at(data, off)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
