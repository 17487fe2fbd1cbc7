use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use interceptor_ebpf::{CidrKey, ConnKey, MAX_PORTS};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};

use super::{
    CidrRule, Kernel, KernelEnrollment, KernelError,
    rules::{cidr_key, port_set, trie_entries},
};

// ---- pure parts ----

fn key_of(id: u32, net: &str) -> (u32, CidrKey) {
    let k = cidr_key(id, &net.parse().unwrap());
    (k.prefix_len(), k.data())
}

#[test]
fn kernel_cidr_keys() {
    let (prefix, data) = key_of(0x0102_0304, "10.1.2.3/8");
    assert_eq!(prefix, 32 + 96 + 8);
    assert_eq!(data.enrollment, [1, 2, 3, 4]);
    let mut mapped = [0u8; 16];
    mapped[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 0]);
    assert_eq!(data.addr, mapped, "v4-mapped, host bits cleared");

    let (prefix, data) = key_of(7, "2001:db8::1/32");
    assert_eq!(prefix, 32 + 32);
    assert_eq!(&data.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    assert!(data.addr[4..].iter().all(|b| *b == 0));

    assert_eq!(key_of(7, "::/0").0, 32, "IPv6 /0 is everything");
    assert_eq!(
        key_of(7, "0.0.0.0/0").0,
        128,
        "IPv4 /0 is every v4-mapped address"
    );
    assert_eq!(key_of(7, "127.0.0.9/32").0, 160);
}

#[test]
fn kernel_port_sets() {
    let set = port_set(&[443, 80, 443]).unwrap();
    assert_eq!(set.count, 2);
    assert!(set.contains(80) && set.contains(443) && !set.contains(22));
    assert!(port_set(&[]).unwrap().contains(1), "empty = every port");

    let many: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
    assert!(matches!(
        port_set(&many),
        Err(KernelError::TooManyPorts { count, .. }) if count == MAX_PORTS + 1
    ));
}

#[test]
fn kernel_trie_entries() {
    let rule = |net: &str, ports: &[u16]| CidrRule {
        net: net.parse().unwrap(),
        ports: ports.to_vec(),
    };
    // Empty SELECT = everything; empty DENY = nothing.
    let all = trie_entries(3, &[], true).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0.prefix_len(), 32);
    assert_eq!(all[0].1.count, 0);
    assert!(trie_entries(3, &[], false).unwrap().is_empty());

    // Same network twice: ports merge; an empty list means every port and wins.
    let merged = trie_entries(
        3,
        &[rule("10.0.0.0/8", &[80]), rule("10.1.0.0/8", &[443])],
        true,
    )
    .unwrap();
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].1.count, 2);
    let any = trie_entries(
        3,
        &[rule("10.0.0.0/8", &[80]), rule("10.0.0.0/8", &[])],
        true,
    )
    .unwrap();
    assert_eq!(any[0].1.count, 0);

    let too_many: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
    let Err(err) = trie_entries(3, &[rule("10.0.0.0/8", &too_many)], true) else {
        panic!("too many ports accepted");
    };
    assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
}

#[test]
fn kernel_handles_are_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<super::OriginalDstTable>();
    fn send<T: Send>() {}
    send::<super::DeniedEvents>();
    send::<Kernel>();
}

// ---- in the kernel (root) ----

const STEP: Duration = Duration::from_secs(5);

/// The cgroup2 mount point, from /proc/mounts.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount")
}

/// Everything the test set up, torn down even when an assertion fails.
struct Guard {
    cgroup: PathBuf,
    pin_dir: PathBuf,
    children: Vec<Child>,
    kernel: Option<Kernel>,
    enrollment: Option<KernelEnrollment>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill(); // SIGKILL to this child's pid
            let _ = child.wait();
        }
        if let (Some(kernel), Some(e)) = (self.kernel.as_mut(), self.enrollment.as_ref()) {
            let _ = kernel.unenroll(e);
        }
        self.kernel = None;
        let _ = Kernel::remove_pins(&self.pin_dir);
        for _ in 0..50 {
            match std::fs::remove_dir(&self.cgroup) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break,
            }
        }
    }
}

/// Starts `python3 -c script args…`, moved into `cgroup` first when given, with its stdout
/// lines forwarded to the returned channel. Its stdin stays open: it may wait on it.
fn spawn_python(
    script: &str,
    args: &[String],
    cgroup: Option<&Path>,
) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(cgroup) = cgroup {
        let procs = CString::new(
            cgroup
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: only async-signal-safe calls (open/write/close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("spawning python3");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next line of the child's output, split in words.
async fn line(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let l = timeout(STEP, rx.recv())
        .await
        .expect("child output timed out")
        .expect("child exited early (see its stderr)");
    l.split_whitespace().map(String::from).collect()
}

fn key_for(peer: SocketAddr, stream: &tokio::net::TcpStream) -> ConnKey {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_NETNS_COOKIE: {}",
        std::io::Error::last_os_error()
    );
    let addr = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ConnKey {
        netns_cookie: cookie,
        addr: addr.octets(),
        port: peer.port(),
        _pad: [0; 6],
    }
}

fn mapped(a: [u8; 4]) -> [u8; 16] {
    Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

const MARK: u32 = 0x1e1e;

/// Listeners on 127.0.0.1 and [::1] with the same (free) port, carrying `mark` (0: none).
async fn proxy_listeners(mark: u32) -> (TcpListener, TcpListener) {
    let listen = |addr: SocketAddr| crate::redirect::Namespace::Host.listen(addr, mark);
    for _ in 0..20 {
        let v4 = listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = listen(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)).await {
            return (v4, v6);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

const ENROLLED_CLIENT: &str = r#"
import errno, socket, sys
port = int(sys.argv[1])
def out(*a): print(*a, flush=True)
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.connect(("127.0.0.2", port)); out("c4", s4.getsockname()[1])
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.connect(("::ffff:127.0.0.2", port)); out("c6", s6.getsockname()[1])
n6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
n6.connect(("::1", port)); out("n6", n6.getsockname()[1])
sd = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sd.connect(("127.0.0.1", int(sys.argv[3]))); out("direct", sd.getsockname()[1])
sm = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sm.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[2]))
sm.connect(("127.0.0.2", port)); out("mark", sm.getsockname()[1])
s9 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s9.connect(("127.0.0.9", port)); out("deny", "connected")
except OSError as e:
    out("deny", errno.errorcode.get(e.errno, e.errno))
sc = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sc.connect(("127.0.0.2", port)); out("close", sc.getsockname()[1])
sc.recv(1); sc.close(); out("closed")
sys.stdin.read()
"#;

/// Dials a redirected destination three ways (IPv4, v4-mapped IPv6, IPv6) and says how each
/// connect ended.
const NO_PROXY_CLIENT: &str = r#"
import errno, socket, sys
port = int(sys.argv[1])
for name, family, host in [("c4", socket.AF_INET, "127.0.0.2"),
                           ("c6", socket.AF_INET6, "::ffff:127.0.0.2"),
                           ("n6", socket.AF_INET6, "::1")]:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.connect((host, port)); print(name, "connected", flush=True)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno), flush=True)
"#;

const OUTSIDE_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.2", int(sys.argv[1]))); print("c4", s.getsockname()[1], flush=True)
sys.stdin.read()
"#;

#[tokio::test]
async fn kernel_redirects_and_denies_in_enrolled_cgroup() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Shows the programs' aya-log lines (through the log → tracing bridge) with --nocapture.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let pid = std::process::id();
    let mut g = Guard {
        cgroup: cgroup2_mount().join(format!("interceptor-ktest-{pid}")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/interceptor-ktest-{pid}")),
        children: Vec::new(),
        kernel: None,
        enrollment: None,
    };
    std::fs::create_dir(&g.cgroup).unwrap();
    let cgroup_id = std::fs::metadata(&g.cgroup).unwrap().ino();

    // The proxy (on 127.0.0.1 and ::1, same port), and the "real" server the original
    // destination points at.
    let (proxy, proxy6) = proxy_listeners(MARK).await;
    let proxy_port = proxy.local_addr().unwrap().port();
    let real = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = real.local_addr().unwrap().port();

    let config = interceptor_ebpf::Config {
        daemon_tgid: pid,
        bypass_mark: MARK,
    };
    let kernel = g.kernel.insert(Kernel::load(&g.pin_dir, config).unwrap());
    let e = KernelEnrollment {
        id: 7,
        cgroup_path: g.cgroup.clone(),
        cgroup_id,
        proxy_port,
        include_loopback: true,
        select: Vec::new(),
        deny: vec![CidrRule {
            net: "127.0.0.9/32".parse().unwrap(),
            ports: Vec::new(),
        }],
    };
    g.enrollment = Some(e.clone());
    let ids = kernel.enroll(&e).unwrap();
    assert_eq!(ids, kernel.program_ids().unwrap());
    assert_eq!(
        kernel.enroll(&e).unwrap(),
        ids,
        "enrolling again reuses the links"
    );
    let table = kernel.original_dst();
    let mut denied = kernel.take_denied_events().unwrap();
    assert!(matches!(
        kernel.take_denied_events(),
        Err(KernelError::DeniedEventsTaken)
    ));

    let args = [port.to_string(), MARK.to_string(), proxy_port.to_string()];
    let (child, mut out) = spawn_python(ENROLLED_CLIENT, &args, Some(&g.cgroup));
    let child_pid = child.id();
    g.children.push(child);

    // connect4 and connect6 (v4-mapped) both land on the proxy with their records.
    let c4 = line(&mut out).await;
    let c6 = line(&mut out).await;
    assert_eq!((c4[0].as_str(), c6[0].as_str()), ("c4", "c6"));
    for _ in 0..2 {
        let (stream, peer) = timeout(STEP, proxy.accept()).await.unwrap().unwrap();
        let family = if peer.port().to_string() == c4[1] {
            libc::AF_INET
        } else {
            assert_eq!(peer.port().to_string(), c6[1], "unexpected client {peer}");
            libc::AF_INET6
        };
        let key = key_for(peer, &stream);
        let info = table
            .take(&key)
            .expect("record for the redirected connection");
        assert_eq!(info.dst_addr, mapped([127, 0, 0, 2]));
        assert_eq!(info.dst_port, port);
        assert_eq!(i32::from(info.family), family);
        assert_eq!(info.tgid, child_pid);
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
        assert_eq!(info.enrollment, 7);
        assert_eq!(info.cgroup_id, cgroup_id);
        assert!(info.comm.starts_with(b"python3"), "{:?}", info.comm);
        assert!(table.take(&key).is_none(), "take removes the record");
    }

    // Native IPv6 goes to [::1]:proxy_port.
    let n6 = line(&mut out).await;
    assert_eq!(n6[0], "n6");
    let (stream, peer) = timeout(STEP, proxy6.accept()).await.unwrap().unwrap();
    assert_eq!(peer.port().to_string(), n6[1]);
    let info = table
        .take(&key_for(peer, &stream))
        .expect("record for [::1]");
    assert_eq!(info.dst_addr, std::net::Ipv6Addr::LOCALHOST.octets());
    assert_eq!(
        (info.dst_port, i32::from(info.family)),
        (port, libc::AF_INET6)
    );

    // Dialling the proxy itself is left alone (no record).
    let d = line(&mut out).await;
    assert_eq!(d[0], "direct");
    let (stream, peer) = timeout(STEP, proxy.accept()).await.unwrap().unwrap();
    assert_eq!(peer.port().to_string(), d[1]);
    assert!(table.take(&key_for(peer, &stream)).is_none());

    // A socket with the bypass mark is left alone.
    let m = line(&mut out).await;
    assert_eq!(m[0], "mark");
    let (_marked, peer) = timeout(STEP, real.accept()).await.unwrap().unwrap();
    assert_eq!(peer.port().to_string(), m[1]);

    // A denied destination: EPERM, and an event.
    assert_eq!(line(&mut out).await, ["deny", "EPERM"]);
    let ev = timeout(STEP, denied.next()).await.unwrap().unwrap();
    assert_eq!(ev.dst_addr, mapped([127, 0, 0, 9]));
    assert_eq!((ev.dst_port, ev.tgid, ev.enrollment), (port, child_pid, 7));

    // The record goes away when the connection closes.
    let c = line(&mut out).await;
    assert_eq!(c[0], "close");
    let (stream, peer) = timeout(STEP, proxy.accept()).await.unwrap().unwrap();
    assert_eq!(peer.port().to_string(), c[1]);
    let key = key_for(peer, &stream);
    let peek = |key: &ConnKey| table.peek(key).is_some();
    assert!(peek(&key), "record present while the connection is open");
    drop(stream);
    assert_eq!(line(&mut out).await, ["closed"]);
    let mut gone = false;
    for _ in 0..50 {
        if !peek(&key) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "record removed on close");

    // A process outside the cgroup reaches the real destination.
    let (child, mut out) = spawn_python(OUTSIDE_CLIENT, &[port.to_string()], None);
    g.children.push(child);
    let c = line(&mut out).await;
    let (_stream, peer) = timeout(STEP, real.accept()).await.unwrap().unwrap();
    assert_eq!(peer.port().to_string(), c[1]);
    assert!(
        timeout(Duration::from_millis(200), proxy.accept())
            .await
            .is_err(),
        "nothing reached the proxy"
    );

    // The proxy port taken by a listener without the daemon's mark (someone else's, while the
    // daemon is down): every redirected connect fails closed and is counted; nothing arrives.
    drop((proxy, proxy6));
    let at = |ip: IpAddr| SocketAddr::new(ip, proxy_port);
    let listen = |ip: IpAddr| crate::redirect::Namespace::Host.listen(at(ip), 0);
    let other = listen(Ipv4Addr::LOCALHOST.into()).await.unwrap();
    let other6 = listen(Ipv6Addr::LOCALHOST.into()).await.unwrap();
    let no_proxy = kernel.no_proxy();
    let before = no_proxy.get().unwrap();
    let (child, mut out) = spawn_python(NO_PROXY_CLIENT, &[port.to_string()], Some(&g.cgroup));
    g.children.push(child);
    for name in ["c4", "c6", "n6"] {
        assert_eq!(line(&mut out).await, [name, "EPERM"]);
    }
    assert_eq!(no_proxy.get().unwrap(), before + 3);
    for l in [&other, &other6] {
        assert!(
            timeout(Duration::from_millis(200), l.accept())
                .await
                .is_err(),
            "a listener without the mark got a redirected connection"
        );
    }

    // A restarted daemon keeps the pinned links (never detached: no connect goes unhandled)
    // but switches them to its own programs, and can detach them.
    let pins: Vec<PathBuf> = ["connect4", "connect6", "sock_ops"]
        .iter()
        .map(|n| g.pin_dir.join("links/7").join(n))
        .collect();
    // A pin replaced by another would be a new bpffs inode.
    let inodes = || -> Vec<u64> {
        pins.iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect()
    };
    let old_inodes = inodes();
    g.kernel = None;
    let kernel = g.kernel.insert(Kernel::load(&g.pin_dir, config).unwrap());
    let new_ids = kernel.program_ids().unwrap();
    assert_ne!(new_ids, ids, "a new load has new programs");
    assert_eq!(
        kernel.enroll(&e).unwrap(),
        new_ids,
        "the links run the new programs"
    );
    for (pin, id) in pins.iter().zip(&new_ids) {
        let info = super::sys::pinned_cgroup_link_info(pin).unwrap();
        assert_eq!((info.prog_id, info.cgroup_id), (*id, cgroup_id));
    }
    assert_eq!(inodes(), old_inodes, "the same links");
    kernel.unenroll(&e).unwrap();
    assert!(!g.pin_dir.join("links/7").exists());
    g.enrollment = None;
}
