//! Reads a write-ahead log the way SQLite's recovery does, to find damage that recovery
//! would hide.
//!
//! On open, SQLite replays the log's frames up to the first one whose checksum fails and
//! ignores the rest: that is how a commit torn by a crash is undone. The same rule turns
//! garbage in the middle of the log into silent loss of every later commit (a deleted
//! experiment comes back). A crash can only tear the last transaction, whose commit frame
//! never reached the log; so a bad frame followed by a commit frame of the same log
//! generation is damage, not a crash. Format: <https://www.sqlite.org/fileformat.html#the_write_ahead_log>.

use std::path::Path;

const HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 24;
const MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
const MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;

/// Why a log is damaged, in a sentence.
pub(crate) type Damage = String;

/// Checks the log of the database at `db` (`<db>-wal`), if there is one.
pub(crate) fn check(db: &Path) -> Result<(), Damage> {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let log = match std::fs::read(&name) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", Path::new(&name).display())),
    };
    check_bytes(&log)
}

fn check_bytes(log: &[u8]) -> Result<(), Damage> {
    if log.len() < HEADER_LEN {
        // Shorter than a header: a crash while the first frame was written, before any
        // commit (a commit writes a header and at least one whole frame).
        return Ok(());
    }
    if log[..HEADER_LEN].iter().all(|b| *b == 0) {
        // Zeros where the header goes: space a power cut allocated before the header
        // reached it. A commit makes its header durable first, so nothing committed is
        // lost, and SQLite ignores such a log.
        return Ok(());
    }
    let word = |at: usize| u32::from_be_bytes([log[at], log[at + 1], log[at + 2], log[at + 3]]);
    let magic = word(0);
    let big_endian = match magic {
        MAGIC_BIG_ENDIAN => true,
        MAGIC_LITTLE_ENDIAN => false,
        _ => return Err("its header is not a write-ahead log header".to_owned()),
    };
    if word(4) != FORMAT_VERSION {
        return Err(format!("its header has format version {}", word(4)));
    }
    let page_size = match word(8) {
        n if (512..=65_536).contains(&n) && n.is_power_of_two() => n as usize,
        n => return Err(format!("its header has an impossible page size {n}")),
    };
    let salts = (word(16), word(20));
    let mut sum = checksum((0, 0), &log[..24], big_endian);
    if sum != (word(24), word(28)) {
        return Err("its header's checksum does not match".to_owned());
    }
    let frame_len = FRAME_HEADER_LEN + page_size;
    let frames = log[HEADER_LEN..].chunks_exact(frame_len);
    for (index, frame) in frames.clone().enumerate() {
        let at = HEADER_LEN + index * frame_len;
        sum = checksum(sum, &frame[..8], big_endian);
        sum = checksum(sum, &frame[FRAME_HEADER_LEN..], big_endian);
        let valid = (word(at + 8), word(at + 12)) == salts
            && sum == (word(at + 16), word(at + 20))
            && word(at) != 0;
        if valid {
            continue;
        }
        // Recovery ends here. Rightly if nothing committed follows: the frames after are
        // an earlier generation of the log (other salts) or the torn last transaction.
        let committed_later = frames
            .clone()
            .enumerate()
            .skip(index + 1)
            .find(|(later, _)| {
                let at = HEADER_LEN + later * frame_len;
                (word(at + 8), word(at + 12)) == salts && word(at + 4) != 0
            });
        return match committed_later {
            Some((later, _)) => Err(format!(
                "frame {} is unreadable but the committed transaction ending at frame {} follows it; \
                 opening it would silently drop that and every later commit",
                index + 1,
                later + 1
            )),
            None => Ok(()),
        };
    }
    Ok(())
}

/// SQLite's log checksum: Fletcher-like over pairs of 32-bit words.
fn checksum(start: (u32, u32), bytes: &[u8], big_endian: bool) -> (u32, u32) {
    let (mut s0, mut s1) = start;
    for pair in bytes.chunks_exact(8) {
        let read = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(read(&pair[..4]).wrapping_add(s1));
        s1 = s1.wrapping_add(read(&pair[4..]).wrapping_add(s0));
    }
    (s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_absent_logs_are_fine() {
        assert!(check_bytes(&[]).is_ok());
        assert!(check_bytes(&[1, 2, 3]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        assert!(check(&dir.path().join("none.db")).is_ok());
    }

    #[test]
    fn a_zeroed_header_is_an_interrupted_first_write() {
        assert!(check_bytes(&[0; 4096]).is_ok());
    }

    #[test]
    fn a_garbage_header_is_damage() {
        let garbage = vec![0xab; 4096];
        let why = check_bytes(&garbage).unwrap_err();
        assert!(why.contains("not a write-ahead log header"), "{why}");
    }
}
