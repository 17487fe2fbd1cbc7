//! A request body that hooks can look into before it goes upstream: [`BodyPreview`] sits in
//! the request head's extensions while the hooks run; one that wants the first bytes (the
//! policy hook, to show an approver what a held request would send) reads them into a
//! bounded buffer. Afterwards [`BodyPreview::into_body`] replays what was read, then the rest,
//! so the upstream gets the whole body, frame for frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::exchange::HttpBody;
use super::hook::BoxError;

/// The request body while the hooks run; cheap to clone (one shared buffer).
#[derive(Clone)]
pub struct BodyPreview(Arc<Mutex<Option<Buffered>>>);

struct Buffered {
    /// Frames read for a preview, in order, not yet forwarded.
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    len: usize,
    /// Where reading stopped with an error; replayed after `frames`.
    error: Option<BoxError>,
    /// The unread body; None once it ended.
    rest: Option<HttpBody>,
}

impl BodyPreview {
    pub fn new(body: HttpBody) -> Self {
        BodyPreview(Arc::new(Mutex::new(Some(Buffered {
            frames: VecDeque::new(),
            len: 0,
            error: None,
            rest: Some(body),
        }))))
    }

    /// At least the first `max` bytes of the body (fewer if it is shorter, or if no more
    /// arrived within `wait`; a little more when a frame goes past `max`), and whether that
    /// is the whole body. What is read stays buffered for [`into_body`](Self::into_body).
    pub async fn first_bytes(&self, max: usize, wait: Duration) -> (Bytes, bool) {
        let Some(mut b) = self.take() else {
            return (Bytes::new(), false);
        };
        let deadline = tokio::time::Instant::now() + wait;
        while b.len < max {
            let Some(rest) = b.rest.as_mut() else { break };
            match tokio::time::timeout_at(deadline, rest.frame()).await {
                Err(_) => break,
                Ok(None) => b.rest = None,
                Ok(Some(Err(e))) => {
                    b.error = Some(e);
                    b.rest = None;
                }
                Ok(Some(Ok(frame))) => {
                    b.len += frame.data_ref().map_or(0, Bytes::len);
                    b.frames.push_back(frame);
                }
            }
        }
        let mut data = BytesMut::with_capacity(b.len);
        b.frames
            .iter()
            .filter_map(Frame::data_ref)
            .for_each(|d| data.extend_from_slice(d));
        let whole = b.rest.is_none() && b.error.is_none();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        (data.freeze(), whole)
    }

    /// The whole body: what a preview read, then the rest.
    pub fn into_body(self) -> HttpBody {
        match self.take() {
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            Some(b) if b.frames.is_empty() && b.error.is_none() => b.rest.unwrap_or_else(|| {
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }),
            Some(b) => Replay(b).boxed_unsync(),
        }
    }

    fn take(&self) -> Option<Buffered> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Buffered frames first, then the rest of the body.
struct Replay(Buffered);

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let b = &mut self.get_mut().0;
        if let Some(frame) = b.frames.pop_front() {
            b.len -= frame.data_ref().map_or(0, Bytes::len);
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = b.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match b.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let b = &self.0;
        b.frames.is_empty() && b.error.is_none() && b.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let b = &self.0;
        let rest = b
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let buffered = b.len as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A body whose chunks come from a channel (ends when the sender is dropped).
    struct Chunks(mpsc::UnboundedReceiver<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|c| c.map(|c| Ok(Frame::data(Bytes::from_static(c)))))
        }
    }

    fn body(chunks: &[&'static [u8]]) -> (mpsc::UnboundedSender<&'static [u8]>, HttpBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        chunks.iter().for_each(|c| tx.send(*c).unwrap());
        (tx, Chunks(rx).boxed_unsync())
    }

    #[tokio::test]
    async fn a_preview_reads_about_max_bytes_and_the_body_still_has_them_all() {
        let (tx, b) = body(&[b"abc", b"def", b"ghi", b"jkl"]);
        drop(tx);
        let preview = BodyPreview::new(b);
        let first = preview.first_bytes(5, Duration::from_secs(5)).await;
        // Whole frames: the second one goes past 5.
        assert_eq!((&first.0[..], first.1), (&b"abcdef"[..], false));
        // Asking again gives the same bytes and reads no further.
        let again = preview.first_bytes(5, Duration::from_secs(5)).await;
        assert_eq!(again, first);
        let whole = preview.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"abcdefghijkl");
    }

    #[tokio::test]
    async fn a_short_body_is_read_to_its_end() {
        let (tx, b) = body(&[b"tiny"]);
        drop(tx);
        let preview = BodyPreview::new(b);
        let (data, whole) = preview.first_bytes(4096, Duration::from_secs(5)).await;
        assert_eq!((&data[..], whole), (&b"tiny"[..], true));
        let whole = preview.into_body();
        assert_eq!(whole.size_hint().exact(), Some(4));
        assert_eq!(&whole.collect().await.unwrap().to_bytes()[..], b"tiny");
    }

    #[tokio::test]
    async fn a_body_that_stalls_gives_what_arrived_by_the_deadline() {
        let (tx, b) = body(&[b"early"]);
        let preview = BodyPreview::new(b);
        let (first, whole) = preview.first_bytes(4096, Duration::from_millis(50)).await;
        assert_eq!((&first[..], whole), (&b"early"[..], false));
        tx.send(b"-late").unwrap();
        drop(tx);
        let whole = preview.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"early-late");
    }
}
