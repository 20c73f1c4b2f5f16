//! The store's journal: a state change is durable once its frame is in this file and the file
//! is `fdatasync`ed, so a commit costs one small write and one flush instead of a durable redb
//! commit (about ten scattered page writes and a larger flush).
//!
//! Layout (little-endian):
//! - two header slots at 0 and 512, each `magic "berthjnl" | format u32 | generation u64 |
//!   crc32c u32` over the bytes before the crc. The valid slot with the highest generation is
//!   the current one; a new generation is written to the other slot, so a torn header write
//!   leaves the previous one readable.
//! - frames from 4096 to the end of the file: `length u32 | crc32c u32 | body`, body =
//!   `generation u64 | kind u8 | records u8 | key length u32 | key | value`. A zero length, a
//!   frame past the end, a bad crc or another generation ends the journal.
//!
//! The file is made once at its full size and filled with written zeros, so appending a frame
//! overwrites allocated blocks: its `fdatasync` flushes data only, with no metadata for the
//! filesystem's journal to commit.
//!
//! Why it is crash-safe: every change is applied to redb (a non-durable commit) and appended
//! here under one lock, so both see changes in the same order. redb makes non-durable commits
//! durable only with a later durable commit; after a crash it opens at its last durable commit,
//! and replaying the current generation's frames in order brings it to the last synced frame.
//! A frame holds a whole record (or its removal), so replaying frames redb already holds ends
//! in the same state. A checkpoint makes redb durable first and only then starts a new
//! generation: a crash in between replays frames redb already holds, which is harmless.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the first frame starts.
const FRAMES_AT: u64 = 4096;
/// Room for frames: about 350 records of a typical size between two checkpoints.
pub(super) const CAPACITY: u64 = 256 << 10;
const HEADER_SLOT: u64 = 512;
const MAGIC: &[u8; 8] = b"berthjnl";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// `length | crc`, then the body's fixed part: `generation | kind | records | key length`.
const FRAME_HEAD: usize = 4 + 4;
const BODY_FIXED: usize = 8 + 1 + 1 + 4;

/// What a frame does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrameKind {
    Put = 1,
    Remove = 2,
}

/// One change as the journal holds it; `records` names the table (see
/// `super::group::Records::code`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    pub kind: FrameKind,
    pub records: u8,
    pub key: String,
    pub value: Vec<u8>,
}

/// The open journal file and where the next frame goes.
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    generation: u64,
    next: u64,
    frames: usize,
    buffer: Vec<u8>,
}

impl Journal {
    /// Opens the journal at `path`, making it if it has no valid header (a journal never
    /// written to, or one whose making was cut short: no frame is written before the first
    /// header is durable). Returns it with the current generation's frames, in order.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Frame>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        let mut journal = Self {
            file,
            path: path.to_path_buf(),
            generation: 0,
            next: FRAMES_AT,
            frames: 0,
            buffer: Vec::new(),
        };
        match journal.read_header()? {
            Some(generation) => {
                journal.generation = generation;
                let frames = journal.read_frames()?;
                Ok((journal, frames))
            }
            None => {
                journal.make()?;
                Ok((journal, Vec::new()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames appended in this generation.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Writes `frames` after the last ones, unsynced. `Ok(false)`: they do not fit in this
    /// generation (nothing was written; checkpoint and start a new one).
    pub fn append<'a>(&mut self, frames: impl Iterator<Item = FrameRef<'a>>) -> io::Result<bool> {
        self.buffer.clear();
        let mut count = 0;
        for frame in frames {
            encode(&mut self.buffer, self.generation, frame);
            count += 1;
        }
        let end = self.next + self.buffer.len() as u64;
        if end > FRAMES_AT + CAPACITY {
            return Ok(false);
        }
        self.file.write_all_at(&self.buffer, self.next)?;
        self.next = end;
        self.frames += count;
        if self.buffer.capacity() > 64 << 10 {
            self.buffer = Vec::new();
        }
        Ok(true)
    }

    /// A handle to flush the journal without holding it (frames appended before the flush
    /// began are durable when it returns).
    pub fn flusher(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Starts the next generation: every frame written so far is ignored from now on. Call
    /// only once the store holds them durably.
    pub fn start_generation(&mut self) -> io::Result<()> {
        self.write_header(self.generation + 1)?;
        self.next = FRAMES_AT;
        self.frames = 0;
        Ok(())
    }

    /// Deletes the journal file (a journal that cannot be written any more): the next open
    /// makes a new one.
    pub fn remove(&mut self) -> io::Result<()> {
        std::fs::remove_file(&self.path)?;
        sync_parent(&self.path)?;
        self.frames = 0;
        Ok(())
    }

    /// From now on every write fails as on a failing disk (`EBADF`: the file is reopened
    /// read-only).
    #[cfg(test)]
    pub fn break_writes(&mut self) {
        self.file = File::open(&self.path).expect("reopen the journal read-only");
    }

    /// The generation of the valid header slot with the highest one, if any.
    fn read_header(&self) -> io::Result<Option<u64>> {
        let mut best = None;
        for slot in 0..2 {
            let mut bytes = [0u8; HEADER_LEN];
            match self.file.read_exact_at(&mut bytes, slot * HEADER_SLOT) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
                Err(e) => return Err(e),
            }
            let (body, crc) = bytes.split_at(HEADER_LEN - 4);
            let valid = &body[..8] == MAGIC
                && u32::from_le_bytes(crc.try_into().unwrap_or_default()) == crc32c(body);
            if !valid {
                continue;
            }
            let format = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default());
            if format != FORMAT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "journal format {format}; this berth understands {FORMAT}: upgrade berth"
                    ),
                ));
            }
            let generation = u64::from_le_bytes(body[12..20].try_into().unwrap_or_default());
            best = best.max(Some(generation));
        }
        Ok(best)
    }

    fn write_header(&mut self, generation: u64) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(HEADER_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT.to_le_bytes());
        bytes.extend_from_slice(&generation.to_le_bytes());
        let crc = crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&bytes, (generation % 2) * HEADER_SLOT)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }

    /// Fills the file with written zeros at its full size, then writes the first header.
    fn make(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        let zeros = vec![0u8; 64 << 10];
        let mut at = 0;
        while at < FRAMES_AT + CAPACITY {
            let len = zeros.len().min((FRAMES_AT + CAPACITY - at) as usize);
            self.file.write_all_at(&zeros[..len], at)?;
            at += len as u64;
        }
        self.file.sync_all()?;
        self.write_header(1)?;
        sync_parent(&self.path)?;
        self.next = FRAMES_AT;
        self.frames = 0;
        Ok(())
    }

    /// The current generation's frames, from the first to the last whole one; where that
    /// ends, the next frame goes.
    fn read_frames(&mut self) -> io::Result<Vec<Frame>> {
        // Made at its full size; should it have been cut short, what is there is read.
        let len = self.file.metadata()?.len().saturating_sub(FRAMES_AT);
        let mut bytes = vec![0u8; len.min(CAPACITY) as usize];
        self.file.read_exact_at(&mut bytes, FRAMES_AT)?;
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((frame, len)) = decode(&bytes[at..], self.generation) {
            frames.push(frame);
            at += len;
        }
        self.next = FRAMES_AT + at as u64;
        self.frames = frames.len();
        Ok(frames)
    }
}

/// A change to append, borrowed from the caller.
#[derive(Clone, Copy)]
pub(super) struct FrameRef<'a> {
    pub kind: FrameKind,
    pub records: u8,
    pub key: &'a str,
    pub value: &'a [u8],
}

fn encode(out: &mut Vec<u8>, generation: u64, frame: FrameRef<'_>) {
    let body_len = BODY_FIXED + frame.key.len() + frame.value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.push(frame.kind as u8);
    out.push(frame.records);
    out.extend_from_slice(&(frame.key.len() as u32).to_le_bytes());
    out.extend_from_slice(frame.key.as_bytes());
    out.extend_from_slice(frame.value);
    let crc = crc32c(&out[start + FRAME_HEAD..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The frame at the start of `bytes` and its length, if it is a whole frame of `generation`.
fn decode(bytes: &[u8], generation: u64) -> Option<(Frame, usize)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let body_len = word(0)? as usize;
    let body = bytes.get(FRAME_HEAD..FRAME_HEAD.checked_add(body_len)?)?;
    if body_len < BODY_FIXED || word(4)? != crc32c(body) {
        return None;
    }
    if u64::from_le_bytes(body[..8].try_into().ok()?) != generation {
        return None;
    }
    let kind = match body[8] {
        1 => FrameKind::Put,
        2 => FrameKind::Remove,
        _ => return None,
    };
    let key_len = u32::from_le_bytes(body[10..14].try_into().ok()?) as usize;
    let key = body.get(BODY_FIXED..BODY_FIXED.checked_add(key_len)?)?;
    let frame = Frame {
        kind,
        records: body[9],
        key: String::from_utf8(key.to_vec()).ok()?,
        value: body[BODY_FIXED + key_len..].to_vec(),
    };
    Some((frame, FRAME_HEAD + body_len))
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// CRC-32C (Castagnoli), the checksum of ext4's and btrfs' metadata.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(key: &'a str, value: &'a [u8]) -> FrameRef<'a> {
        FrameRef {
            kind: FrameKind::Put,
            records: 1,
            key,
            value,
        }
    }

    #[test]
    fn crc32c_matches_the_published_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frames_come_back_in_order_until_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, frames) = Journal::open(&path).unwrap();
        assert!(frames.is_empty());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            FRAMES_AT + CAPACITY
        );
        assert!(
            j.append([put("a", b"1"), put("b", b"2")].into_iter())
                .unwrap()
        );
        let remove = FrameRef {
            kind: FrameKind::Remove,
            records: 2,
            key: "a",
            value: b"",
        };
        assert!(j.append(std::iter::once(remove)).unwrap());
        drop(j);
        let (mut j, frames) = Journal::open(&path).unwrap();
        let summary: Vec<_> = frames
            .iter()
            .map(|f| (f.kind, f.records, f.key.as_str(), f.value.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (FrameKind::Put, 1, "a", &b"1"[..]),
                (FrameKind::Put, 1, "b", b"2"),
                (FrameKind::Remove, 2, "a", b""),
            ]
        );
        // Appends continue after the replayed frames.
        assert!(j.append(std::iter::once(put("c", b"3"))).unwrap());
        assert_eq!(j.frames(), 4);
        j.start_generation().unwrap();
        assert!(j.append(std::iter::once(put("d", b"4"))).unwrap());
        drop(j);
        let (_, frames) = Journal::open(&path).unwrap();
        assert_eq!(frames.len(), 1, "the older generation's frames are gone");
        assert_eq!(frames[0].key, "d");
    }

    #[test]
    fn a_torn_frame_ends_the_journal_and_a_torn_header_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append([put("a", b"1"), put("b", b"22")].into_iter())
            .unwrap();
        let second_at = FRAMES_AT as usize + FRAME_HEAD + BODY_FIXED + 2;
        drop(j);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", second_at as u64 + FRAME_HEAD as u64 + 15)
            .unwrap();
        let (mut j, frames) = Journal::open(&path).unwrap();
        assert_eq!(frames.len(), 1, "the torn frame is not replayed");
        // The next generation's header, torn: the previous one is current again.
        j.start_generation().unwrap();
        drop(j);
        file.write_all_at(b"\xff", 13).unwrap();
        let (j, frames) = Journal::open(&path).unwrap();
        assert_eq!(j.generation, 1);
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn a_batch_that_does_not_fit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(&dir.path().join("j")).unwrap();
        let big = vec![7u8; CAPACITY as usize];
        assert!(!j.append(std::iter::once(put("big", &big))).unwrap());
        assert_eq!(j.frames(), 0);
        assert!(j.append(std::iter::once(put("small", b"1"))).unwrap());
    }
}
