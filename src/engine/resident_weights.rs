//! Makes the model weights ONNX Runtime reads in place from the model's files resident at load.
//!
//! ONNX Runtime maps page-aligned external initializers of a model's data file instead of
//! copying them, and reads some of them in place at every run: the fp32 embedding table (250
//! MiB for TinyLlama) is read a row per token id by `Gather`. Left alone, a row's pages are
//! read from disk the first time a prompt or a story uses its id, so the process's memory
//! climbs for hours as new ids appear (BENCHMARKS, issue 29: +6.4% over an hour), bounded by
//! the table. That reads like a leak, hides a real one, and makes the first hour's memory
//! unrepresentative of the Deployment's limit. Reading every mapped page once at load makes
//! the memory flat from the first request; the pages stay clean file pages the kernel may
//! still drop under pressure.

use std::path::Path;

/// Reads into memory every page of the current process's file mappings under `model_dir`
/// (the mapped weights of every session loaded from it so far) and returns how many bytes
/// those mappings span. A mapping that cannot be read is skipped: this only moves page
/// faults earlier, it never changes what the model computes.
pub fn make_resident(model_dir: &Path) -> std::io::Result<u64> {
    let dir = model_dir.canonicalize()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut bytes = 0;
    for (start, end) in mappings_under(&maps, &dir) {
        populate(start, end);
        bytes += (end - start) as u64;
    }
    Ok(bytes)
}

/// The address ranges of `/proc/self/maps` lines that map a file inside `dir` readably.
fn mappings_under(maps: &str, dir: &Path) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // "start-end perms offset dev inode path": the path is what follows the inode
            // (it may itself hold spaces).
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let readable = fields.next()?.starts_with('r');
            let path = fields.nth(3)?.trim_start();
            if !readable || !path.starts_with('/') || !Path::new(path).starts_with(dir) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Faults in the pages of `[start, end)`, a readable mapping of this process.
fn populate(start: usize, end: usize) {
    // SAFETY: the range is a whole mapping listed by /proc/self/maps; MADV_POPULATE_READ only
    // reads its pages in, as a read of each would, and fails cleanly (EFAULT, EINVAL) on a
    // range that is not readable or on kernels before 5.14, which the fallback handles.
    let populated = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        )
    } == 0;
    if populated {
        return;
    }
    let page = page_size();
    for address in (start..end).step_by(page) {
        // SAFETY: the mapping is readable (`mappings_under`) and ONNX Runtime keeps its
        // initializer mappings for the session's lifetime; a volatile read keeps the touch.
        unsafe { std::ptr::read_volatile(address as *const u8) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Resident bytes of the mapping that starts at `start`, from /proc/self/smaps.
    fn resident(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let prefix = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&prefix));
        lines.next().expect("the mapping is listed");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        let kib: u64 = rss.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    fn a_mapped_weights_file_becomes_resident_and_others_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let len = 64 * page_size();
        let weights = dir.path().join("model.onnx.data");
        std::fs::write(&weights, vec![7u8; len]).unwrap();
        let file = std::fs::File::open(&weights).unwrap();
        // SAFETY: a private read-only mapping of a file we own, unmapped below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED);
        let start = address as usize;
        assert_eq!(resident(start), 0, "nothing read yet");

        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(make_resident(elsewhere.path()).unwrap(), 0);
        assert_eq!(
            resident(start),
            0,
            "a mapping outside the folder is left alone"
        );

        assert_eq!(make_resident(dir.path()).unwrap(), len as u64);
        assert_eq!(resident(start), len as u64);
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(address, len) };
    }

    #[test]
    fn maps_lines_are_read_by_path_and_permission_and_paths_may_hold_spaces() {
        let maps = "\
7f0000000000-7f0000002000 r--p 00000000 fe:00 12 /models/tiny llama/model.onnx.data
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 
7f0000006000-7f0000008000 r--p 00000000 fe:00 13 /models/other/model.onnx.data
7f000000a000-7f000000b000 r--p 00000000 fe:00 14 /models/tiny llama-2/x
7f000000c000-7f000000d000 ---p 00000000 fe:00 12 /models/tiny llama/model.onnx.data
";
        assert_eq!(
            mappings_under(maps, Path::new("/models/tiny llama")),
            vec![(0x7f0000000000, 0x7f0000002000)]
        );
    }
}
