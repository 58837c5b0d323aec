//! The status listener: an HTTP server (hyper) on a loopback address or a
//! Unix socket with three endpoints. `/metrics` is the Prometheus text
//! exposition of a `prometheus-client` registry, `/_status` a JSON report
//! of the process's listeners, certificates, trust anchors and keyd links,
//! and `/_health` 200 "ok" or 503 with the reasons. Certificates are read
//! through callbacks on every request, so what is shown is what is served
//! now. Nothing here speaks TLS or knows the other crates: the binary tells
//! it what runs.
mod addr;
mod certs;
mod http;
mod report;

pub use addr::{bind, Bound, StatusAddr};
pub use certs::{Anchor, Certificate};
pub use http::{serve, serve_with, Limits};
pub use prometheus_client;
pub use report::{Check, KeydProbe, Listener, Running, Status};
