//! The thread DH-HMAC-CHAP's exponentiations run on, off the reactors: one FFDHE-8192 step takes
//! milliseconds, and a reactor doing it would hold up every connection it serves. One thread for
//! the whole target, so hosts (or strangers) negotiating the largest groups over and over delay
//! each other's authentication, never anyone's I/O. Each queue has at most one job in flight
//! (its transaction waits for it), so the backlog is bounded by the connections.

use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

static WORKER: OnceLock<Sender<Job>> = OnceLock::new();

/// Run `job` on the authentication thread (started on first use).
pub fn submit(job: impl FnOnce() + Send + 'static) {
    let tx = WORKER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("palisade-auth".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the authentication thread");
        tx
    });
    // The receiver lives as long as the process: sending cannot fail.
    let _ = tx.send(Box::new(job));
}
