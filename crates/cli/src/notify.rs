//! Telling systemd (Type=notify) how a service is: ready once its
//! listeners are bound, reloading, stopping. Without NOTIFY_SOCKET these do
//! nothing, so every long-running command calls them unconditionally.
use sd_notify::NotifyState;
use tracing::warn;

fn send(states: &[NotifyState<'_>]) {
    // NOTIFY_SOCKET stays set: the service notifies again at reload and stop.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// READY=1: the listeners are bound and announced.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// RELOADING=1 with the monotonic time systemd 253 and later expect.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1: shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Waits for `shutdown`, then says STOPPING=1.
pub async fn stopping_after(shutdown: impl std::future::Future<Output = ()>) {
    shutdown.await;
    stopping();
}
