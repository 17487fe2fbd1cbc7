//! A body's transform (secret masking, credential swapping) run on a task of its own.
//! Scanning is most of what a masked body costs; on the connection's task it would add to
//! every chunk's way from one peer to the other. Here the next chunk is transformed, on
//! another core, while the one before it is still being encrypted and sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::exchange::{Exchange, HttpBody, Side};
use super::hook::{BodyTransform, BoxError};

/// Transformed frames a task may have ready before the reader takes them: enough to keep
/// both sides busy, few enough to bound the memory per body.
const IN_FLIGHT: usize = 4;
/// Data is transformed and sent on in pieces of at most this many bytes.
const PIECE: usize = 64 * 1024;
/// How long a body may pause while its transform holds bytes back before they go anyway
/// (a streamed answer's last tokens; a client waiting for the end of a request line). What
/// goes is confirmed as if the body ended there, so a secret whose rest comes later would go
/// in part: the pause must outlast the gaps between a model's tokens (10-50 ms from hosted
/// APIs, up to ~200 ms from a local model on a CPU), while only a tail that could still be a
/// secret ever waits for it.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_millis(250);

type FrameResult = Result<Frame<Bytes>, BoxError>;
/// The transform, shared so that whichever side ends the body records what it kept.
type Slot = Arc<Mutex<Option<Box<dyn BodyTransform>>>>;

pub(super) struct Pipeline {
    frames: mpsc::Receiver<FrameResult>,
    slot: Slot,
    task: JoinHandle<()>,
    /// The task's end has been seen.
    ended: bool,
    exchange: Arc<Exchange>,
    side: Side,
    /// Bytes still to come when the transform keeps the body's known length.
    remaining: Option<u64>,
}

impl Pipeline {
    /// Starts transforming `inner` (on the current Tokio runtime).
    pub(super) fn start(
        inner: HttpBody,
        transform: Box<dyn BodyTransform>,
        exchange: Arc<Exchange>,
        side: Side,
    ) -> Pipeline {
        let remaining = if transform.keeps_length() {
            hyper::body::Body::size_hint(&inner).exact()
        } else {
            None
        };
        let slot: Slot = Arc::new(Mutex::new(Some(transform)));
        let (tx, frames) = mpsc::channel(IN_FLIGHT);
        let task = tokio::spawn(run(inner, slot.clone(), exchange.clone(), side, tx));
        Pipeline {
            frames,
            slot,
            task,
            ended: false,
            exchange,
            side,
            remaining,
        }
    }

    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(item) = ready!(self.frames.poll_recv(cx)) else {
            // The task is gone: its work done, or a panic in the transform, which must not
            // pass for the body's end (a chunked body would look complete, cut short).
            let ended = ready!(Pin::new(&mut self.task).poll(cx));
            self.ended = true;
            return Poll::Ready(
                ended
                    .err()
                    .map(|e| Err(format!("body transform: {e}").into())),
            );
        };
        if let (Ok(frame), Some(left)) = (&item, &mut self.remaining)
            && let Some(data) = frame.data_ref()
        {
            *left = left.saturating_sub(data.len() as u64);
        }
        Poll::Ready(Some(item))
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        // A transform that may change the length leaves it unknown.
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for Pipeline {
    /// A body cut short: the task stops, and what the transform recorded is kept.
    fn drop(&mut self) {
        self.task.abort();
        let taken = lock(&self.slot).take();
        if let Some(mut t) = taken {
            self.exchange.record_body(self.side, t.as_mut());
        }
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Box<dyn BodyTransform>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame from the body being transformed.
enum Input {
    Data(Bytes),
    /// The body paused while the transform holds bytes back.
    Idle,
    /// Trailers, or a frame of another kind: either ends the data.
    Last(Frame<Bytes>),
    End,
    Failed(BoxError),
}

/// The task: reads `inner`, transforms each frame, sends the results in order.
async fn run(
    mut inner: HttpBody,
    slot: Slot,
    exchange: Arc<Exchange>,
    side: Side,
    tx: mpsc::Sender<FrameResult>,
) {
    loop {
        let next = if lock(&slot).as_ref().is_some_and(|t| t.holds()) {
            // `frame()` is cancel safe: a pause loses nothing.
            match tokio::time::timeout(IDLE_RELEASE, inner.frame()).await {
                Ok(next) => next,
                Err(_) => {
                    if !transform_and_send(&slot, Input::Idle, &exchange, side, &tx).await {
                        return;
                    }
                    continue;
                }
            }
        } else {
            inner.frame().await
        };
        let input = match next {
            None => Input::End,
            Some(Err(e)) => Input::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Input::Data(data),
                Err(frame) => Input::Last(frame),
            },
        };
        let Input::Data(mut data) = input else {
            transform_and_send(&slot, input, &exchange, side, &tx).await;
            return;
        };
        // A large frame (a read buffer grows to hundreds of KiB) goes on in pieces, so that
        // sending one overlaps with transforming the next.
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(PIECE));
            if !transform_and_send(&slot, Input::Data(piece), &exchange, side, &tx).await {
                return;
            }
        }
    }
}

/// Transforms one input and sends what it became; false once the body is over (ended,
/// failed, or its reader gone).
async fn transform_and_send(
    slot: &Slot,
    input: Input,
    exchange: &Exchange,
    side: Side,
    tx: &mpsc::Sender<FrameResult>,
) -> bool {
    // The lock is held only while the transform runs, never across an await.
    let (out, ended) = step(&mut lock(slot), input, exchange, side);
    for item in out {
        if tx.send(item).await.is_err() {
            return false;
        }
    }
    !ended
}

/// What one input becomes: the frames to send on, and whether the body ended.
fn step(
    slot: &mut Option<Box<dyn BodyTransform>>,
    input: Input,
    exchange: &Exchange,
    side: Side,
) -> (Vec<FrameResult>, bool) {
    let Some(t) = slot.as_mut() else {
        return (Vec::new(), true);
    };
    match input {
        Input::Data(data) => {
            exchange
                .body_bytes(side)
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            match t.chunk(data) {
                Ok(out) => (vec![Ok(Frame::data(out))], false),
                Err(e) => (vec![Err(e)], true),
            }
        }
        // Trailers (which the transform may rewrite: masking) go on after the data's tail.
        Input::Last(frame) => {
            let last = match frame.into_trailers() {
                Ok(mut trailers) => match t.trailers(&mut trailers) {
                    Ok(()) => Frame::trailers(trailers),
                    Err(e) => return (vec![Err(e)], true),
                },
                Err(other) => other,
            };
            let mut out = finish(slot, exchange, side);
            if !out.iter().any(Result::is_err) {
                out.push(Ok(last));
            }
            (out, true)
        }
        Input::Idle => match t.idle() {
            Ok(out) if out.is_empty() => (Vec::new(), false),
            Ok(out) => (vec![Ok(Frame::data(out))], false),
            Err(e) => (vec![Err(e)], true),
        },
        Input::End => (finish(slot, exchange, side), true),
        Input::Failed(e) => (vec![Err(e)], true),
    }
}

/// The transform's held-back tail, once, at the end of the data; what it recorded goes to
/// the exchange.
fn finish(
    slot: &mut Option<Box<dyn BodyTransform>>,
    exchange: &Exchange,
    side: Side,
) -> Vec<FrameResult> {
    let Some(mut t) = slot.take() else {
        return Vec::new();
    };
    let tail = t.finish();
    exchange.record_body(side, t.as_mut());
    match tail {
        Ok(tail) if tail.is_empty() => Vec::new(),
        Ok(tail) => vec![Ok(Frame::data(tail))],
        Err(e) => vec![Err(e)],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http::HeaderMap;

    use super::super::exchange::Metered;
    use super::super::hook::{ExchangeInfo, RecordedBody};
    use super::*;
    use crate::sessions::HttpExchange;

    /// Frames given in advance; then the end, or (`stall`) nothing ever again.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        stall: bool,
    }

    impl Frames {
        /// One data frame, then the end or a stall.
        fn data(data: &'static [u8], stall: bool) -> Frames {
            Frames {
                frames: VecDeque::from([Frame::data(Bytes::from_static(data))]),
                stall,
            }
        }
    }

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<FrameResult>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    /// Upper-cases the data, holding back each chunk's last byte until the next (or the
    /// end); notes the size of every chunk it is given.
    struct Shout {
        held: Option<u8>,
        chunks: Arc<Mutex<Vec<usize>>>,
    }

    impl BodyTransform for Shout {
        fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
            self.chunks.lock().unwrap().push(data.len());
            let mut out: Vec<u8> = self.held.take().into_iter().collect();
            out.extend(data.to_ascii_uppercase());
            self.held = out.pop();
            Ok(out.into())
        }

        fn finish(&mut self) -> Result<Bytes, BoxError> {
            Ok(self.held.take().into_iter().collect())
        }

        fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), BoxError> {
            trailers.insert("x-shouted", "yes".parse().unwrap());
            Ok(())
        }

        fn recorded(&mut self) -> Option<RecordedBody> {
            Some(RecordedBody::new(b"kept", 64, 4))
        }
    }

    fn exchange() -> (Arc<Exchange>, Arc<Mutex<Vec<HttpExchange>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let info = ExchangeInfo::for_tests();
        let head = http::Request::builder()
            .uri("https://127.0.0.2/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let recorder = Arc::new(move |e| sink.lock().unwrap().push(e));
        (Arc::new(Exchange::new(recorder, &info, &head)), records)
    }

    fn metered(
        frames: Frames,
        exchange: &Arc<Exchange>,
        t: impl BodyTransform + 'static,
    ) -> Metered {
        Metered::new(
            frames.boxed_unsync(),
            exchange.clone(),
            Side::Response,
            Some(Box::new(t)),
        )
    }

    fn shout(chunks: &Arc<Mutex<Vec<usize>>>) -> Shout {
        Shout {
            held: None,
            chunks: chunks.clone(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_frames_go_in_pieces_in_order_and_the_tail_before_the_trailers() {
        let big: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-check", "1".parse().unwrap());
        let frames = Frames {
            frames: VecDeque::from([
                Frame::data(Bytes::from(big.clone())),
                Frame::data(Bytes::from_static(b"xyz")),
                Frame::trailers(trailers),
            ]),
            stall: false,
        };
        let (exchange, records) = exchange();
        let chunks = Arc::default();
        let mut body = metered(frames, &exchange, shout(&chunks));
        let (mut data, mut last) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(last.is_none(), "nothing after the trailers");
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => last = Some(f.into_trailers().unwrap()),
            }
        }
        let expected = [big.to_ascii_uppercase(), b"XYZ".to_vec()].concat();
        assert_eq!(data, expected, "every byte, in order, the held one last");
        let last = last.expect("the trailers");
        assert_eq!(last["x-shouted"], "yes");
        assert_eq!(last["x-check"], "1");
        let chunks = chunks.lock().unwrap().clone();
        assert_eq!(chunks, [PIECE, PIECE, PIECE, 200 * 1024 - 3 * PIECE, 3]);
        drop(body);
        drop(exchange);
        let records = records.lock().unwrap();
        assert_eq!(records[0].response_body_bytes, expected.len() as u64);
        assert_eq!(records[0].response_body.as_ref().unwrap().data, "kept");
    }

    /// A transform with a bug.
    struct Panics;

    impl BodyTransform for Panics {
        fn chunk(&mut self, _: Bytes) -> Result<Bytes, BoxError> {
            panic!("a bug in a transform");
        }

        fn finish(&mut self) -> Result<Bytes, BoxError> {
            Ok(Bytes::new())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transform_that_panics_ends_its_body_with_an_error_not_a_clean_end() {
        let frames = Frames::data(b"data", false);
        let (exchange, _) = exchange();
        let mut body = metered(frames, &exchange, Panics);
        let error = body
            .frame()
            .await
            .expect("an error, not the end")
            .unwrap_err();
        assert!(error.to_string().contains("body transform"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_dropped_midway_stops_its_task_and_keeps_its_record() {
        let frames = Frames::data(b"first", true);
        let (exchange, records) = exchange();
        let chunks = Arc::default();
        let mut body = metered(frames, &exchange, shout(&chunks));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"FIRS");
        drop(body);
        // The task held the exchange; aborted, it lets go, and the exchange is recorded.
        drop(exchange);
        for _ in 0..100 {
            if !records.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1, "recorded once the task is gone");
        assert_eq!(records[0].response_body.as_ref().unwrap().data, "kept");
        assert_eq!(records[0].response_body_bytes, 5);
    }
}
