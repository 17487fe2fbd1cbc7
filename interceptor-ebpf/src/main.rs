//! The eBPF programs. Built for `bpfel-unknown-none` by `interceptor/build.rs` (aya-build);
//! on the host this file compiles to an empty binary so that workspace-wide checks work.
//!
//! - `connect4` / `connect6` (cgroup/connect4, cgroup/connect6): for TCP sockets of an enrolled
//!   cgroup, deny listed destinations (EPERM) or rewrite the destination to the local proxy,
//!   recording the original destination and the caller in `PENDING` (by socket cookie). The
//!   rewrite happens only when the socket listening at the proxy address is the daemon's (it
//!   carries the daemon's `SO_MARK`); otherwise the connect fails closed (EPERM) and is counted
//!   in `NO_PROXY`, so that nobody else can take the port while the daemon is down.
//! - `sock_ops`: once the redirected connection is established, re-key that record by the
//!   client's source address in `ORIGINAL_DST` (what the proxy sees on accept), and drop it
//!   when the socket closes.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use core::ptr::{read_volatile, write_volatile};

    use aya_ebpf::{
        EbpfContext as _,
        bindings::{
            BPF_F_CURRENT_NETNS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
            BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, BPF_TCP_LISTEN, bpf_sock_tuple,
        },
        helpers::generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_lookup_tcp, bpf_sk_release,
        },
        macros::{cgroup_sock_addr, map, sock_ops},
        maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
        programs::{SockAddrContext, SockOpsContext},
    };
    use aya_log_ebpf::info;
    use interceptor_ebpf::{
        CidrKey, Config, ConnKey, ConnectInfo, Enrollment, FLAG_INCLUDE_LOOPBACK, MAX_CGROUP_DEPTH,
        MAX_CIDR_RULES, MAX_ENROLLMENTS, MAX_TRACKED_CONNECTIONS, PortSet,
    };

    const AF_INET: u32 = 2;
    const SOCK_STREAM: u32 = 1;
    /// connect() return values of a cgroup/connect program.
    const ALLOW: i32 = 1;
    const REJECT: i32 = 0;
    /// LPM prefix that covers the whole key (enrollment id + 128-bit address).
    const FULL_PREFIX: u32 = 32 + 128;

    // All maps are pinned by name so that a restarted daemon (and programs still attached
    // through pinned links) share them.
    #[map]
    static CONFIG: Array<Config> = Array::pinned(1, 0);
    #[map]
    static ENROLLMENTS: HashMap<u64, Enrollment> = HashMap::pinned(MAX_ENROLLMENTS, 0);
    #[map]
    static SELECT: LpmTrie<CidrKey, PortSet> = LpmTrie::pinned(MAX_CIDR_RULES, 0);
    #[map]
    static DENY: LpmTrie<CidrKey, PortSet> = LpmTrie::pinned(MAX_CIDR_RULES, 0);
    #[map]
    static PENDING: LruHashMap<u64, ConnectInfo> = LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);
    #[map]
    static ORIGINAL_DST: LruHashMap<ConnKey, ConnectInfo> =
        LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);
    #[map]
    static DENIED_EVENTS: RingBuf = RingBuf::pinned(64 * 1024, 0);
    /// Connects refused because the daemon's listener was not at the proxy address.
    #[map]
    static NO_PROXY: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

    #[cgroup_sock_addr(connect4)]
    pub fn connect4(ctx: SockAddrContext) -> i32 {
        on_connect(&ctx, false)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn connect6(ctx: SockAddrContext) -> i32 {
        on_connect(&ctx, true)
    }

    #[inline(always)]
    fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
        let sa = ctx.sock_addr;
        // SAFETY (all ctx accesses): `sa` is the kernel's context pointer. Fields are read and
        // written with explicit 32-bit volatile accesses because the verifier rejects the
        // narrower or wider accesses LLVM may otherwise emit for them.
        if unsafe { read_volatile(&raw const (*sa).type_) } != SOCK_STREAM {
            return ALLOW;
        }
        let Some(enrollment) = find_enrollment() else {
            return ALLOW;
        };
        let Some(config) = CONFIG.get(0) else {
            return ALLOW;
        };
        if ctx.tgid() == config.daemon_tgid {
            return ALLOW;
        }
        if config.bypass_mark != 0 {
            // ctx->sk is never NULL in sock_addr programs.
            let mark = unsafe { read_volatile(&raw const (*(*sa).__bindgen_anon_1.sk).mark) };
            if mark == config.bypass_mark {
                return ALLOW;
            }
        }

        let addr = if v6 {
            let mut a = [0u8; 16];
            let w = unsafe { &raw const (*sa).user_ip6 };
            set_word(&mut a, 0, unsafe { read_volatile(&raw const (*w)[0]) });
            set_word(&mut a, 1, unsafe { read_volatile(&raw const (*w)[1]) });
            set_word(&mut a, 2, unsafe { read_volatile(&raw const (*w)[2]) });
            set_word(&mut a, 3, unsafe { read_volatile(&raw const (*w)[3]) });
            a
        } else {
            v4_mapped(unsafe { read_volatile(&raw const (*sa).user_ip4) })
        };
        // Network byte order in the low 16 bits.
        let port = u16::from_be(unsafe { read_volatile(&raw const (*sa).user_port) } as u16);

        let loopback = is_loopback(&addr);
        if loopback && port == enrollment.proxy_port && is_proxy_addr(&addr) {
            return ALLOW;
        }

        let key = Key::new(
            FULL_PREFIX,
            CidrKey {
                enrollment: enrollment.id.to_be_bytes(),
                addr,
            },
        );
        if let Some(ports) = DENY.get(&key)
            && ports.contains(port)
        {
            let info = connect_info(ctx, &enrollment, addr, port);
            let _ = DENIED_EVENTS.output::<ConnectInfo>(&info, 0);
            info!(
                ctx,
                "deny tgid={} dst=[{:i}]:{}", info.tgid, info.dst_addr, info.dst_port
            );
            return REJECT;
        }
        if loopback && enrollment.flags & FLAG_INCLUDE_LOOPBACK == 0 {
            return ALLOW;
        }
        match SELECT.get(&key) {
            Some(ports) if ports.contains(port) => {}
            _ => return ALLOW,
        }

        // v4-mapped destinations are rewritten to ::ffff:127.0.0.1, which is IPv4 on the wire.
        let mapped = is_v4_mapped(&addr);
        if !daemon_listens(
            ctx,
            v6 && !mapped,
            enrollment.proxy_port,
            config.bypass_mark,
        ) {
            // The daemon is down or restarting (or never listened in this namespace): whoever
            // holds the port now must not get the connection.
            if let Some(count) = NO_PROXY.get_ptr_mut(0) {
                unsafe { *count += 1 };
            }
            return REJECT;
        }

        let info = connect_info(ctx, &enrollment, addr, port);
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if PENDING.insert(cookie, info, 0).is_err() {
            // Without a record the proxy could not serve the connection, and letting it through
            // would bypass the policy: fail closed.
            return REJECT;
        }

        let proxy_port = u32::from(enrollment.proxy_port.to_be());
        unsafe {
            if v6 {
                // Stay in the family the socket dialled: v4-mapped → ::ffff:127.0.0.1, else ::1.
                let w = &raw mut (*sa).user_ip6;
                write_volatile(&raw mut (*w)[0], 0);
                write_volatile(&raw mut (*w)[1], 0);
                if mapped {
                    write_volatile(&raw mut (*w)[2], u32::from_ne_bytes([0, 0, 0xff, 0xff]));
                    write_volatile(&raw mut (*w)[3], u32::from_ne_bytes([127, 0, 0, 1]));
                } else {
                    write_volatile(&raw mut (*w)[2], 0);
                    write_volatile(&raw mut (*w)[3], u32::from_ne_bytes([0, 0, 0, 1]));
                }
            } else {
                write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes([127, 0, 0, 1]));
            }
            write_volatile(&raw mut (*sa).user_port, proxy_port);
        }
        ALLOW
    }

    /// Whether the socket listening at the proxy address (127.0.0.1 or, for `v6`, ::1, at
    /// `port`) in the caller's network namespace is the daemon's: only the daemon can put
    /// `mark` on a socket (`SO_MARK` needs `CAP_NET_ADMIN` or `CAP_NET_RAW`), so a listener
    /// another user bound while the daemon was down does not pass. `mark == 0` passes nothing.
    #[inline(always)]
    fn daemon_listens(ctx: &SockAddrContext, v6: bool, port: u16, mark: u32) -> bool {
        // SAFETY: an all-zero tuple is valid; both members are plain integers.
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        // The listener is the destination of the lookup; the source stays unspecified, which
        // no established socket matches.
        let size = unsafe {
            if v6 {
                let t = &mut tuple.__bindgen_anon_1.ipv6;
                t.daddr[3] = u32::from_ne_bytes([0, 0, 0, 1]);
                t.dport = port.to_be();
                size_of_val(t)
            } else {
                let t = &mut tuple.__bindgen_anon_1.ipv4;
                t.daddr = u32::from_ne_bytes([127, 0, 0, 1]);
                t.dport = port.to_be();
                size_of_val(t)
            }
        };
        // SAFETY: the tuple lives on the stack for the call; the socket returned holds a
        // reference that is released on every path before returning.
        let sk = unsafe {
            bpf_sk_lookup_tcp(
                ctx.as_ptr(),
                &mut tuple,
                size as u32,
                BPF_F_CURRENT_NETNS as u64,
                0,
            )
        };
        if sk.is_null() {
            return false;
        }
        let (state, sk_mark) = unsafe {
            (
                read_volatile(&raw const (*sk).state),
                read_volatile(&raw const (*sk).mark),
            )
        };
        unsafe { bpf_sk_release(sk.cast()) };
        mark != 0 && sk_mark == mark && state == BPF_TCP_LISTEN
    }

    /// The deepest enrolled cgroup among the caller's cgroup and its ancestors.
    #[inline(always)]
    fn find_enrollment() -> Option<Enrollment> {
        // Only a scalar is carried through the loop, which keeps the verifier's work small.
        let mut best = 0u64;
        let mut level = 0u32;
        while level <= MAX_CGROUP_DEPTH {
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if id == 0 {
                break;
            }
            if ENROLLMENTS.get_ptr(id).is_some() {
                best = id;
            }
            level += 1;
        }
        if best == 0 {
            return None;
        }
        ENROLLMENTS.get_ptr(best).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn connect_info(
        ctx: &SockAddrContext,
        enrollment: &Enrollment,
        dst_addr: [u8; 16],
        dst_port: u16,
    ) -> ConnectInfo {
        let family = unsafe { read_volatile(&raw const (*ctx.sock_addr).family) };
        ConnectInfo {
            dst_addr,
            dst_port,
            family: family as u16,
            tgid: ctx.tgid(),
            pid: ctx.pid(),
            uid: ctx.uid(),
            gid: ctx.gid(),
            enrollment: enrollment.id,
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            ktime_ns: unsafe { bpf_ktime_get_ns() },
            comm: ctx.command().unwrap_or([0; 16]),
        }
    }

    #[sock_ops]
    pub fn sock_ops(ctx: SockOpsContext) -> u32 {
        let op = ctx.op();
        if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            // SAFETY: the pointer is a live map value; it is copied out at once.
            if let Some(info) = PENDING.get_ptr(cookie).map(|p| unsafe { *p }) {
                let key = conn_key(&ctx);
                let _ = ORIGINAL_DST.insert(key, info, 0);
                let _ = PENDING.remove(cookie);
                // Ask for state callbacks so the record goes away when the socket closes.
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
            }
        } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
            // Only sockets that went through the branch above have state callbacks enabled.
            let _ = ORIGINAL_DST.remove(conn_key(&ctx));
        }
        1
    }

    /// The connection's source address as the proxy sees it on accept.
    #[inline(always)]
    fn conn_key(ctx: &SockOpsContext) -> ConnKey {
        let ops = ctx.ops;
        // SAFETY: kernel context pointer; 32-bit reads as the verifier requires. All fields are
        // read unconditionally: behind a branch LLVM merges the two address loads into one
        // through a computed ctx pointer, which the verifier rejects.
        let (family, ip4, ip6) = unsafe {
            let w = &raw const (*ops).local_ip6;
            (
                read_volatile(&raw const (*ops).family),
                read_volatile(&raw const (*ops).local_ip4),
                [
                    read_volatile(&raw const (*w)[0]),
                    read_volatile(&raw const (*w)[1]),
                    read_volatile(&raw const (*w)[2]),
                    read_volatile(&raw const (*w)[3]),
                ],
            )
        };
        let addr = if family == AF_INET {
            v4_mapped(ip4)
        } else {
            let mut a = [0u8; 16];
            set_word(&mut a, 0, ip6[0]);
            set_word(&mut a, 1, ip6[1]);
            set_word(&mut a, 2, ip6[2]);
            set_word(&mut a, 3, ip6[3]);
            a
        };
        ConnKey {
            netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            addr,
            // local_port is host byte order (remote_port would be network order).
            port: unsafe { read_volatile(&raw const (*ops).local_port) } as u16,
            _pad: [0; 6],
        }
    }

    /// Copies a network-order address word (as loaded from the context) into `a`.
    #[inline(always)]
    fn set_word(a: &mut [u8; 16], i: usize, w: u32) {
        a[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }

    #[inline(always)]
    fn v4_mapped(ip4: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        set_word(&mut a, 3, ip4);
        a
    }

    /// `::ffff:a.b.c.d`.
    #[inline(always)]
    fn is_v4_mapped(a: &[u8; 16]) -> bool {
        a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
    }

    /// 127.0.0.0/8 (v4-mapped) or ::1.
    #[inline(always)]
    fn is_loopback(a: &[u8; 16]) -> bool {
        const V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        (is_v4_mapped(a) && a[12] == 127) || *a == V6
    }

    /// 127.0.0.1 (v4-mapped) or ::1: where the proxy listens.
    #[inline(always)]
    fn is_proxy_addr(a: &[u8; 16]) -> bool {
        const V4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        const V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        *a == V4 || *a == V6
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

// The project's license. No GPL-only helper is used (the verifier would refuse one).
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
