//! A fixed set of threads for handshakes whose key blocks while it signs
//! (keyd answers over a socket). Such a handshake step must not hold a
//! runtime worker, and tokio's blocking pool would start a thread for each
//! step of a burst; these threads are started once, at most `count`, and a
//! step waits (asynchronously) for one to be free.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{oneshot, Semaphore};

type Job = Box<dyn FnOnce() + Send>;

/// At most `count` threads, started on first use.
pub struct SigningThreads {
    count: usize,
    permits: Arc<Semaphore>,
    jobs: OnceLock<Option<SyncSender<Job>>>,
}

impl SigningThreads {
    /// A set of `count` threads (at least one).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        Self { count, permits: Arc::new(Semaphore::new(count)), jobs: OnceLock::new() }
    }

    fn start(&self) -> Option<SyncSender<Job>> {
        // Every job holds a permit: the queue never holds more than `count`.
        let (jobs, queue) = sync_channel::<Job>(self.count);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..self.count {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("sealtls-sign-{i}")).spawn(move || serve_jobs(&queue));
            if spawned.is_err() && i == 0 {
                return None;
            }
        }
        Some(jobs)
    }

    /// Runs `work` on one of the threads, inside the caller's tokio runtime
    /// context, once one is free. `None` if no thread could be started or
    /// `work` panicked.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let jobs = self.jobs.get_or_init(|| self.start()).as_ref()?;
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _runtime = runtime.enter();
            if let Ok(done) = catch_unwind(AssertUnwindSafe(work)) {
                let _ = tx.send(done);
            }
            drop(permit);
        });
        jobs.try_send(job).ok()?;
        rx.await.ok()
    }
}

/// A thread's loop: runs jobs until the set is dropped.
fn serve_jobs(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
