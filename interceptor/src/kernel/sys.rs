//! Small system helpers aya does not offer: bpffs mounting, the cgroup a pinned link is
//! attached to, and switching a pinned link to another program.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::statfs,
};

pub const BPFFS: &str = "/sys/fs/bpf";

/// The value under `key` in a hash map, removed in the same call when `delete`
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, Linux 5.14 and later); None when there is none.
pub fn map_lookup<K, V: Default>(map: BorrowedFd<'_>, key: &K, delete: bool) -> Option<V> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    /// The map-element member of `union bpf_attr`.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = V::default();
    let attr = Attr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: &mut value as *mut V as u64,
        flags: 0,
    };
    // SAFETY: attr points to live key and value buffers of the map's key and value types for
    // the duration of the call; the kernel writes at most the value size into `value`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            if delete {
                BPF_MAP_LOOKUP_AND_DELETE_ELEM
            } else {
                BPF_MAP_LOOKUP_ELEM
            },
            &attr as *const Attr,
            size_of::<Attr>() as libc::c_uint,
        )
    };
    (rc == 0).then_some(value)
}

/// Whether `path` is on a bpf file system.
pub fn is_bpffs(path: &Path) -> nix::Result<bool> {
    Ok(statfs(path)?.filesystem_type().0 == libc::BPF_FS_MAGIC as libc::__fsword_t)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs() -> nix::Result<()> {
    let path = Path::new(BPFFS);
    if is_bpffs(path)? {
        return Ok(());
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// What the kernel says about a pinned cgroup link.
#[derive(Debug, Clone, Copy)]
pub struct CgroupLinkInfo {
    pub prog_id: u32,
    /// Id of the cgroup it is attached to; 0 once that cgroup has been removed.
    pub cgroup_id: u64,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens the object pinned at `path` (BPF_OBJ_GET).
fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    // `union bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &attr)? };
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the link pinned at `path` run `prog` instead of its program, in one step: the
/// attachment never goes away, so no call of the hook is missed (BPF_LINK_UPDATE).
pub fn update_pinned_link(path: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    // `union bpf_attr` for BPF_LINK_UPDATE.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = open_pinned(path)?;
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_LINK_UPDATE.
    unsafe { bpf(BPF_LINK_UPDATE, &attr)? };
    Ok(())
}

/// Opens the link pinned at `path` and reads its `bpf_link_info` (aya's `LinkInfo` does not
/// expose the cgroup id, which tells a live attachment from one whose cgroup was recreated).
pub fn pinned_cgroup_link_info(path: &Path) -> io::Result<CgroupLinkInfo> {
    // `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // Head of `struct bpf_link_info` with its `cgroup` union member.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
    }

    let fd = open_pinned(path)?;
    let mut info = LinkInfo::default();
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` points at `info`, which is writable for `info_len` bytes.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)? };
    Ok(CgroupLinkInfo {
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
    })
}

/// The bpf(2) system call with `attr` as the command's `union bpf_attr` prefix.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: the caller passes a correctly laid out attribute struct for `cmd`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}
