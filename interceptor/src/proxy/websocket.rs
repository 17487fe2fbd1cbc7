//! WebSocket frames (RFC 6455 §5.2) through the scanning relay. A client's frames are
//! XOR-masked with a key per frame, so their payload is unreadable as it is on the wire.
//!
//! [`FrameReader`] sits on the side a direction reads from: it parses each frame header
//! (bounds-checked, never buffering a payload), hands the scanner only the payload,
//! unmasked, and notes the frame's layout. [`FrameWriter`] sits on the side the same
//! direction writes to: it takes the scanner's output (same length, secrets masked), puts
//! each frame's header back before its payload and masks the payload again with its key.
//! Server frames, which are not masked, pass the same way. Headers never reach the scanner,
//! so a message's fragments are one stretch to it: a secret split across them is found.
//!
//! A message's end is a boundary, but on the wire the next header or nothing at all follows
//! it: a secret that ends a message would look unfinished to the scanner (it could go on)
//! until the idle flush forwarded it. So the reader hands the scanner one newline after each
//! final frame (FIN set), and the writer drops it.
//!
//! A control frame (ping, pong, close) may come between two fragments of a message; handed
//! to the scanner, it would cut the message's stretch in two. Such a frame (its payload is
//! at most 125 bytes) is collected whole, its payload masked on its own ([`ControlScan`])
//! and sent on in its place; between messages, control frames are scanned like any other.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use interceptor::relay_scan::Direction;
use tokio::io::{AsyncRead, AsyncWrite, Join, ReadBuf, ReadHalf, WriteHalf};

/// Longest frame header: 2 bytes, 8 of extended length, 4 of masking key.
const MAX_HEADER: usize = 14;
const READ_SIZE: usize = 16 * 1024;

/// Masks, in place, the payload (unmasked, at most 125 bytes) of a control frame that came
/// inside a fragmented message and goes `Direction`'s way. An error ends the connection: the
/// frame may not pass unscanned.
pub type ControlScan = Arc<dyn Fn(Direction, &mut [u8]) -> io::Result<()> + Send + Sync>;

/// Both ends of a WebSocket, as the scanning relay is to see them: each reads unmasked
/// payloads and writes frames restored.
pub fn framed<C, U>(client: C, upstream: U, control: ControlScan) -> (Framed<C>, Framed<U>)
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_rx, client_tx) = tokio::io::split(client);
    let (upstream_rx, upstream_tx) = tokio::io::split(upstream);
    let (up, down) = (Arc::new(Layout::default()), Arc::new(Layout::default()));
    (
        tokio::io::join(
            FrameReader::new(client_rx, up.clone(), control.clone(), Direction::Up),
            FrameWriter::new(client_tx, down.clone()),
        ),
        tokio::io::join(
            FrameReader::new(upstream_rx, down, control, Direction::Down),
            FrameWriter::new(upstream_tx, up),
        ),
    )
}

pub type Framed<S> = Join<FrameReader<ReadHalf<S>>, FrameWriter<WriteHalf<S>>>;

/// One stretch of a direction's stream, as the reader parsed it.
enum Segment {
    /// Sent on as it came; the scanner never sees it.
    Header {
        bytes: [u8; MAX_HEADER],
        len: usize,
    },
    Payload {
        len: u64,
        key: Option<[u8; 4]>,
    },
    /// The newline after a message, which the scanner sees and which is not sent on.
    End,
    /// A control frame inside a fragmented message, header and payload (masked apart).
    Verbatim(Vec<u8>),
}

impl Segment {
    /// Bytes of it in the scanner's stream.
    fn scanned(&self) -> u64 {
        match self {
            Segment::Header { .. } | Segment::Verbatim(_) => 0,
            Segment::Payload { len, .. } => *len,
            Segment::End => 1,
        }
    }

    /// Bytes of it on the wire.
    fn sent(&self) -> u64 {
        match self {
            Segment::Header { len, .. } => *len as u64,
            Segment::Payload { len, .. } => *len,
            Segment::End => 0,
            Segment::Verbatim(frame) => frame.len() as u64,
        }
    }
}

/// The frames of one direction that were read and not yet written back, in order.
#[derive(Default)]
struct Layout(Mutex<VecDeque<Segment>>);

enum State {
    /// Collecting a header; `have` bytes of it so far.
    Head { have: usize },
    Payload {
        remaining: u64,
        key: Option<[u8; 4]>,
        offset: u64,
        /// The frame ends its message.
        fin: bool,
    },
    /// Handing on the newline that ends a message.
    End,
    /// Collecting a control frame inside a fragmented message: `remaining` payload bytes
    /// after its `header` bytes.
    Verbatim {
        remaining: usize,
        header: usize,
        key: Option<[u8; 4]>,
    },
}

/// Longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The reading half of one direction: payloads unmasked, layout noted.
pub struct FrameReader<R> {
    inner: R,
    layout: Arc<Layout>,
    control: ControlScan,
    /// Where what this side reads goes.
    direction: Direction,
    state: State,
    header: [u8; MAX_HEADER],
    /// A data frame without FIN came, and its message's last frame has not yet.
    in_message: bool,
    /// The control frame being collected in `State::Verbatim`.
    verbatim: Vec<u8>,
    /// A bad frame found after payload bytes were handed out: reported by the next read.
    failed: Option<io::Error>,
    /// Read from `inner`, not handed out yet.
    raw: Box<[u8]>,
    raw_at: usize,
    raw_len: usize,
}

impl<R> FrameReader<R> {
    fn new(inner: R, layout: Arc<Layout>, control: ControlScan, direction: Direction) -> Self {
        FrameReader {
            inner,
            layout,
            control,
            direction,
            state: State::Head { have: 0 },
            header: [0; MAX_HEADER],
            in_message: false,
            verbatim: Vec::new(),
            failed: None,
            raw: vec![0; READ_SIZE].into_boxed_slice(),
            raw_at: 0,
            raw_len: 0,
        }
    }

    /// Moves what is buffered into `out` until one of them runs out.
    fn process(&mut self, out: &mut ReadBuf<'_>) -> io::Result<()> {
        while out.remaining() > 0 {
            let raw = &self.raw[self.raw_at..self.raw_len];
            match &mut self.state {
                State::Head { have } => {
                    let Some(&byte) = raw.first() else { break };
                    self.header[*have] = byte;
                    *have += 1;
                    self.raw_at += 1;
                    if let Some(FrameHead {
                        len,
                        payload,
                        key,
                        fin,
                        control,
                    }) = parse_header(&self.header[..*have])?
                    {
                        if control && self.in_message {
                            if payload > MAX_CONTROL_PAYLOAD {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "WebSocket control frame longer than 125 bytes",
                                ));
                            }
                            self.verbatim = self.header[..len].to_vec();
                            self.state = State::Verbatim {
                                remaining: payload as usize,
                                header: len,
                                key,
                            };
                            continue;
                        }
                        if !control {
                            self.in_message = !fin;
                        }
                        let mut layout = self.layout.0.lock().unwrap_or_else(|e| e.into_inner());
                        layout.push_back(Segment::Header {
                            bytes: self.header,
                            len,
                        });
                        layout.push_back(Segment::Payload { len: payload, key });
                        if fin {
                            layout.push_back(Segment::End);
                        }
                        self.state = State::Payload {
                            remaining: payload,
                            key,
                            offset: 0,
                            fin,
                        };
                    }
                }
                State::Payload {
                    remaining: 0, fin, ..
                } => {
                    self.state = if *fin {
                        State::End
                    } else {
                        State::Head { have: 0 }
                    }
                }
                State::End => {
                    out.put_slice(b"\n");
                    self.state = State::Head { have: 0 };
                }
                State::Verbatim {
                    remaining: 0,
                    header,
                    key,
                } => {
                    let mut frame = std::mem::take(&mut self.verbatim);
                    let payload = &mut frame[*header..];
                    if let Some(key) = key {
                        apply_mask(payload, *key, 0);
                    }
                    (self.control)(self.direction, payload)?;
                    if let Some(key) = key {
                        apply_mask(payload, *key, 0);
                    }
                    let mut layout = self.layout.0.lock().unwrap_or_else(|e| e.into_inner());
                    layout.push_back(Segment::Verbatim(frame));
                    self.state = State::Head { have: 0 };
                }
                State::Verbatim { remaining, .. } => {
                    if raw.is_empty() {
                        break;
                    }
                    let n = (*remaining).min(raw.len());
                    self.verbatim.extend_from_slice(&raw[..n]);
                    *remaining -= n;
                    self.raw_at += n;
                }
                State::Payload {
                    remaining,
                    key,
                    offset,
                    ..
                } => {
                    if raw.is_empty() {
                        break;
                    }
                    let n = (*remaining)
                        .min(raw.len() as u64)
                        .min(out.remaining() as u64) as usize;
                    let start = out.filled().len();
                    out.put_slice(&raw[..n]);
                    if let Some(key) = key {
                        apply_mask(&mut out.filled_mut()[start..], *key, *offset);
                    }
                    *remaining -= n as u64;
                    *offset += n as u64;
                    self.raw_at += n;
                }
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let start = out.filled().len();
        loop {
            if let Err(e) = this.process(out) {
                // A read either hands out bytes or fails; these bytes were good.
                if out.filled().len() > start {
                    this.failed = Some(e);
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(e));
            }
            if out.filled().len() > start || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything buffered is handed out (or held: an incomplete header).
            let mut buf = ReadBuf::new(&mut this.raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return match this.state {
                    State::Head { have } if have > 0 => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "WebSocket stream ended inside a frame header",
                    ))),
                    _ => Poll::Ready(Ok(())),
                };
            }
            this.raw_at = 0;
            this.raw_len = n;
        }
    }
}

/// A parsed frame header.
struct FrameHead {
    /// Bytes of the header itself.
    len: usize,
    payload: u64,
    key: Option<[u8; 4]>,
    /// The last frame of its message (control frames always are).
    fin: bool,
    /// Ping, pong or close (opcode 8 and up).
    control: bool,
}

/// The frame in `header` once it is complete.
fn parse_header(header: &[u8]) -> io::Result<Option<FrameHead>> {
    if header.len() < 2 {
        return Ok(None);
    }
    let masked = header[1] & 0x80 != 0;
    let ext = match header[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let len = 2 + ext + if masked { 4 } else { 0 };
    if header.len() < len {
        return Ok(None);
    }
    let payload = match ext {
        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        8 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
        _ => u64::from(header[1] & 0x7f),
    };
    if payload >> 63 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "WebSocket frame length has its most significant bit set",
        ));
    }
    let key = masked.then(|| header[len - 4..len].try_into().expect("4 bytes"));
    Ok(Some(FrameHead {
        len,
        payload,
        key,
        fin: header[0] & 0x80 != 0,
        control: header[0] & 0x08 != 0,
    }))
}

/// XORs `data`, which starts `offset` bytes into a payload, with the frame's key.
fn apply_mask(data: &mut [u8], key: [u8; 4], offset: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[((offset + i as u64) % 4) as usize];
    }
}

/// The writing half of one direction: headers put back, payloads masked again.
pub struct FrameWriter<W> {
    inner: W,
    layout: Arc<Layout>,
    /// How far into the layout's first segment what was sent so far reaches (in bytes on
    /// the wire; an `End` is never partly done).
    front_at: u64,
    scratch: Vec<u8>,
}

impl<W> FrameWriter<W> {
    fn new(inner: W, layout: Arc<Layout>) -> Self {
        FrameWriter {
            inner,
            layout,
            front_at: 0,
            scratch: Vec::with_capacity(READ_SIZE + MAX_HEADER),
        }
    }

    /// What goes on the wire next, into `scratch`: the headers due and as much of `buf` as
    /// reaches the next message end (not sent on); the layout is not consumed yet. Returns
    /// true instead when `buf` starts with a message end (its newline is to be skipped).
    fn restore(&mut self, buf: &[u8]) -> bool {
        self.scratch.clear();
        let layout = self.layout.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = self.front_at;
        let mut rest = buf;
        for segment in layout.iter() {
            match segment {
                Segment::End => return self.scratch.is_empty(),
                Segment::Header { bytes, len } => {
                    self.scratch.extend_from_slice(&bytes[at as usize..*len]);
                }
                Segment::Verbatim(frame) => self.scratch.extend_from_slice(&frame[at as usize..]),
                Segment::Payload { .. } if rest.is_empty() => break,
                Segment::Payload { len, key } => {
                    let n = (len - at).min(rest.len() as u64) as usize;
                    let start = self.scratch.len();
                    self.scratch.extend_from_slice(&rest[..n]);
                    if let Some(key) = key {
                        apply_mask(&mut self.scratch[start..], *key, at);
                    }
                    rest = &rest[n..];
                    if at + (n as u64) < *len {
                        // The payload goes on in later bytes: nothing after it yet.
                        return false;
                    }
                }
            }
            at = 0;
        }
        // Past every frame the reader parsed (it never hands those bytes on): as they are.
        self.scratch.extend_from_slice(rest);
        false
    }

    /// `sent` bytes went out on the wire: drop the segments they finish. Returns how many
    /// bytes of the scanner's stream they carried.
    fn advance(&mut self, mut sent: u64) -> u64 {
        let mut layout = self.layout.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut scanned = 0;
        while let Some(front) = layout.front() {
            if matches!(front, Segment::End) {
                break;
            }
            let left = front.sent() - self.front_at;
            let n = sent.min(left);
            if front.scanned() > 0 {
                scanned += n;
            }
            sent -= n;
            if n < left {
                self.front_at += n;
                return scanned;
            }
            self.front_at = 0;
            layout.pop_front();
        }
        // Past the layout, one to one.
        scanned + sent
    }

    /// The message end `buf` starts with was taken: drop it.
    fn skip_end(&mut self) {
        let mut layout = self.layout.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(layout.front(), Some(Segment::End)) {
            layout.pop_front();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FrameWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.restore(buf) {
                this.skip_end();
                return Poll::Ready(Ok(1));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.scratch))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            // Only header bytes went out: go on until some of `buf` does.
            let scanned = this.advance(n as u64);
            if scanned > 0 {
                return Poll::Ready(Ok(scanned as usize));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame with FIN set (masked with `key` when given).
    fn frame(opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        fragment(opcode, payload, key, true)
    }

    /// A frame, the last of its message when `fin`.
    fn fragment(opcode: u8, payload: &[u8], key: Option<[u8; 4]>, fin: bool) -> Vec<u8> {
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(key) = key {
            f.extend_from_slice(&key);
        }
        let body = f.len();
        f.extend_from_slice(payload);
        if let Some(key) = key {
            apply_mask(&mut f[body..], key, 0);
        }
        f
    }

    /// `frames` through a reader fed `piece` bytes at a time, with `control` for control
    /// frames inside messages. Returns what it handed out and the layout it noted.
    async fn read(
        frames: Vec<u8>,
        piece: usize,
        control: ControlScan,
    ) -> io::Result<(Vec<u8>, Arc<Layout>)> {
        let layout = Arc::new(Layout::default());
        let (mut tx, rx) = tokio::io::duplex(piece);
        tokio::spawn(async move { tx.write_all(&frames).await });
        let mut plain = Vec::new();
        FrameReader::new(rx, layout.clone(), control, Direction::Up)
            .read_to_end(&mut plain)
            .await?;
        Ok((plain, layout))
    }

    /// `frames` read as [`read`] does (control frames inside messages have `SECRET` masked),
    /// `scan` on what the reader hands out, then a writer fed `piece` bytes at a time.
    /// Returns (what the scanner saw, output).
    async fn through(
        frames: Vec<u8>,
        piece: usize,
        scan: impl Fn(&mut Vec<u8>),
    ) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let control: ControlScan = Arc::new(|direction, payload| {
            assert_eq!(direction, Direction::Up);
            replace(payload, b"SECRET", b"******");
            Ok(())
        });
        let (mut plain, layout) = read(frames, piece, control).await?;
        let seen = plain.clone();
        scan(&mut plain);
        let mut writer = FrameWriter::new(Vec::new(), layout);
        for chunk in plain.chunks(piece) {
            writer.write_all(chunk).await?;
        }
        Ok((seen, writer.inner))
    }

    fn replace(data: &mut [u8], from: &[u8], to: &[u8]) {
        let mut at = 0;
        while let Some(i) = data[at..].windows(from.len()).position(|w| w == from) {
            data[at + i..at + i + to.len()].copy_from_slice(to);
            at += i + to.len();
        }
    }

    #[tokio::test]
    async fn client_payloads_are_scanned_in_clear_and_masked_again() {
        let big = [vec![b'a'; 70_000], b"SECRET".to_vec()].concat();
        let medium = [vec![b'b'; 300], b"token SECRET".to_vec()].concat();
        let payloads: [(u8, &[u8]); 4] = [(1, b"hello SECRET"), (9, b""), (2, &medium), (2, &big)];
        let input: Vec<u8> = payloads
            .iter()
            .flat_map(|(op, p)| frame(*op, p, Some(KEY)))
            .collect();
        for piece in [3, 7, 4096] {
            let (seen, out) = through(input.clone(), piece, |d| replace(d, b"SECRET", b"******"))
                .await
                .unwrap();
            // Only the payloads, each with a newline after it, for the scanner only.
            let payload_bytes: usize = payloads.iter().map(|(_, p)| p.len() + 1).sum();
            assert_eq!(seen.len(), payload_bytes);
            assert_eq!(
                seen.windows(6).filter(|w| w == b"SECRET").count(),
                3,
                "the scanner sees every payload unmasked"
            );
            let expected: Vec<u8> = payloads
                .iter()
                .flat_map(|(op, p)| {
                    let mut p = p.to_vec();
                    replace(&mut p, b"SECRET", b"******");
                    frame(*op, &p, Some(KEY))
                })
                .collect();
            assert!(out == expected, "piece {piece}: frames differ");
        }
    }

    #[tokio::test]
    async fn server_frames_pass_and_the_scanner_sees_only_payloads() {
        let input = [frame(1, b"x-SECRET", None), frame(2, &[0u8; 200], None)].concat();
        let (seen, out) = through(input.clone(), 5, |d| replace(d, b"SECRET", b"SE****"))
            .await
            .unwrap();
        let expected_seen = [&b"x-SECRET\n"[..], &[0u8; 200], b"\n"].concat();
        assert_eq!(seen, expected_seen);
        let expected = [frame(1, b"x-SE****", None), frame(2, &[0u8; 200], None)].concat();
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn a_secret_split_across_fragments_is_one_stretch_to_the_scanner() {
        let fragments = |parts: [&[u8]; 3]| -> Vec<u8> {
            [
                fragment(1, parts[0], Some(KEY), false),
                fragment(0, parts[1], Some(KEY), false),
                fragment(0, parts[2], Some(KEY), true),
            ]
            .concat()
        };
        // Control frames between fragments are masked apart: the message stays one stretch.
        // Between messages, a ping is scanned as a message of its own.
        let pinged = |parts: [&[u8]; 3]| -> Vec<u8> {
            [
                fragment(1, parts[0], Some(KEY), false),
                frame(9, b"", Some(KEY)),
                fragment(0, parts[1], Some(KEY), false),
                frame(10, b"SECRET", Some(KEY)),
                fragment(0, parts[2], Some(KEY), true),
                frame(9, b"SECRET", Some(KEY)),
            ]
            .concat()
        };
        let pinged_out = [
            fragment(1, b"token ***", Some(KEY), false),
            frame(9, b"", Some(KEY)),
            fragment(0, b"*", Some(KEY), false),
            frame(10, b"******", Some(KEY)),
            fragment(0, b"**!", Some(KEY), true),
            frame(9, b"******", Some(KEY)),
        ]
        .concat();
        let cases: [(Vec<u8>, &[u8], Vec<u8>); 2] = [
            (
                fragments([b"token SEC", b"R", b"ET!"]),
                b"token SECRET!\n",
                fragments([b"token ***", b"*", b"**!"]),
            ),
            (
                pinged([b"token SEC", b"R", b"ET!"]),
                b"token SECRET!\nSECRET\n",
                pinged_out,
            ),
        ];
        for (input, expected_seen, expected) in cases {
            for piece in [1, 3, 4096] {
                let (seen, out) =
                    through(input.clone(), piece, |d| replace(d, b"SECRET", b"******"))
                        .await
                        .unwrap();
                assert_eq!(seen, expected_seen, "piece {piece}");
                assert!(out == expected, "piece {piece}: frames differ");
            }
        }
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = through(huge, 64, |_| {}).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = through(vec![0x81, 0xfe, 0x01], 64, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // A control frame inside a message is held whole: it may not be long.
        let long_ping = [fragment(1, b"a", None, false), frame(9, &[b'p'; 126], None)].concat();
        let err = through(long_ping, 64, |_| {}).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_control_frame_that_cannot_be_scanned_ends_the_stream() {
        let failing: ControlScan = Arc::new(|_, _| Err(io::Error::other("scan failed")));
        let input = [
            fragment(1, b"first", Some(KEY), false),
            frame(9, b"ping", Some(KEY)),
            fragment(0, b"rest", Some(KEY), true),
        ]
        .concat();
        let Err(err) = read(input, 4096, failing).await else {
            panic!("the ping passed unscanned");
        };
        assert_eq!(err.to_string(), "scan failed");
    }
}

#[cfg(test)]
mod relay_tests {
    use std::path::Path;
    use std::time::Duration;

    use interceptor::detection::{Engine, SecretHasher, load_dir};
    use interceptor::relay_scan::{Counters, ScanRelay};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::test_net::pair;

    use super::*;

    const TOKEN: &str = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5";
    const KEY: &str = "AKIAQYLPMN5HHHFPZAM2";

    /// A scanning relay with every shipped rule between a workload and a server (sockets).
    async fn relayed() -> (TcpStream, TcpStream, tokio::task::JoinHandle<()>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
        let relay = Arc::new(ScanRelay {
            engine: Arc::new(Engine::compile(&load_dir(&dir).unwrap()).unwrap()),
            hasher: SecretHasher::with_salt([3; 16]),
            idle_flush: Duration::from_millis(20),
            selection: None,
        });
        let apart = relay.clone();
        let control: ControlScan = Arc::new(move |_, payload| {
            apart.mask_apart(payload).map_err(io::Error::other)?;
            Ok(())
        });
        let (workload, client) = pair().await;
        let (upstream, server) = pair().await;
        let relayed = tokio::spawn(async move {
            let (client, upstream) = framed(client, upstream, control);
            // It ends when the test closes both sides; how is not the point here.
            let _ = relay
                .relay(client, upstream, &Counters::default(), |_, _| {})
                .await;
        });
        (workload, server, relayed)
    }

    #[tokio::test]
    async fn a_token_split_across_fragments_is_masked_in_both() {
        let (mut workload, mut server, relayed) = relayed().await;
        let key = [9, 8, 7, 6];
        let text = format!("token {TOKEN} done");
        let (first, second) = text.split_at(20);
        let mut sent = Vec::new();
        // A ping between the fragments does not cut the token, and is masked apart.
        let ping = format!("key {KEY}");
        for (opcode, part) in [(0x01, first), (0x89, ping.as_str()), (0x80, second)] {
            let mut frame = vec![opcode, 0x80 | part.len() as u8];
            frame.extend_from_slice(&key);
            frame.extend(part.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
            workload.write_all(&frame).await.unwrap();
            sent.push(frame);
        }
        let mut plain = String::new();
        for frame in &sent {
            let mut got = vec![0u8; frame.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..6], frame[..6], "header and key as sent");
            plain.extend(
                got[6..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b ^ key[i % 4]) as char),
            );
        }
        assert!(
            plain.starts_with("token ghp_") && plain.ends_with(" done") && !plain.contains(TOKEN),
            "{plain}"
        );
        assert!(
            plain.contains("key AKIA") && !plain.contains(KEY),
            "the ping's payload is masked: {plain}"
        );
        drop((workload, server));
        relayed.await.unwrap();
    }

    #[tokio::test]
    async fn secrets_in_frames_are_masked_both_ways_by_the_scanning_relay() {
        let (mut workload, mut server, relayed) = relayed().await;
        let key = [1, 2, 3, 4];
        let up = format!("token {TOKEN}");
        let mut frame = vec![0x81, 0x80 | up.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(up.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
        workload.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got[..6], frame[..6], "header and key as sent");
        let plain: Vec<u8> = got[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        let plain = String::from_utf8(plain).unwrap();
        assert!(
            plain.starts_with("token ghp_") && !plain.contains(TOKEN),
            "{plain}"
        );

        let down = format!("key {KEY}");
        let mut frame = vec![0x81, down.len() as u8];
        frame.extend_from_slice(down.as_bytes());
        server.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        workload.read_exact(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[2..]).into_owned();
        assert!(
            text.starts_with("key AKIA") && !text.contains(KEY),
            "{text}"
        );
        drop((workload, server));
        relayed.await.unwrap();
    }
}
