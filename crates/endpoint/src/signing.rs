//! A fixed set of threads for handshakes whose key blocks while it signs
//! (keyd answers over a socket). Such a handshake step must not hold a
//! runtime worker, and tokio's blocking pool would start a thread for each
//! step of a burst; these threads are started once, at most `count`, and a
//! step waits (asynchronously) for one to be free.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

type Job = Box<dyn FnOnce() + Send>;

/// What a signing thread runs each time it runs out of work.
static ON_IDLE: OnceLock<fn()> = OnceLock::new();

/// Sets what a signing thread runs each time it runs out of work, once per
/// process: the binary hands its allocator's free memory back there, as its
/// runtime workers do when they park (memory that a handshake step allocated
/// on a signing thread is returned only by that thread).
pub fn on_idle(hook: fn()) {
    let _ = ON_IDLE.set(hook);
}

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

/// How long after running out of work a signing thread runs the idle hook again.
const IDLE_AGAIN: Duration = Duration::from_millis(200);

fn idle() {
    if let Some(hook) = ON_IDLE.get() {
        hook();
    }
}

/// A thread's loop: runs jobs until the set is dropped; runs the idle hook
/// before it waits.
fn serve_jobs(queue: &Mutex<Receiver<Job>>) {
    loop {
        let next = match queue.lock() {
            Ok(queue) => queue.try_recv(),
            Err(_) => return,
        };
        let job = match next {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                idle();
                // Once more after a quiet moment: the hook may limit how often it runs.
                let next = match queue.lock() {
                    Ok(queue) => queue.recv_timeout(IDLE_AGAIN),
                    Err(_) => return,
                };
                match next {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {
                        idle();
                        match queue.lock().map(|queue| queue.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        }
                    }
                }
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_thread_out_of_work_runs_the_idle_hook_then_once_more() {
        static IDLES: AtomicUsize = AtomicUsize::new(0);
        on_idle(|| {
            IDLES.fetch_add(1, Ordering::SeqCst);
        });
        let threads = SigningThreads::new(1);
        assert_eq!(threads.run(|| 7).await, Some(7));
        let deadline = Instant::now() + Duration::from_secs(10);
        while IDLES.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the idle hook ran {} times", IDLES.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(threads.run(|| 8).await, Some(8), "the thread still takes work");
    }
}
