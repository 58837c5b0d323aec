//! Sans-IO line assembly for the console: bytes from a telnet or nc client
//! in, text lines (or a reason a line was refused) out.
//!
//! Telnet commands (IAC sequences, RFC 854) are removed from the data; an
//! option the client offers or asks for is refused once (DONT / WONT), so
//! no option is ever negotiated and the stream stays plain text.

/// Interpret As Command.
const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
/// Subnegotiation begin and end.
const SB: u8 = 250;
const SE: u8 = 240;

/// What one line of input turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A line of text without its line ending.
    Line(String),
    /// A line longer than the limit; it was dropped whole.
    TooLong,
    /// A line holding control characters or invalid UTF-8; it was dropped.
    NotText,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Telnet {
    Data,
    /// After IAC.
    Command,
    /// After IAC WILL/WONT/DO/DONT, waiting for the option byte.
    Option(u8),
    /// Inside IAC SB ... IAC SE.
    Sub,
    /// After IAC inside a subnegotiation.
    SubIac,
}

/// Assembles lines of at most `max_line` bytes.
#[derive(Debug)]
pub struct LineReader {
    max_line: usize,
    line: Vec<u8>,
    overflowed: bool,
    /// A CR was the last byte: a following LF or NUL belongs to it.
    after_cr: bool,
    telnet: Telnet,
    replies: Vec<u8>,
    ready: std::collections::VecDeque<Input>,
}

impl LineReader {
    /// A reader refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            overflowed: false,
            after_cr: false,
            telnet: Telnet::Data,
            replies: Vec::new(),
            ready: Default::default(),
        }
    }

    /// Feeds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    /// The next complete input, if any.
    pub fn next_input(&mut self) -> Option<Input> {
        self.ready.pop_front()
    }

    /// Telnet replies to send back to the client, emptied by this call.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.replies)
    }

    /// Bytes held for an unfinished line.
    pub fn pending(&self) -> usize {
        self.line.len()
    }

    fn byte(&mut self, b: u8) {
        self.telnet = match (self.telnet, b) {
            (Telnet::Data, IAC) => Telnet::Command,
            (Telnet::Data, _) => {
                self.data(b);
                Telnet::Data
            }
            // IAC IAC is a literal 255, which is never text here.
            (Telnet::Command, IAC) => {
                self.data(b);
                Telnet::Data
            }
            (Telnet::Command, WILL | WONT | DO | DONT) => Telnet::Option(b),
            (Telnet::Command, SB) => Telnet::Sub,
            (Telnet::Command, _) => Telnet::Data,
            (Telnet::Option(verb), option) => {
                match verb {
                    WILL => self.replies.extend_from_slice(&[IAC, DONT, option]),
                    DO => self.replies.extend_from_slice(&[IAC, WONT, option]),
                    _ => {}
                }
                Telnet::Data
            }
            (Telnet::Sub, IAC) => Telnet::SubIac,
            (Telnet::Sub, _) => Telnet::Sub,
            (Telnet::SubIac, SE) => Telnet::Data,
            (Telnet::SubIac, _) => Telnet::Sub,
        };
    }

    fn data(&mut self, b: u8) {
        let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
        match b {
            b'\n' | 0 if after_cr => {}
            b'\r' | b'\n' => self.finish(),
            _ if self.overflowed => {}
            _ if self.line.len() == self.max_line => {
                self.overflowed = true;
                self.line.clear();
            }
            _ => self.line.push(b),
        }
    }

    fn finish(&mut self) {
        let line = std::mem::take(&mut self.line);
        let input = if std::mem::replace(&mut self.overflowed, false) {
            Input::TooLong
        } else {
            match String::from_utf8(line) {
                Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => Input::Line(text),
                _ => Input::NotText,
            }
        };
        self.ready.push_back(input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(reader: &mut LineReader) -> Vec<Input> {
        std::iter::from_fn(|| reader.next_input()).collect()
    }

    #[test]
    fn line_endings_of_nc_and_telnet() {
        let mut r = LineReader::new(100);
        r.push(b"echoctl_tls\r\nhelp\nclient send\r\0\r\n");
        assert_eq!(
            all(&mut r),
            vec![
                Input::Line("echoctl_tls".into()),
                Input::Line("help".into()),
                Input::Line("client send".into()),
                Input::Line(String::new())
            ]
        );
    }

    #[test]
    fn lines_split_across_reads() {
        let mut r = LineReader::new(100);
        r.push(b"server st");
        assert_eq!(r.next_input(), None);
        r.push(b"art 10007\r");
        r.push(b"\n");
        assert_eq!(all(&mut r), vec![Input::Line("server start 10007".into())]);
    }

    #[test]
    fn telnet_negotiation_is_refused_and_removed() {
        let mut r = LineReader::new(100);
        r.push(&[IAC, DO, 1, IAC, WILL, 31, b'h', IAC, SB, 24, 0, b'x', IAC, SE, b'i', IAC, 244, b'\n']);
        assert_eq!(all(&mut r), vec![Input::Line("hi".into())]);
        assert_eq!(r.take_replies(), vec![IAC, WONT, 1, IAC, DONT, 31]);
        assert!(r.take_replies().is_empty());
    }

    #[test]
    fn long_lines_and_binary_are_refused_whole() {
        let mut r = LineReader::new(8);
        r.push(b"123456789\nok\n\x01\x02\nb\xc3\x28d\n");
        assert_eq!(all(&mut r), vec![Input::TooLong, Input::Line("ok".into()), Input::NotText, Input::NotText]);
        assert_eq!(r.pending(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_exceed_the_limit(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut r = LineReader::new(64);
            for c in &chunks {
                r.push(c);
                prop_assert!(r.pending() <= 64);
                while let Some(input) = r.next_input() {
                    if let Input::Line(l) = input {
                        prop_assert!(l.len() <= 64);
                        prop_assert!(!l.chars().any(|c| c.is_control() && c != '\t'));
                    }
                }
            }
        }
    }
}
