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
/// those mappings span. A mapping that cannot be read, or is unmapped meanwhile by another
/// thread dropping its session, is skipped: this only moves page faults earlier, it never
/// changes what the model computes.
pub fn make_resident(model_dir: &Path) -> std::io::Result<u64> {
    let dir = model_dir.canonicalize()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut bytes = 0;
    let mut fallback = None;
    for (start, end) in mappings_under(&maps, &dir) {
        if !populate(start, end) {
            let memory = match &mut fallback {
                Some(memory) => memory,
                None => fallback.insert(ProcessMemory::open()?),
            };
            memory.read_in(start, end);
        }
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

/// Faults in the pages of `[start, end)` with `MADV_POPULATE_READ`; false where the kernel
/// cannot (before 5.14, some sandboxes) or the range is no longer mapped readably.
fn populate(start: usize, end: usize) -> bool {
    // SAFETY: madvise never dereferences the range in our address space's stead: it fails
    // cleanly (ENOMEM, EFAULT, EINVAL) on a range that is unmapped, unreadable or unknown
    // to the kernel, and otherwise only reads the pages in, as a read of each would.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        ) == 0
    }
}

/// Our own memory read through `/proc/self/mem`: each read faults the pages in like a read
/// through a pointer would, but a page unmapped meanwhile (another thread dropping its
/// session) is an I/O error rather than a crash. Touching pages through pointers instead
/// crashed the tests, where sessions load and drop in parallel.
struct ProcessMemory {
    file: std::fs::File,
    buffer: Vec<u8>,
}

impl ProcessMemory {
    const CHUNK: usize = 1 << 20;

    fn open() -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open("/proc/self/mem")?,
            buffer: vec![0; Self::CHUNK],
        })
    }

    /// Reads `[start, end)` in chunks, stopping at the first range that cannot be read.
    fn read_in(&mut self, start: usize, end: usize) {
        use std::os::unix::fs::FileExt;
        let mut address = start;
        while address < end {
            let len = Self::CHUNK.min(end - address);
            match self.file.read_at(&mut self.buffer[..len], address as u64) {
                Ok(0) | Err(_) => return,
                Ok(read) => address += read,
            }
        }
    }
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

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    /// A private read-only mapping of a new `model.onnx.data` of `len` bytes in a folder of
    /// its own, none of it read yet.
    struct MappedWeights {
        dir: tempfile::TempDir,
        start: usize,
        len: usize,
    }

    impl MappedWeights {
        fn new(len: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let weights = dir.path().join("model.onnx.data");
            std::fs::write(&weights, vec![7u8; len]).unwrap();
            let file = std::fs::File::open(&weights).unwrap();
            // SAFETY: a private read-only mapping of a file we own, unmapped on drop.
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
            Self { dir, start, len }
        }

        fn unmap(&mut self) {
            if self.len > 0 {
                // SAFETY: the mapping made in `new`, not used after this.
                unsafe { libc::munmap(self.start as *mut libc::c_void, self.len) };
                self.len = 0;
            }
        }
    }

    impl Drop for MappedWeights {
        fn drop(&mut self) {
            self.unmap();
        }
    }

    #[test]
    fn a_mapped_weights_file_becomes_resident_and_others_are_left_alone() {
        let len = 64 * page_size();
        let weights = MappedWeights::new(len);

        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(make_resident(elsewhere.path()).unwrap(), 0);
        assert_eq!(
            resident(weights.start),
            0,
            "a mapping outside the folder is left alone"
        );

        assert_eq!(make_resident(weights.dir.path()).unwrap(), len as u64);
        assert_eq!(resident(weights.start), len as u64);
    }

    #[test]
    fn the_fallback_for_kernels_without_populate_read_makes_pages_resident_too() {
        // More than one chunk, and not a whole number of them.
        let len = ProcessMemory::CHUNK + 16 * page_size();
        let weights = MappedWeights::new(len);
        let mut memory = ProcessMemory::open().unwrap();
        memory.read_in(weights.start, weights.start + len);
        assert_eq!(resident(weights.start), len as u64);
    }

    #[test]
    fn a_mapping_gone_before_the_fallback_reads_it_is_skipped_without_a_crash() {
        // Sessions load and drop on several threads at once: a mapping listed in the maps
        // can be unmapped before it is read. Touching it through a pointer crashed.
        let len = 4 * page_size();
        let mut weights = MappedWeights::new(len);
        weights.unmap();
        let mut memory = ProcessMemory::open().unwrap();
        // The test passes by getting here: the old pointer reads died of SIGSEGV.
        memory.read_in(weights.start, weights.start + len);
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
