//! Unix groups by name, and who belongs to one (the control socket's `api_group`).

use std::ffi::{CStr, CString};

use anyhow::{Result, bail};

pub struct Group {
    pub name: String,
    pub gid: u32,
}

impl Group {
    pub fn named(name: &str) -> Result<Self> {
        let c_name = CString::new(name)?;
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: every pointer is to memory of ours that outlives the call.
        let err =
            unsafe { libc::getgrnam_r(c_name.as_ptr(), &mut group, buffer.as_mut_ptr(), buffer.len(), &mut found) };
        if err != 0 || found.is_null() {
            bail!("api_group: there is no group `{name}` on this host");
        }
        Ok(Self { name: name.to_owned(), gid: group.gr_gid })
    }

    /// Whether the user `uid`, whose primary group is `gid`, is of this group.
    pub fn has(&self, uid: u32, gid: u32) -> bool {
        gid == self.gid || supplementary_groups(uid, gid).contains(&self.gid)
    }
}

/// The groups of user `uid` (primary group `gid`) as the group database lists them.
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let mut user: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to memory of ours that outlives the call.
    let err = unsafe { libc::getpwuid_r(uid, &mut user, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if err != 0 || found.is_null() {
        return Vec::new();
    }
    // SAFETY: getpwuid_r succeeded: `pw_name` points into `buffer`, a C string.
    let name = unsafe { CStr::from_ptr(user.pw_name) };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: `groups` has room for `count` entries.
    let listed = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
    if listed < 0 {
        return Vec::new();
    }
    groups.truncate(count as usize);
    groups
}
