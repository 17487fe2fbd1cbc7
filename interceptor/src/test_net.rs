//! Real loopback sockets for unit tests.

use tokio::net::{TcpListener, TcpStream};

/// The two ends of one TCP connection on loopback: (connecting end, accepted end).
pub async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap());
    let (a, b) = tokio::join!(a, l.accept());
    (a.unwrap(), b.unwrap().0)
}
