//! Stopping on a signal, and reloading on one.

/// Installs SIGINT and SIGTERM handlers now, so that a signal arriving
/// during start-up is not lost, and resolves when one arrives.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
}

/// Installs the SIGHUP handler now: from then on SIGHUP is queued for the
/// returned stream instead of ending the process (its default action).
pub fn hangup_signal() -> tokio::signal::unix::Signal {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).expect("SIGHUP handler installs")
}
