//! TLS 1.3 with external pre-shared keys over a non-blocking socket, for a reactor connection (and
//! the blocking initiator): a byte stream that knows nothing of the protocol above it.
//!
//! Why OpenSSL and not rustls: NVMe/TCP secure channels (TP 8011) use TLS 1.3 *external* PSKs
//! (no certificates), and rustls does not implement them (rustls issue #174 "Status of PSK
//! Support?" is open; the client-side PR #2524 was closed unmerged in 2025). OpenSSL 3 (Debian
//! libssl) does, and it is what Linux's tlshd and SPDK use, so the handshakes interoperate.
//!
//! OpenSSL's TLS 1.3 external PSK API is SSL_CTX_set_psk_find_session_callback (server) and
//! SSL_set_psk_use_session_callback (client) with an SSL_SESSION that carries the cipher suite and
//! the key as master key: that is the only way to use SHA-384 PSKs (the legacy
//! psk_server_callback assumes SHA-256). The `openssl` crate wraps neither, so [`ffi`] declares
//! them, in one small unsafe module. Policy: TLS 1.3 only, TLS_AES_128_GCM_SHA256 and
//! TLS_AES_256_GCM_SHA384, psk_dhe_ke only (OpenSSL's default without SSL_OP_ALLOW_NO_DHE_KEX, as
//! NVMe/TCP §3.6.1.1 requires), no certificate (a server without a certificate cannot complete a
//! handshake without a PSK; the client verifies peers against an empty trust store), no session
//! tickets or resumption.
//!
//! Data path: [`TlsStream::read2`] decrypts into the same two slices a plaintext `readv` fills
//! (landing payloads in place); [`TlsStream`]'s `Write` takes the output queue's iovecs, gathers
//! up to [`STAGE`] bytes into one reused staging buffer and writes them as full records (one
//! SSL_write per 64 KiB rather than a record and a `send` per header). No allocation per I/O.

use std::ffi::c_int;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslMode, SslOptions, SslStream, SslVerifyMode, SslVersion};

/// Bytes gathered per SSL_write: four full records.
const STAGE: usize = 64 << 10;

/// The cipher suite's hash, which must be the PSK's (RFC 8446 §4.2.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSuite {
    Aes128GcmSha256,
    Aes256GcmSha384,
}

impl TlsSuite {
    fn id(self) -> [u8; 2] {
        match self {
            TlsSuite::Aes128GcmSha256 => [0x13, 0x01],
            TlsSuite::Aes256GcmSha384 => [0x13, 0x02],
        }
    }
    fn name(self) -> &'static str {
        match self {
            TlsSuite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            TlsSuite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
        }
    }
}

/// One usable PSK: the TLS PSK bytes and the suite whose hash it was derived with.
pub struct TlsPsk {
    pub key: Vec<u8>,
    pub suite: TlsSuite,
}

/// The server's PSK store: identity (as the client sent it) → PSK, or None to refuse.
pub trait PskLookup: Send + Sync {
    fn find(&self, identity: &[u8]) -> Option<TlsPsk>;
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup: {0}")]
    Setup(#[from] openssl::error::ErrorStack),
    #[error("TLS handshake: {0}")]
    Handshake(String),
    #[error("TLS: {0}")]
    Io(#[from] io::Error),
}

/// The socket as OpenSSL's BIO sees it: reads go straight to the descriptor (the connection owns
/// it); writes collect OpenSSL's records in `out` and [`Fd::push`] sends them, many records per
/// `send`. OpenSSL writes each 16 KiB record on its own, and one `send` per record costs as much
/// in the kernel as the encryption does in user space.
pub struct Fd {
    fd: RawFd,
    out: Vec<u8>,
    sent: usize,
}

impl Fd {
    fn new(fd: RawFd) -> Fd {
        Fd { fd, out: Vec::new(), sent: 0 }
    }

    fn pending(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Send collected records: Ok(true) when none is left.
    fn push(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            let b = &self.out[self.sent..];
            // SAFETY: `b` is a live slice. MSG_NOSIGNAL: a reset peer is an error, not SIGPIPE.
            let r = unsafe { libc::send(self.fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(false),
                    _ => return Err(e),
                }
            }
            self.sent += r as usize;
        }
        self.out.clear();
        self.sent = 0;
        Ok(true)
    }
}

impl Read for Fd {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `b` is a live exclusive slice; the fd stays open while the connection lives.
        let r = unsafe { libc::read(self.fd, b.as_mut_ptr().cast(), b.len()) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
    }
}

impl Write for Fd {
    /// Collect a record. Callers push before handing OpenSSL more than [`STAGE`] bytes, so this
    /// stays bounded (a stage's records and their overhead).
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    /// OpenSSL flushes after each handshake flight (and alert): send it now, or say WANT_WRITE.
    /// A blocking client would otherwise wait for an answer to a flight still held here.
    fn flush(&mut self) -> io::Result<()> {
        if self.push()? { Ok(()) } else { Err(io::ErrorKind::WouldBlock.into()) }
    }
}

/// Per-connection server state reached from the PSK callback.
struct ServerState {
    lookup: Arc<dyn PskLookup>,
    /// The identity whose PSK was handed to OpenSSL.
    matched: Option<Vec<u8>>,
}

/// Per-connection client state: the identity pointer OpenSSL keeps must outlive the handshake.
struct ClientState {
    identity: Vec<u8>,
    psk: TlsPsk,
}

fn server_index() -> openssl::ex_data::Index<Ssl, ServerState> {
    static I: OnceLock<openssl::ex_data::Index<Ssl, ServerState>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("ex_data index"))
}

fn client_index() -> openssl::ex_data::Index<Ssl, ClientState> {
    static I: OnceLock<openssl::ex_data::Index<Ssl, ClientState>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("ex_data index"))
}

fn base_ctx(server: bool) -> Result<SslContext, TlsError> {
    let mut b = SslContext::builder(if server { SslMethod::tls_server() } else { SslMethod::tls_client() })?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")?;
    b.set_options(SslOptions::NO_TICKET);
    b.set_num_tickets(0)?;
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
    // SSL_write returns only when all of a buffer is written: the staging buffer relies on it
    // (no ENABLE_PARTIAL_WRITE); the buffer does not move between retries, but say so anyway.
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    // Read whole socket contents into OpenSSL's buffer: fewer syscalls; the reader drains to EAGAIN.
    b.set_read_ahead(true);
    // A server certificate would be refused: no trust anchors, peer verification on.
    b.set_verify(if server { SslVerifyMode::NONE } else { SslVerifyMode::PEER });
    let mut ctx = b.build();
    if server {
        ffi::install_server_callback(&mut ctx);
    }
    Ok(ctx)
}

fn server_ctx() -> Result<&'static SslContext, TlsError> {
    static C: OnceLock<SslContext> = OnceLock::new();
    if let Some(c) = C.get() {
        return Ok(c);
    }
    let c = base_ctx(true)?;
    Ok(C.get_or_init(|| c))
}

fn client_ctx() -> Result<&'static SslContext, TlsError> {
    static C: OnceLock<SslContext> = OnceLock::new();
    if let Some(c) = C.get() {
        return Ok(c);
    }
    let c = base_ctx(false)?;
    Ok(C.get_or_init(|| c))
}

/// One TLS connection over a socket the caller owns (and keeps open while this lives).
pub struct TlsStream {
    s: SslStream<Fd>,
    server: bool,
    done: bool,
    stage: Vec<u8>,
}

impl TlsStream {
    /// The server side of a connection on `fd`; PSKs come from `lookup`.
    pub fn server(fd: RawFd, lookup: Arc<dyn PskLookup>) -> Result<TlsStream, TlsError> {
        let mut ssl = Ssl::new(server_ctx()?)?;
        ssl.set_ex_data(server_index(), ServerState { lookup, matched: None });
        Ok(TlsStream { s: SslStream::new(ssl, Fd::new(fd))?, server: true, done: false, stage: Vec::new() })
    }

    /// The client side, offering `identity` with `psk` (and only that PSK's cipher suite).
    pub fn client(fd: RawFd, identity: &str, psk: TlsPsk) -> Result<TlsStream, TlsError> {
        let mut ssl = Ssl::new(client_ctx()?)?;
        ssl.set_ciphersuites(psk.suite.name())?;
        ssl.set_ex_data(client_index(), ClientState { identity: identity.as_bytes().to_vec(), psk });
        ffi::install_client_callback(&mut ssl);
        Ok(TlsStream { s: SslStream::new(ssl, Fd::new(fd))?, server: false, done: false, stage: Vec::new() })
    }

    /// Advance the handshake: Ok(true) when complete, Ok(false) when it waits for the socket.
    pub fn handshake(&mut self) -> Result<bool, TlsError> {
        if self.done {
            return Ok(true);
        }
        self.push()?;
        let r = if self.server { self.s.accept() } else { self.s.connect() };
        // This flight's records go out now; what the socket does not take waits for writable.
        self.push()?;
        match r {
            Ok(()) => {
                self.done = true;
                self.stage.reserve_exact(STAGE);
                self.s.get_mut().out.reserve(STAGE + STAGE / 64);
                Ok(true)
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(false),
            Err(e) => Err(TlsError::Handshake(e.ssl_error().map_or_else(|| e.to_string(), |s| s.to_string()))),
        }
    }

    /// Encrypted bytes wait for the socket (the caller pushes them when it is writable).
    pub fn pending(&self) -> bool {
        self.s.get_ref().pending()
    }

    /// Send encrypted bytes waiting for the socket: Ok(true) when none is left.
    pub fn push(&mut self) -> io::Result<bool> {
        self.s.get_mut().push()
    }

    pub fn established(&self) -> bool {
        self.done
    }

    /// The PSK identity the server accepted (after the handshake).
    pub fn psk_identity(&self) -> Option<&[u8]> {
        self.s.ssl().ex_data(server_index())?.matched.as_deref()
    }

    /// The negotiated cipher suite's name.
    pub fn cipher(&self) -> Option<&'static str> {
        self.s.ssl().current_cipher().map(|c| c.name())
    }

    /// Decrypt into `a` then `b` (either may be empty), like one `readv`: Ok(0) is the end of the
    /// stream, WouldBlock means nothing is decrypted and the socket has nothing more.
    pub fn read2(&mut self, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
        let r = self.read2_inner(a, b);
        // Reading can make OpenSSL answer (a KeyUpdate): send it along.
        if self.pending() {
            self.push()?;
        }
        r
    }

    fn read2_inner(&mut self, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        for buf in [a, b] {
            if buf.is_empty() {
                continue;
            }
            match self.s.ssl_read(buf) {
                Ok(k) => {
                    n += k;
                    if k < buf.len() {
                        return Ok(n);
                    }
                }
                Err(e) if n > 0 => {
                    // What was read counts; the condition shows again on the next call.
                    let _ = e;
                    return Ok(n);
                }
                Err(e) => return map_err(e),
            }
        }
        Ok(n)
    }

    /// Send close_notify (best effort, non-blocking).
    pub fn shutdown(&mut self) {
        if self.done {
            let _ = self.s.shutdown();
            let _ = self.push();
        }
    }
}

impl super::rxloop::RxSource for TlsStream {
    const BUFFERS: bool = true;
    fn read2(&mut self, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
        match TlsStream::read2(self, a, b) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

fn map_err<T>(e: openssl::ssl::Error) -> io::Result<T> {
    match e.code() {
        ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => Err(io::ErrorKind::WouldBlock.into()),
        ErrorCode::ZERO_RETURN => Err(io::ErrorKind::UnexpectedEof.into()),
        ErrorCode::SYSCALL => match e.into_io_error() {
            Ok(io) => Err(io),
            Err(_) => Err(io::ErrorKind::UnexpectedEof.into()),
        },
        _ => Err(io::Error::other(e.to_string())),
    }
}

impl Read for TlsStream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self.read2(b, &mut []) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(b)])
    }

    /// Gather the front of `bufs` (up to [`STAGE`] bytes) and write it as records. When the socket
    /// is full the staged bytes stay: the caller retries with the same front (its queue did not
    /// advance), and the retry finishes the same SSL_write before anything new is taken.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Records of the previous call first: they bound what is held here.
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.stage.is_empty() {
            for b in bufs {
                let room = STAGE - self.stage.len();
                if room == 0 {
                    break;
                }
                self.stage.extend_from_slice(&b[..b.len().min(room)]);
            }
            if self.stage.is_empty() {
                return Ok(0);
            }
        }
        match self.s.ssl_write(&self.stage) {
            Ok(_) => {
                let n = self.stage.len();
                self.stage.clear();
                // The bytes are taken (encrypted here); what the socket refuses goes on the next
                // call or [`TlsStream::push`].
                self.push()?;
                Ok(n)
            }
            Err(e) => map_err(e),
        }
    }

    /// Push the encrypted bytes still held: WouldBlock if the socket does not take them all.
    fn flush(&mut self) -> io::Result<()> {
        if self.push()? { Ok(()) } else { Err(io::ErrorKind::WouldBlock.into()) }
    }
}

/// The OpenSSL calls the `openssl` crate does not wrap (TLS 1.3 external PSK callbacks, building
/// the SSL_SESSION that carries a PSK).
mod ffi {
    use super::*;
    use openssl::ssl::SslRef;
    use openssl_sys::{SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION, EVP_MD};
    use std::ffi::c_uchar;
    use foreign_types::ForeignTypeRef;

    type FindSessionCb = unsafe extern "C" fn(*mut SSL, *const c_uchar, usize, *mut *mut SSL_SESSION) -> c_int;
    type UseSessionCb = unsafe extern "C" fn(*mut SSL, *const EVP_MD, *mut *const c_uchar, *mut usize, *mut *mut SSL_SESSION) -> c_int;

    extern "C" {
        fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, cb: Option<FindSessionCb>);
        fn SSL_set_psk_use_session_callback(s: *mut SSL, cb: Option<UseSessionCb>);
        fn SSL_SESSION_new() -> *mut SSL_SESSION;
        fn SSL_SESSION_free(s: *mut SSL_SESSION);
        fn SSL_SESSION_set1_master_key(s: *mut SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
        fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, c: *const SSL_CIPHER) -> c_int;
        fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, v: c_int) -> c_int;
        fn SSL_CIPHER_find(ssl: *mut SSL, id: *const c_uchar) -> *const SSL_CIPHER;
    }

    const TLS1_3_VERSION: c_int = 0x0304;

    pub(super) fn install_server_callback(ctx: &mut SslContext) {
        use foreign_types::ForeignType;
        // SAFETY: a valid context pointer; the callback is a plain function.
        unsafe { SSL_CTX_set_psk_find_session_callback(ctx.as_ptr(), Some(find_session)) }
    }

    pub(super) fn install_client_callback(ssl: &mut Ssl) {
        use foreign_types::ForeignType;
        // SAFETY: a valid SSL pointer; the callback is a plain function.
        unsafe { SSL_set_psk_use_session_callback(ssl.as_ptr(), Some(use_session)) }
    }

    /// A new SSL_SESSION holding `psk` for TLS 1.3 with its suite, or null.
    ///
    /// SAFETY: `ssl` must be a valid SSL pointer.
    unsafe fn psk_session(ssl: *mut SSL, psk: &TlsPsk) -> *mut SSL_SESSION {
        let id = psk.suite.id();
        let cipher = SSL_CIPHER_find(ssl, id.as_ptr());
        if cipher.is_null() {
            return std::ptr::null_mut();
        }
        let sess = SSL_SESSION_new();
        if sess.is_null() {
            return sess;
        }
        if SSL_SESSION_set1_master_key(sess, psk.key.as_ptr(), psk.key.len()) != 1
            || SSL_SESSION_set_cipher(sess, cipher) != 1
            || SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION) != 1
        {
            SSL_SESSION_free(sess);
            return std::ptr::null_mut();
        }
        sess
    }

    /// Server: the client offers `identity`; hand back a session with its PSK, or none (then the
    /// handshake fails: there is no certificate to fall back on).
    unsafe extern "C" fn find_session(ssl: *mut SSL, identity: *const c_uchar, len: usize, out: *mut *mut SSL_SESSION) -> c_int {
        *out = std::ptr::null_mut();
        // SAFETY: OpenSSL passes the live SSL of this handshake and `len` bytes at `identity`.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let sslr = SslRef::from_ptr_mut(ssl);
            let id = std::slice::from_raw_parts(identity, len);
            let st = sslr.ex_data_mut(server_index())?;
            let psk = st.lookup.find(id)?;
            let sess = psk_session(ssl, &psk);
            if sess.is_null() {
                return None;
            }
            st.matched = Some(id.to_vec());
            Some(sess)
        }));
        if let Ok(Some(sess)) = r {
            *out = sess;
        }
        1
    }

    /// Client: offer our identity and PSK (OpenSSL takes ownership of the session).
    unsafe extern "C" fn use_session(ssl: *mut SSL, md: *const EVP_MD, id: *mut *const c_uchar, idlen: *mut usize, out: *mut *mut SSL_SESSION) -> c_int {
        let _ = md;
        *out = std::ptr::null_mut();
        // SAFETY: OpenSSL passes the live SSL; the identity bytes live in its ex_data as long as it.
        let sslr = SslRef::from_ptr_mut(ssl);
        let Some(st) = sslr.ex_data(client_index()) else { return 0 };
        let sess = psk_session(ssl, &st.psk);
        if sess.is_null() {
            return 0;
        }
        *id = st.identity.as_ptr();
        *idlen = st.identity.len();
        *out = sess;
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    struct One(Vec<u8>, TlsSuite);
    impl PskLookup for One {
        fn find(&self, id: &[u8]) -> Option<TlsPsk> {
            (id == b"good").then(|| TlsPsk { key: self.0.clone(), suite: self.1 })
        }
    }

    fn pair(id: &str, key: Vec<u8>, skey: Vec<u8>, suite: TlsSuite) -> (UnixStream, UnixStream, TlsStream, TlsStream, Result<(), String>) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut s = TlsStream::server(a.as_raw_fd(), Arc::new(One(skey, suite))).unwrap();
        let mut c = TlsStream::client(b.as_raw_fd(), id, TlsPsk { key, suite }).unwrap();
        let mut r = Ok(());
        for _ in 0..100 {
            let cd = match c.handshake() {
                Ok(d) => d,
                Err(e) => {
                    r = Err(e.to_string());
                    break;
                }
            };
            let sd = match s.handshake() {
                Ok(d) => d,
                Err(e) => {
                    r = Err(e.to_string());
                    break;
                }
            };
            if cd && sd {
                break;
            }
        }
        (a, b, s, c, r)
    }

    #[test]
    fn psk_handshake_both_suites_and_data_both_ways() {
        for (suite, len) in [(TlsSuite::Aes128GcmSha256, 32), (TlsSuite::Aes256GcmSha384, 48)] {
            let key = vec![0x5a; len];
            let (_a, _b, mut s, mut c, r) = pair("good", key.clone(), key, suite);
            r.unwrap();
            assert!(s.established() && c.established());
            assert_eq!(s.psk_identity(), Some(&b"good"[..]));
            assert_eq!(s.cipher(), Some(suite.name()));
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            let mut got = Vec::new();
            let (mut x, mut y) = (vec![0u8; 1000], vec![0u8; 70_000]);
            while got.len() < big.len() {
                if sent < big.len() {
                    if let Ok(n) = c.write_vectored(&[IoSlice::new(&big[sent..sent + 10.min(big.len() - sent)]), IoSlice::new(&big[(sent + 10).min(big.len())..])]) {
                        sent += n;
                    }
                }
                let _ = c.flush();
                match s.read2(&mut x, &mut y) {
                    Ok(n) => {
                        let k = n.min(x.len());
                        got.extend_from_slice(&x[..k]);
                        got.extend_from_slice(&y[..n - k]);
                    }
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            }
            assert_eq!(got, big);
        }
    }

    #[test]
    fn wrong_key_or_identity_fails() {
        let (_a, _b, _s, _c, r) = pair("good", vec![1; 32], vec![2; 32], TlsSuite::Aes128GcmSha256);
        assert!(r.is_err(), "mismatched PSK must fail");
        let (_a, _b, _s, _c, r) = pair("bad", vec![1; 32], vec![1; 32], TlsSuite::Aes128GcmSha256);
        assert!(r.is_err(), "unknown identity must fail");
    }
}
