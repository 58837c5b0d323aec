//! The console's command language: the top-level shell and the
//! `echoctl_tls` sub-shell, parsed from one line each.
use std::net::IpAddr;

/// The message `client send` sends when given no text, as BitVisor does.
pub const DEFAULT_MESSAGE: &str = "Hello, BitVisor with TLS!\n";

/// The `echoctl_tls` usage text: BitVisor's three lines, then sealtls's additions.
pub const USAGE: &str = "\
usage:
  client connect <ipaddr> <port> [netif]  Connect to echo server.
  client send                             Send a message to client.
  server start <port> [netif]             Start echo server.
  client send <text>                      Send <text> and a newline instead.
  client close                            Close the client connection.
  server stop <port>                      Stop the echo server on <port>.
  server list                             List the running echo servers.
  status                                  Servers, client, bytes and TLS versions.
  exit (or an empty line)                 Leave echoctl_tls; quit closes the session.
";

/// Help for the top-level shell.
pub const TOP_HELP: &str = "\
commands:
  echoctl_tls   Echo Control with TLS (type help inside it).
  help          This text.
  quit, exit    Close the session.
";

/// A line typed at the `> ` prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopCommand {
    /// Nothing typed.
    Empty,
    /// Enter the echoctl_tls sub-shell.
    EchoctlTls,
    /// Show the commands.
    Help,
    /// Close the session.
    Quit,
    /// Not a command.
    Unknown(String),
}

/// Parses a line typed at the `> ` prompt.
pub fn parse_top(line: &str) -> TopCommand {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [] => TopCommand::Empty,
        ["echoctl_tls"] => TopCommand::EchoctlTls,
        ["help"] => TopCommand::Help,
        ["quit"] | ["exit"] => TopCommand::Quit,
        [word, ..] => TopCommand::Unknown((*word).to_owned()),
    }
}

/// A line typed at the `echoctl_tls> ` prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EchoCommand {
    /// Back to the top-level shell.
    Leave,
    /// Close the session.
    Quit,
    /// Show the usage.
    Help,
    /// Show servers, the client and counters.
    Status,
    /// Connect this session's client.
    ClientConnect {
        /// Server address.
        ip: IpAddr,
        /// Server port.
        port: u16,
        /// Network interface, as named on this machine.
        netif: Option<String>,
    },
    /// Send text (the default message when `None`).
    ClientSend(Option<String>),
    /// Close this session's client.
    ClientClose,
    /// Start an echo server.
    ServerStart {
        /// Port; 0 picks a free one.
        port: u16,
        /// Network interface, as named on this machine.
        netif: Option<String>,
    },
    /// Stop the echo server on a port.
    ServerStop(u16),
    /// List echo servers.
    ServerList,
}

/// A line the sub-shell could not understand, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

fn port(word: &str) -> Result<u16, Malformed> {
    word.parse().map_err(|_| Malformed(format!("`{}` is not a port number (0-65535)", truncate(word, 40))))
}

fn netif(word: Option<&&str>) -> Option<String> {
    word.map(|w| (*w).to_owned())
}

/// Parses a line typed at the `echoctl_tls> ` prompt.
pub fn parse_echoctl(line: &str) -> Result<EchoCommand, Malformed> {
    let words: Vec<&str> = line.split_whitespace().collect();
    use EchoCommand as C;
    Ok(match words.as_slice() {
        [] | ["exit"] => C::Leave,
        ["quit"] => C::Quit,
        ["help"] => C::Help,
        ["status"] => C::Status,
        ["client", "connect", ip, p, rest @ ..] if rest.len() <= 1 => C::ClientConnect {
            ip: ip.parse().map_err(|_| Malformed(format!("`{}` is not an IP address", truncate(ip, 40))))?,
            port: port(p)?,
            netif: netif(rest.first()),
        },
        ["client", "send"] => C::ClientSend(None),
        ["client", "send", ..] => {
            // The text keeps its inner spacing: everything after the word `send`.
            let after_client = line.trim_start()["client".len()..].trim_start();
            C::ClientSend(Some(after_client["send".len()..].trim_start().to_owned()))
        }
        ["client", "close"] => C::ClientClose,
        ["server", "start", p, rest @ ..] if rest.len() <= 1 => C::ServerStart { port: port(p)?, netif: netif(rest.first()) },
        ["server", "stop", p] => C::ServerStop(port(p)?),
        ["server", "list"] => C::ServerList,
        // A known command with the wrong arguments: say which form it takes.
        ["client", "connect", ..] => return Err(wrong_form("client connect <ipaddr> <port> [netif]")),
        ["server", "start", ..] => return Err(wrong_form("server start <port> [netif]")),
        ["server", "stop", ..] => return Err(wrong_form("server stop <port>")),
        ["client", sub, ..] | ["server", sub, ..] => {
            return Err(Malformed(format!("`{} {}` is not a command", words[0], truncate(sub, 40))))
        }
        ["client" | "server"] => return Err(Malformed(format!("`{}` needs a subcommand (see help)", words[0]))),
        [first, ..] => return Err(Malformed(format!("`{}` is not a command", truncate(first, 40)))),
    })
}

fn wrong_form(form: &str) -> Malformed {
    Malformed(format!("wrong arguments: write it as `{form}`"))
}

/// At most `max` characters of `word`, for messages.
fn truncate(word: &str, max: usize) -> String {
    match word.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &word[..cut]),
        None => word.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_guide_commands() {
        assert_eq!(parse_top("echoctl_tls"), TopCommand::EchoctlTls);
        assert_eq!(parse_echoctl("server start 10007"), Ok(EchoCommand::ServerStart { port: 10007, netif: None }));
        assert_eq!(
            parse_echoctl("client connect 192.168.40.50 10007 eth0"),
            Ok(EchoCommand::ClientConnect { ip: "192.168.40.50".parse().unwrap(), port: 10007, netif: Some("eth0".into()) })
        );
        assert_eq!(parse_echoctl("client send"), Ok(EchoCommand::ClientSend(None)));
        assert_eq!(parse_echoctl("  client  send  two  words "), Ok(EchoCommand::ClientSend(Some("two  words ".into()))));
        assert_eq!(parse_echoctl(""), Ok(EchoCommand::Leave));
        assert_eq!(parse_echoctl("quit"), Ok(EchoCommand::Quit));
    }

    #[test]
    fn malformed_lines_say_why() {
        assert!(parse_echoctl("server start 70000").unwrap_err().0.contains("not a port"));
        assert!(parse_echoctl("client connect localhost 1").unwrap_err().0.contains("not an IP address"));
        assert!(parse_echoctl("client connect 127.0.0.1").is_err());
        assert!(parse_echoctl("server start 1 eth0 extra").is_err());
        assert!(parse_echoctl("dance").unwrap_err().0.contains("`dance` is not a command"));
        // A known command missing an argument says which form it takes, not that it is unknown.
        assert!(parse_echoctl("server start").unwrap_err().0.contains("`server start <port> [netif]`"));
        assert!(parse_echoctl("client connect 127.0.0.1").unwrap_err().0.contains("`client connect <ipaddr> <port> [netif]`"));
        assert!(parse_echoctl("server stop").unwrap_err().0.contains("`server stop <port>`"));
        assert!(parse_echoctl("server dance").unwrap_err().0.contains("`server dance` is not a command"));
        assert!(parse_echoctl("client").unwrap_err().0.contains("needs a subcommand"));
        let long = "x".repeat(300);
        for line in [format!("server stop {long}"), format!("client connect {long} 1"), long.clone()] {
            assert!(parse_echoctl(&line).unwrap_err().0.chars().count() < 80, "{line}");
        }
    }

    #[test]
    fn usage_starts_with_the_original_text() {
        assert!(USAGE.starts_with("usage:\n  client connect <ipaddr> <port> [netif]  Connect to echo server.\n  client send                             Send a message to client.\n  server start <port> [netif]             Start echo server.\n"));
        assert_eq!(DEFAULT_MESSAGE.len(), 26);
    }

    proptest! {
        #[test]
        fn any_line_parses_or_is_refused(line in "\\PC{0,200}") {
            let _ = parse_top(&line);
            if let Err(Malformed(why)) = parse_echoctl(&line) {
                prop_assert!(why.chars().count() < 80);
            }
        }
    }
}
