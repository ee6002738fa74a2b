//! SPDY/3.1, the framing kubectl uses for `exec`, `attach`, `cp` and `port-forward` (every
//! kubectl version falls back to it when a WebSocket is refused, and 1.27-1.29 use nothing
//! else). One TCP connection carries many *streams*, each opened by the client with a
//! SYN_STREAM whose headers say what it is (`streamtype: stdout`, `port: 8080`), then
//! DATA frames, each ending with a FIN. Headers are zlib-compressed against SPDY's own
//! dictionary, with one compression context per direction for the whole connection.
//!
//! Only the server side kubectl needs is here: streams are opened by the client, replied
//! to at once; PINGs are echoed; there is no flow control (kubectl's library has none).
//! No maintained Rust crate implements SPDY, so it is written here, after moby/spdystream.
//!
//! Upstream: github.com/moby/spdystream/spdy (types.go, read.go, write.go, dictionary.go),
//! k8s.io/apimachinery/pkg/util/httpstream/spdy

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// The SPDY/3 header dictionary: 65 words, each as a big-endian length and its bytes,
/// then a tail of common values.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: [&str; 65] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-",
            "Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 ",
            "Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar",
            " Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/ht",
            "ml,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,pu",
            "blicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header blocks in: one zlib stream for the whole connection, fed frame by frame.
struct Inflater(Decompress);

impl Inflater {
    fn new() -> Self {
        Inflater(Decompress::new(true))
    }
    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let bad = |_| SpdyError::Protocol("bad header compression");
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let before_in = self.0.total_in();
            out.reserve(1024);
            match self.0.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(dictionary()).map_err(bad)?;
                }
                Err(e) => return Err(bad(e)),
            }
            let used = (self.0.total_in() - before_in) as usize;
            input = &input[used..];
            if input.is_empty() && out.capacity() > out.len() {
                return Ok(out);
            }
        }
    }
}

/// Header blocks out: one zlib stream, sync-flushed after each block.
struct Deflater(Compress);

impl Deflater {
    fn new() -> Self {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary()).expect("a fresh zlib stream takes a dictionary");
        Deflater(c)
    }
    fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            out.reserve(1024 + rest.len() * 2);
            let before = self.0.total_in();
            self.0.compress_vec(rest, &mut out, FlushCompress::Sync).expect("in-memory deflate");
            rest = &rest[(self.0.total_in() - before) as usize..];
            // Done once every byte is in and the flush did not run out of room.
            if rest.is_empty() && out.capacity() > out.len() {
                return out;
            }
        }
    }
}

/// `u32 count`, then each name and value as `u32 length` and bytes.
fn parse_headers(b: &[u8]) -> Result<HashMap<String, String>, SpdyError> {
    let bad = SpdyError::Protocol("bad header block");
    let mut b = b;
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, SpdyError> {
        if b.len() < 4 {
            return Err(SpdyError::Protocol("bad header block"));
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(SpdyError::Protocol("bad header block"));
        }
        let v = b[..n].to_vec();
        b.advance(n);
        Ok(v)
    };
    if b.len() < 4 {
        return Err(bad);
    }
    let count = b.get_u32();
    let mut h = HashMap::new();
    for _ in 0..count.min(1024) {
        let name = String::from_utf8_lossy(&take(&mut b)?).to_lowercase();
        let value = String::from_utf8_lossy(&take(&mut b)?).into_owned();
        h.insert(name, value);
    }
    Ok(h)
}

fn control(ty: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(8 + payload.len());
    f.put_u16(0x8000 | VERSION);
    f.put_u16(ty);
    f.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    f.put_slice(payload);
    f.freeze()
}

fn data(id: u32, fin: bool, payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(8 + payload.len());
    f.put_u32(id & 0x7fff_ffff);
    f.put_u32((u32::from(if fin { FLAG_FIN } else { 0 }) << 24) | payload.len() as u32);
    f.put_slice(payload);
    f.freeze()
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: HashMap<String, String>,
    /// DATA from the client; closed at its FIN (or RST).
    pub incoming: mpsc::Receiver<Bytes>,
}

impl Stream {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Writing to the client: data on a stream, its end, or the end of everything.
#[derive(Clone)]
pub struct Writer(mpsc::Sender<Bytes>);

/// DATA frames carry at most this much (kubectl reads 32 KiB at a time).
const CHUNK: usize = 32 * 1024;

impl Writer {
    pub async fn send(&self, id: u32, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK);
            if self.0.send(data(id, false, &bytes[..n])).await.is_err() {
                return false;
            }
            bytes = &bytes[n..];
        }
        true
    }
    /// An empty DATA frame with FIN: this side of the stream is done.
    pub async fn finish(&self, id: u32) {
        let _ = self.0.send(data(id, true, &[])).await;
    }
    pub async fn reset(&self, id: u32) {
        let mut p = BytesMut::new();
        p.put_u32(id);
        p.put_u32(5); // CANCEL
        let _ = self.0.send(control(RST_STREAM, 0, &p)).await;
    }
    pub async fn go_away(&self) {
        let _ = self.0.send(control(GOAWAY, 0, &[0; 8])).await;
    }
}

/// Serve SPDY on an upgraded connection: new streams come out of the returned receiver,
/// writes go through the [`Writer`]. The session ends when the client goes away.
pub fn serve<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO) -> (mpsc::Receiver<Stream>, Writer) {
    let (rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let (streams_tx, streams_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let writer = Writer(out_tx.clone());
    tokio::spawn(async move {
        if let Err(e) = read_loop(rd, out_tx, streams_tx).await {
            tracing::debug!(error = %e, "spdy session ended");
        }
    });
    (streams_rx, writer)
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, out: mpsc::Sender<Bytes>, streams: mpsc::Sender<Stream>) -> Result<(), SpdyError> {
    let (mut inflater, mut deflater) = (Inflater::new(), Deflater::new());
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut head = [0u8; 8];
    loop {
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let word = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let (flags, len) = ((word >> 24) as u8, (word & 0x00ff_ffff) as usize);
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;
        if head[0] & 0x80 == 0 {
            // DATA: to the stream's reader (dropped if it is gone), then its end.
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if let Some(tx) = open.get(&id) {
                if !payload.is_empty() {
                    let _ = tx.send(Bytes::from(payload)).await;
                }
            }
            if flags & FLAG_FIN != 0 {
                open.remove(&id);
            }
            continue;
        }
        let ty = u16::from_be_bytes([head[2], head[3]]);
        let mut p = &payload[..];
        match ty {
            SYN_STREAM if p.len() >= 10 => {
                let id = p.get_u32() & 0x7fff_ffff;
                p.advance(6); // associated stream, priority, slot
                let headers = parse_headers(&inflater.inflate(p)?)?;
                let mut reply = BytesMut::new();
                reply.put_u32(id);
                reply.put_slice(&deflater.deflate(&0u32.to_be_bytes()));
                let _ = out.send(control(SYN_REPLY, 0, &reply)).await;
                let (tx, rx) = mpsc::channel(32);
                if flags & FLAG_FIN == 0 {
                    open.insert(id, tx);
                }
                if streams.send(Stream { id, headers, incoming: rx }).await.is_err() {
                    return Ok(());
                }
            }
            RST_STREAM if p.len() >= 4 => drop(open.remove(&(p.get_u32() & 0x7fff_ffff))),
            PING => drop(out.send(control(PING, 0, &payload)).await),
            GOAWAY => return Ok(()),
            HEADERS => drop(inflater.inflate(p.get(4..).unwrap_or(&[]))?),
            SETTINGS | WINDOW_UPDATE | SYN_REPLY => {}
            _ => return Err(SpdyError::Protocol("unknown or short control frame")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        let adler = {
            let (mut a, mut b) = (1u32, 0u32);
            for &x in d {
                a = (a + u32::from(x)) % 65521;
                b = (b + a) % 65521;
            }
            (b << 16) | a
        };
        assert_eq!(adler, 0xe3c6a7c2);
    }

    #[test]
    fn header_blocks_round_trip_in_one_context() {
        // The first block kubectl sends for `streamtype: error` (C zlib, level 9).
        let block = hex("78f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff");
        let mut inf = Inflater::new();
        assert_eq!(parse_headers(&inf.inflate(&block).unwrap()).unwrap()["streamtype"], "error");
        let next = hex("c22a054ccc29f9a52500000000ffff");
        assert_eq!(parse_headers(&inf.inflate(&next).unwrap()).unwrap()["streamtype"], "stdout");
        let (mut def, mut inf2) = (Deflater::new(), Inflater::new());
        for _ in 0..3 {
            let mut raw = BytesMut::new();
            raw.put_u32(1);
            for s in ["port", "8080"] {
                raw.put_u32(s.len() as u32);
                raw.put_slice(s.as_bytes());
            }
            let z = def.deflate(&raw);
            assert_eq!(parse_headers(&inf2.inflate(&z).unwrap()).unwrap()["port"], "8080");
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
