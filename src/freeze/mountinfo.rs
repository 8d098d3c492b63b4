//! Decoding `/proc/self/mountinfo` (see proc(5)).
//!
//! A line looks like
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)     (7)   (8) (9)    (10)         (11)
//! ```
//!
//! Fields are separated by single spaces; the kernel escapes space, tab, newline and
//! backslash inside paths as `\040`, `\011`, `\012` and `\134`. There may be any number of
//! optional fields (7) before the `-` separator. The decoder is hand-written so that a
//! malformed line becomes an error naming the line, never a panic, and so that mount
//! points that are not UTF-8 survive unchanged (they are decoded to bytes, then to a path).
//!
//! The kernel escapes only those four characters: any other byte of a path, including bytes
//! that are not UTF-8 (a mount point named in Latin-1, say), is written raw. The table is
//! therefore read and decoded as bytes ([`read_self`], [`parse_bytes`]); one such mount
//! must not make the whole table unreadable. Fuzzed by `fuzz/fuzz_targets/mountinfo.rs`.
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Root of the mount within the filesystem (decoded).
    pub root: PathBuf,
    /// Mount point (decoded).
    pub mount_point: PathBuf,
    pub mount_options: Vec<String>,
    pub optional_fields: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl Mount {
    /// `major:minor`, as mountinfo spells it.
    pub fn device(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// A line of mountinfo that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Reading `/proc/self/mountinfo` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Where the mount table of the calling process lives.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Read and decode the calling process's mount table (as bytes: see the module doc).
pub fn read_self() -> Result<Vec<Mount>, ReadError> {
    let text = std::fs::read(SELF_MOUNTINFO).map_err(|source| ReadError::Io {
        path: SELF_MOUNTINFO.to_string(),
        source,
    })?;
    Ok(parse_bytes(&text)?)
}

/// Decode a whole mountinfo text. Empty lines are ignored; the first malformed line is an
/// error naming its (1-based) line number.
pub fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] on raw bytes, as the kernel writes them (paths need not be UTF-8).
pub fn parse_bytes(text: &[u8]) -> Result<Vec<Mount>, ParseError> {
    let mut mounts = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        mounts.push(parse_line_bytes(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?);
    }
    Ok(mounts)
}

/// Decode one line (without its newline).
pub fn parse_line(line: &str) -> Result<Mount, String> {
    parse_line_bytes(line.as_bytes())
}

/// [`parse_line`] on raw bytes.
pub fn parse_line_bytes(line: &[u8]) -> Result<Mount, String> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == b"-")
        .ok_or_else(|| "no \"-\" separator before the filesystem type".to_string())?;
    if sep < 6 {
        return Err(format!(
            "expected at least 6 fields before \"-\", found {sep}"
        ));
    }
    let after = &fields[sep + 1..];
    if after.len() < 3 {
        return Err(format!(
            "expected filesystem type, source and super options after \"-\", found {} field(s)",
            after.len()
        ));
    }
    let mount_id = number(fields[0], "mount id")?;
    let parent_id = number(fields[1], "parent id")?;
    let (major, minor) = split_once(fields[2], b':')
        .ok_or_else(|| format!("device {:?} is not major:minor", lossy(fields[2])))?;
    let major = number(major, "major device number")?;
    let minor = number(minor, "minor device number")?;
    let root = path(fields[3], "root")?;
    let mount_point = path(fields[4], "mount point")?;
    let mount_options = options(fields[5]);
    let optional_fields = fields[6..sep]
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| lossy(f))
        .collect();
    let fstype = text(after[0]);
    if fstype.is_empty() {
        return Err("empty filesystem type".to_string());
    }
    let source = text(after[1]);
    // Super options never contain an unescaped space, but be tolerant of a trailing one.
    let super_options = options(&after[2..].join(&b' '));
    Ok(Mount {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fstype,
        source,
        super_options,
    })
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|b| *b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn number(s: &[u8], what: &str) -> Result<u32, String> {
    let shown = lossy(s);
    if s.is_empty() || !s.iter().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {shown:?} is not a number"));
    }
    shown
        .parse::<u32>()
        .map_err(|_| format!("{what} {shown:?} is out of range"))
}

fn path(s: &[u8], what: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    Ok(PathBuf::from(OsString::from_vec(unescape_bytes(s))))
}

fn text(s: &[u8]) -> String {
    String::from_utf8_lossy(&unescape_bytes(s)).into_owned()
}

fn options(s: &[u8]) -> Vec<String> {
    s.split(|b| *b == b',')
        .filter(|o| !o.is_empty())
        .map(text)
        .collect()
}

/// Decode the kernel's `\NNN` octal escapes. A backslash not followed by three octal digits
/// (which the kernel never writes) is kept literally rather than rejected.
pub fn unescape(s: &str) -> Vec<u8> {
    unescape_bytes(s.as_bytes())
}

/// [`unescape`] on raw bytes.
pub fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && is_octal_triplet(&b[i + 1..i + 4]) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn is_octal_triplet(t: &[u8]) -> bool {
    t.len() == 3 && t.iter().all(|c| (b'0'..=b'7').contains(c))
}

/// Escape a path the way the kernel does in mountinfo (for display in one-line tables).
pub fn escape(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::new();
    for &c in p.as_os_str().as_bytes() {
        match c {
            b' ' | b'\t' | b'\n' | b'\\' => s.push_str(&format!("\\{c:03o}")),
            0x21..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\{c:03o}")),
        }
    }
    s
}

/// Serialize a path as a string: itself when it is UTF-8, else escaped the kernel's way
/// ([`escape`]: `\351` for a Latin-1 `é`). serde's own impl fails on a path that is not
/// UTF-8, and such mount points exist (see the module doc): `quiesce mounts --json` must not
/// die on one. Use with `#[serde(serialize_with = "...")]`.
pub fn serialize_path<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    match p.to_str() {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&escape(p)),
    }
}

/// [`serialize_path`] for a list of paths.
pub fn serialize_paths<S: serde::Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    struct P<'a>(&'a std::path::Path);
    impl serde::Serialize for P<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_path(self.0, s)
        }
    }
    let mut seq = s.serialize_seq(Some(ps.len()))?;
    for p in ps {
        seq.serialize_element(&P(p))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn proc_man_page_example() {
        let m = parse_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(m.mount_id, 36);
        assert_eq!(m.parent_id, 35);
        assert_eq!((m.major, m.minor), (98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.mount_options, vec!["rw", "noatime"]);
        assert_eq!(m.optional_fields, vec!["master:1"]);
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, vec!["rw", "errors=continue"]);
        assert_eq!(m.device(), "98:0");
    }

    #[test]
    fn no_optional_fields() {
        let m = parse_line("22 27 0:21 / /proc rw,relatime - proc proc rw").unwrap();
        assert!(m.optional_fields.is_empty());
        assert_eq!(m.fstype, "proc");
        assert_eq!(m.mount_point, Path::new("/proc"));
    }

    #[test]
    fn several_optional_fields() {
        let m = parse_line(
            "412 29 8:3 / /srv rw,relatime shared:147 master:12 propagate_from:3 unbindable - xfs /dev/sda3 rw,attr2,inode64",
        )
        .unwrap();
        assert_eq!(
            m.optional_fields,
            vec!["shared:147", "master:12", "propagate_from:3", "unbindable"]
        );
        assert_eq!(m.fstype, "xfs");
        assert_eq!(m.super_options, vec!["rw", "attr2", "inode64"]);
    }

    #[test]
    fn bind_mount_has_subdirectory_root() {
        let text = "\
30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 30 8:1 /srv/data /var/lib/data rw,relatime shared:1 - ext4 /dev/sda1 rw
";
        let ms = parse(text).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].root, Path::new("/srv/data"));
        assert_eq!(ms[1].mount_point, Path::new("/var/lib/data"));
        assert_eq!((ms[0].major, ms[0].minor), (ms[1].major, ms[1].minor));
    }

    #[test]
    fn btrfs_subvolume_roots() {
        let text = "\
29 1 0:26 /@ / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 rw,ssd,space_cache=v2,subvolid=256,subvol=/@
71 29 0:26 /@home /home rw,relatime shared:33 - btrfs /dev/nvme0n1p2 rw,ssd,space_cache=v2,subvolid=257,subvol=/@home
";
        let ms = parse(text).unwrap();
        assert_eq!(ms[0].root, Path::new("/@"));
        assert_eq!(ms[1].root, Path::new("/@home"));
        assert_eq!(ms[1].super_options.last().unwrap(), "subvol=/@home");
        assert_eq!(ms[0].device(), ms[1].device());
    }

    #[test]
    fn escaped_space_tab_newline_backslash() {
        let m =
            parse_line(r"100 30 7:3 / /mnt/my\040disk\011tab\012nl\134bs rw - ext4 /dev/loop3 rw")
                .unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/my disk\ttab\nnl\\bs"));
        assert_eq!(
            escape(&m.mount_point),
            r"/mnt/my\040disk\011tab\012nl\134bs"
        );
    }

    #[test]
    fn escaped_source_and_root() {
        let m = parse_line(
            r"101 30 0:50 /sub\040dir /mnt/x rw,nosuid - fuse.sshfs user@host:/home/a\040b rw,user_id=0",
        )
        .unwrap();
        assert_eq!(m.root, Path::new("/sub dir"));
        assert_eq!(m.source, "user@host:/home/a b");
        assert_eq!(m.fstype, "fuse.sshfs");
    }

    #[test]
    fn non_utf8_mount_point_survives() {
        let m = parse_line(r"102 30 7:4 / /mnt/\377x rw - ext4 /dev/loop4 rw").unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/mnt/\xffx");
    }

    #[test]
    fn raw_non_utf8_bytes_as_the_kernel_writes_them() {
        // The kernel escapes only space, tab, newline and backslash; other bytes are raw.
        let text = b"22 27 0:21 / /proc rw - proc proc rw\n\
103 30 7:5 / /mnt/a\xffb\\040c rw,relatime - ext4 /dev/loop5 rw\n";
        let ms = parse_bytes(text).unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(ms[1].mount_point.as_os_str().as_bytes(), b"/mnt/a\xffb c");
        assert_eq!(ms[1].fstype, "ext4");
        let err = parse_bytes(b"\xff\xfe - x y z\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn paths_that_are_not_utf8_serialize_escaped() {
        #[derive(serde::Serialize)]
        struct D {
            #[serde(serialize_with = "serialize_path")]
            p: PathBuf,
            #[serde(serialize_with = "serialize_paths")]
            ps: Vec<PathBuf>,
        }
        use std::os::unix::ffi::OsStringExt;
        let bad = PathBuf::from(OsString::from_vec(b"/mnt/caf\xe9 x".to_vec()));
        let d = D {
            p: bad.clone(),
            ps: vec![PathBuf::from("/a b"), bad],
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"p":"/mnt/caf\\351\\040x","ps":["/a b","/mnt/caf\\351\\040x"]}"#
        );
    }

    #[test]
    fn stray_backslash_is_kept() {
        assert_eq!(unescape(r"a\b"), b"a\\b");
        assert_eq!(unescape(r"a\"), b"a\\");
        assert_eq!(unescape(r"a\04"), b"a\\04");
        assert_eq!(unescape(r"\0401"), b" 1");
        assert_eq!(unescape(r"\777"), b"\\777");
    }

    #[test]
    fn mount_and_super_options_are_kept_apart() {
        let m = parse_line("40 30 7:1 / /ro rw,relatime - ext4 /dev/loop1 ro").unwrap();
        assert_eq!(
            (m.mount_options[0].as_str(), m.super_options[0].as_str()),
            ("rw", "ro")
        );
        let m = parse_line("42 30 7:1 / /rw rw,relatime - ext4 /dev/loop1 rw,errors=remount-ro")
            .unwrap();
        assert_eq!(m.super_options, vec!["rw", "errors=remount-ro"]);
    }

    #[test]
    fn empty_source_field() {
        let m = parse_line("43 30 0:99 / /x rw - tmpfs  rw").unwrap();
        assert_eq!(m.source, "");
        assert_eq!(m.fstype, "tmpfs");
    }

    #[test]
    fn blank_lines_ignored_and_line_numbers_counted() {
        let text = "\n22 27 0:21 / /proc rw - proc proc rw\n\n23 27 0:22 / /sys rw - sysfs sysfs\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("after \"-\""), "{}", err.message);
        let ok = parse("\n22 27 0:21 / /proc rw - proc proc rw\n\n").unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        let cases: &[(&str, &str)] = &[
            ("garbage", "separator"),
            ("1 2 3:4 / /x rw ext4 /dev/sda rw", "separator"),
            ("1 2 3:4 / - ext4 /dev/sda rw", "at least 6"),
            ("- ext4 /dev/sda rw", "at least 6"),
            ("x 2 3:4 / /x rw - ext4 /dev/sda rw", "mount id"),
            ("1 -2 3:4 / /x rw - ext4 /dev/sda rw", "parent id"),
            ("1 2 34 / /x rw - ext4 /dev/sda rw", "major:minor"),
            ("1 2 3: / /x rw - ext4 /dev/sda rw", "minor"),
            ("1 2 :4 / /x rw - ext4 /dev/sda rw", "major"),
            (
                "1 2 99999999999:4 / /x rw - ext4 /dev/sda rw",
                "out of range",
            ),
            ("1 2 3:4  /x rw - ext4 /dev/sda rw", "empty root"),
            ("1 2 3:4 /  rw - ext4 /dev/sda rw", "empty mount point"),
            ("1 2 3:4 / /x rw -", "found 0"),
            ("1 2 3:4 / /x rw - ext4", "found 1"),
            ("1 2 3:4 / /x rw -  /dev/sda rw", "empty filesystem type"),
            ("\\\\\\ \\ \\ \\ \\ \\ - \\ \\ \\", "mount id"),
        ];
        for (line, want) in cases {
            let text = format!("22 27 0:21 / /proc rw - proc proc rw\n{line}\n");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, 2, "{line}");
            assert!(
                err.message.contains(want),
                "{line:?}: {:?} does not mention {want:?}",
                err.message
            );
            assert!(err.to_string().starts_with("mountinfo line 2: "));
        }
    }

    #[test]
    fn fuzz_like_inputs_never_panic() {
        // Every prefix and some mutations of a real line: decoding must return, not panic.
        let line = r"412 29 8:3 /a\040b /srv\134x rw,relatime shared:147 master:12 - xfs /dev/sda3 rw,attr2";
        for end in 0..=line.len() {
            let _ = parse(&line[..end]);
        }
        for (i, _) in line.char_indices() {
            for rep in [" ", "-", "\\", ":", "", "\n"] {
                let mut s = line.to_string();
                s.replace_range(i..i + 1, rep);
                let _ = parse(&s);
            }
        }
    }

    #[test]
    fn reads_this_machine() {
        let ms = read_self().unwrap();
        assert!(ms.iter().any(|m| m.mount_point == Path::new("/")));
        assert!(ms.iter().any(|m| m.fstype == "proc"));
    }
}
