//! Container logs in the CRI format the kubelet reads (`/var/log/pods/...`): one line per
//! line of output, `2026-12-01T10:00:00.123456789Z stdout F hello`. `F` marks a full line,
//! `P` a part of a longer one (over 16 KiB, or output that ends without a newline). Each
//! container restart gets its own file (`0.log`, `1.log`, ...), which is how
//! `kubectl logs --previous` finds the last run's output.
//!
//! Reading back ([`Reader`]) applies what `kubectl logs` asks: `tailLines`, `limitBytes`,
//! `sinceSeconds`/`sinceTime` and `timestamps`.
//!
//! Upstream: containerd internal/cri/io/logger.go, pkg/kubelet/kuberuntime/logs/logs.go

/// Longest line written whole; longer ones are split into `P` parts.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Go's RFC3339Nano: seconds, then the fraction without trailing zeros.
pub fn rfc3339_nano(t: jiff::Timestamp) -> String {
    let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let ns = t.subsec_nanosecond();
    if ns == 0 {
        return format!("{base}Z");
    }
    let frac = format!("{ns:09}");
    format!("{base}.{}Z", frac.trim_end_matches('0'))
}

/// Turns one stream's output into CRI lines, keeping what does not end in a newline yet.
#[derive(Default)]
pub struct Framer {
    partial: Vec<u8>,
}

fn line(out: &mut Vec<u8>, ts: &str, s: Stream, tag: char, content: &[u8]) {
    out.extend_from_slice(format!("{ts} {} {tag} ", s.name()).as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
}

impl Framer {
    /// The lines `data` completes, stamped `ts`.
    pub fn push(&mut self, data: &[u8], ts: &str, s: Stream) -> Vec<u8> {
        self.partial.extend_from_slice(data);
        let mut out = vec![];
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let mut content: Vec<u8> = self.partial.drain(..=i).collect();
            content.pop();
            if content.last() == Some(&b'\r') {
                content.pop();
            }
            if content.is_empty() {
                line(&mut out, ts, s, 'F', &[]);
            }
            let mut chunks = content.chunks(MAX_LINE).peekable();
            while let Some(c) = chunks.next() {
                line(&mut out, ts, s, if chunks.peek().is_some() { 'P' } else { 'F' }, c);
            }
        }
        while self.partial.len() > MAX_LINE {
            let part: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            line(&mut out, ts, s, 'P', &part);
        }
        out
    }

    /// At the end of the stream: what is left, as a partial line.
    pub fn finish(&mut self, ts: &str, s: Stream) -> Vec<u8> {
        let mut out = vec![];
        if !self.partial.is_empty() {
            line(&mut out, ts, s, 'P', &std::mem::take(&mut self.partial));
        }
        out
    }
}

/// One parsed line.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub time: &'a str,
    pub stream: Stream,
    pub full: bool,
    pub content: &'a [u8],
}

pub fn parse_line(l: &[u8]) -> Option<Line<'_>> {
    let mut parts = l.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or(b"");
    Some(Line { time, stream, full, content: content.strip_suffix(b"\n").unwrap_or(content) })
}

/// What `kubectl logs` asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<u64>,
    /// Lines stamped before this are skipped (nanoseconds since the epoch).
    pub since_nanos: Option<i128>,
    pub timestamps: bool,
}

/// The byte offset of the last `n` lines of a file.
pub fn tail_start(file: &[u8], n: Option<usize>) -> usize {
    let Some(n) = n else { return 0 };
    if n == 0 {
        return file.len();
    }
    let body = file.strip_suffix(b"\n").unwrap_or(file);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Turns CRI lines into what the client sees, as they come (for `follow`).
pub struct Reader {
    opts: Options,
    left: Option<u64>,
    buf: Vec<u8>,
}

impl Reader {
    pub fn new(opts: Options) -> Reader {
        Reader { left: opts.limit_bytes, opts, buf: vec![] }
    }

    /// The client's bytes for `data`; `true` once `limitBytes` is used up.
    pub fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        self.buf.extend_from_slice(data);
        let mut out = vec![];
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=i).collect();
            if self.emit(&raw, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    /// Adds one line's output; `true` when the byte limit is reached.
    fn emit(&mut self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(l) = parse_line(raw) else { return false };
        if let Some(since) = self.opts.since_nanos {
            if l.time.parse::<jiff::Timestamp>().is_ok_and(|t| t.as_nanosecond() < since) {
                return false;
            }
        }
        let mut text = vec![];
        if self.opts.timestamps {
            text.extend_from_slice(l.time.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(l.content);
        if l.full {
            text.push(b'\n');
        }
        if let Some(left) = self.left.as_mut() {
            let n = text.len().min(*left as usize);
            out.extend_from_slice(&text[..n]);
            *left -= n as u64;
            return *left == 0;
        }
        out.extend_from_slice(&text);
        false
    }
}

/// A whole file as the client sees it (no `follow`).
pub fn read_all(file: &[u8], opts: &Options) -> Vec<u8> {
    let mut r = Reader::new(opts.clone());
    let (mut out, done) = r.feed(&file[tail_start(file, opts.tail_lines)..]);
    if !done && !r.buf.is_empty() {
        let rest = std::mem::take(&mut r.buf);
        r.emit(&rest, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_reads_back() {
        let mut f = Framer::default();
        let ts = "2026-12-01T10:00:00.5Z";
        let mut file = f.push(b"one\ntw", ts, Stream::Stdout);
        file.extend(f.push(b"o\r\nthree", "2026-12-01T10:00:01Z", Stream::Stdout));
        file.extend(f.finish("2026-12-01T10:00:02Z", Stream::Stdout));
        let text = String::from_utf8(file.clone()).unwrap();
        assert_eq!(text, "2026-12-01T10:00:00.5Z stdout F one\n2026-12-01T10:00:01Z stdout F two\n2026-12-01T10:00:02Z stdout P three\n");
        assert_eq!(read_all(&file, &Options::default()), b"one\ntwo\nthree");
        assert_eq!(read_all(&file, &Options { tail_lines: Some(2), ..Default::default() }), b"two\nthree");
        assert_eq!(read_all(&file, &Options { limit_bytes: Some(5), ..Default::default() }), b"one\nt");
        let since = "2026-12-01T10:00:01Z".parse::<jiff::Timestamp>().unwrap().as_nanosecond();
        assert_eq!(
            read_all(&file, &Options { since_nanos: Some(since), timestamps: true, ..Default::default() }),
            b"2026-12-01T10:00:01Z two\n2026-12-01T10:00:02Z three"
        );
        assert_eq!(rfc3339_nano(jiff::Timestamp::from_second(0).unwrap()), "1970-01-01T00:00:00Z");
        let long = vec![b'x'; MAX_LINE + 10];
        let mut f = Framer::default();
        let out = String::from_utf8(f.push(&[&long[..], b"\n"].concat(), ts, Stream::Stderr)).unwrap();
        assert_eq!(out.lines().map(|l| l.split(' ').nth(2).unwrap()).collect::<Vec<_>>(), ["P", "F"]);
    }
}
