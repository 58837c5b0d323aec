//! The `echoctl_tls` console of sealtls: a line shell reachable with telnet
//! or nc that starts TLS echo servers and drives a TLS client, after
//! BitVisor's telnet debug shell.
//!
//! [`lines`] and [`command`] are sans-IO (bytes in, lines and commands
//! out); [`console`] is the thin async server around them.
pub mod client_link;
pub mod command;
pub mod console;
pub mod lines;
pub mod material;
pub mod servers;

pub use console::{check_listen, Console, ConsoleOptions};
pub use material::TlsMaterial;
pub use servers::{EchoServers, ServerSpec};
