//! Reads whose buffer exists only while there are bytes to read. A relay that kept a read
//! buffer per direction for the life of a connection would pin it while the connection sits
//! idle, which is what most connections do most of the time. Here the buffer is allocated in
//! the poll that finds bytes, and freed by the caller once they are passed on: an idle
//! connection holds none.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// The next bytes from `reader`, at most `limit` (empty at its end), in a buffer of their own.
pub async fn read_burst<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    poll_fn(|cx| poll_burst(Pin::new(&mut *reader), cx, limit)).await
}

/// One poll: a pending read drops its buffer again (a reader that is not ready has written
/// nothing into it).
fn poll_burst<R: AsyncRead>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<io::Result<Vec<u8>>> {
    let mut buf = Vec::with_capacity(limit);
    let mut read = ReadBuf::uninit(&mut buf.spare_capacity_mut()[..limit]);
    ready!(reader.poll_read(cx, &mut read))?;
    let n = read.filled().len();
    // SAFETY: `filled` is the part of the buffer the reader initialised.
    unsafe { buf.set_len(n) };
    Poll::Ready(Ok(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_what_is_there_up_to_the_limit_then_the_end() {
        let (mut writer, mut reader) = tokio::io::duplex(64);
        writer.write_all(b"hello world").await.unwrap();
        assert_eq!(read_burst(&mut reader, 5).await.unwrap(), b"hello");
        assert_eq!(read_burst(&mut reader, 64).await.unwrap(), b" world");
        drop(writer);
        assert!(read_burst(&mut reader, 64).await.unwrap().is_empty());
    }
}
