//! Random bytes from the kernel, for ids berth makes up (Marathon-style persistence ids).

use std::path::Path;

use nix::errno::Errno;

use crate::host::HostError;

/// Fills `buf` from `getrandom(2)` (blocking until the kernel's pool is initialised, which
/// it is long before berth starts), retrying on `EINTR` and short reads.
pub(super) fn fill(buf: &mut [u8]) -> Result<(), HostError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes that the kernel
        // writes at most that many bytes into; no flags are passed.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => {
                    return Err(HostError::io(
                        "getrandom",
                        Path::new("getrandom"),
                        std::io::Error::from(e),
                    ));
                }
            }
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_whole_buffer_with_different_bytes_each_time() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
    }
}
