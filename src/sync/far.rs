//! A sync destination: a directory (another disk, an NFS mount) or an
//! rclone remote (`rclone:NAME:PATH`, with the admin's own rclone
//! configuration). Transport is rclone's job: this module only calls it.
//!
//! Every object is written under a temporary name (`.fi-tmp.*` in the same
//! directory) and then renamed (`rename(2)`, `rclone moveto`) to its final
//! name, so a final name never holds a partial object. What is uploaded is
//! read once, through BLAKE3: an upload whose checksum is not the recorded
//! one is removed and fails, naming the home file as damaged.

use crate::error::{Error, Result};
use crate::store::fsutil::{TempFile, TEMP_PREFIX};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The scheme that names an rclone remote as a destination.
pub const RCLONE_PREFIX: &str = "rclone:";

/// Chunk size of every stream.
const CHUNK: usize = 2 << 20;

/// Where a sync goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A directory on this host.
    Dir(PathBuf),
    /// An rclone remote and path, `NAME:PATH` (without the `rclone:`).
    Rclone(String),
}

impl Dest {
    /// `rclone:NAME:PATH` is a remote; anything else a directory.
    pub fn parse(s: &str) -> Result<Dest> {
        if let Some(rest) = s.strip_prefix(RCLONE_PREFIX) {
            let Some((name, _)) = rest.split_once(':') else {
                return Err(Error::Usage(format!(
                    "'{s}' is not an rclone destination: write rclone:NAME:PATH (NAME a remote \
                     of your rclone configuration)"
                )));
            };
            if name.is_empty() || name.starts_with('-') {
                return Err(Error::Usage(format!(
                    "'{s}' does not name an rclone remote before the second ':'"
                )));
            }
            return Ok(Dest::Rclone(rest.trim_end_matches('/').to_string()));
        }
        if s.is_empty() {
            return Err(Error::Usage("the sync destination is empty".into()));
        }
        Ok(Dest::Dir(PathBuf::from(s)))
    }

    /// Whether `s` names an rclone remote.
    pub fn is_remote(s: &Path) -> bool {
        s.to_string_lossy().starts_with(RCLONE_PREFIX)
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Dir(p) => write!(f, "{}", p.display()),
            Dest::Rclone(r) => write!(f, "{RCLONE_PREFIX}{r}"),
        }
    }
}

/// One object under a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path relative to the listed directory ('/'-separated).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An open destination.
#[derive(Debug, Clone)]
pub struct Far {
    /// Where.
    pub dest: Dest,
    rclone: Option<PathBuf>,
    bwlimit: Option<String>,
}

impl Far {
    /// Opens `dest`: a directory must exist (a missing mount is an error,
    /// never created); a remote needs rclone on PATH.
    pub fn open(dest: Dest, bwlimit: Option<String>) -> Result<Far> {
        let rclone = match &dest {
            Dest::Dir(p) => {
                if !p.is_absolute() {
                    return Err(Error::Usage(format!(
                        "sync destination '{}' is not an absolute path",
                        p.display()
                    )));
                }
                let m = std::fs::metadata(p).map_err(|e| {
                    Error::Usage(format!(
                        "sync destination '{}' cannot be used: {e} (a directory that exists, \
                         such as another disk's mount point, or rclone:NAME:PATH)",
                        p.display()
                    ))
                })?;
                if !m.is_dir() {
                    return Err(Error::Usage(format!(
                        "sync destination '{}' is not a directory",
                        p.display()
                    )));
                }
                None
            }
            Dest::Rclone(_) => Some(crate::host::process::find("rclone", "rclone")?),
        };
        Ok(Far {
            dest,
            rclone,
            bwlimit,
        })
    }

    /// `rel` (relative, '/'-separated) inside the destination.
    fn local(&self, rel: &str) -> PathBuf {
        match &self.dest {
            Dest::Dir(p) => p.join(rel),
            Dest::Rclone(_) => unreachable!("local path of a remote"),
        }
    }

    fn remote(&self, rel: &str) -> String {
        match &self.dest {
            Dest::Rclone(r) if rel.is_empty() => r.clone(),
            Dest::Rclone(r) if r.ends_with(':') => format!("{r}{rel}"),
            Dest::Rclone(r) => format!("{r}/{rel}"),
            Dest::Dir(_) => unreachable!("remote path of a directory"),
        }
    }

    /// What `rel` is, for messages.
    pub fn show(&self, rel: &str) -> String {
        match &self.dest {
            Dest::Dir(p) => p.join(rel).display().to_string(),
            Dest::Rclone(_) => format!("{RCLONE_PREFIX}{}", self.remote(rel)),
        }
    }

    fn rclone_args(&self, args: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = args.iter().map(OsString::from).collect();
        if let Some(b) = &self.bwlimit {
            v.push("--bwlimit".into());
            v.push(b.into());
        }
        v
    }

    /// rclone with `args` as a child whose data flows through a pipe (an
    /// upload's stdin, a download's stdout); its stderr is read by a thread.
    fn spawn_rclone(
        &self,
        args: &[&str],
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<(std::process::Child, String, std::thread::JoinHandle<String>)> {
        let bin = self.rclone.as_ref().expect("rclone for a remote");
        let args = self.rclone_args(args);
        let shown = crate::host::process::show_command(bin, &args);
        log::trace!("running {shown}");
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::CommandStart {
                command: shown.clone(),
                source,
            })?;
        let stderr = child.stderr.take().expect("piped stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        Ok((child, shown, err_reader))
    }

    fn run_rclone(&self, args: &[&str]) -> Result<Vec<u8>> {
        let bin = self.rclone.as_ref().expect("rclone for a remote");
        crate::host::process::run_bytes(bin, &self.rclone_args(args)).map_err(|e| self.failed(e))
    }

    fn failed(&self, e: Error) -> Error {
        Error::Far(format!("sync destination '{}': {e}", self.dest))
    }

    /// Every file below `rel`, recursively; None when `rel` does not exist.
    pub fn list(&self, rel: &str) -> Result<Option<Vec<Entry>>> {
        match &self.dest {
            Dest::Dir(_) => {
                let root = self.local(rel);
                if !root.exists() {
                    return Ok(None);
                }
                let mut out = Vec::new();
                walk(&root, "", &mut out)?;
                Ok(Some(out))
            }
            Dest::Rclone(_) => {
                let path = self.remote(rel);
                match self.run_rclone(&["lsjson", "-R", "--files-only", "--no-mimetype", &path]) {
                    Ok(out) => Ok(Some(parse_lsjson(&out).map_err(|e| {
                        Error::Far(format!(
                            "rclone lsjson of '{path}' said what fi-backup cannot read: {e}"
                        ))
                    })?)),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Every name (file or directory) right below `rel`; none when it does
    /// not exist.
    pub fn list_top(&self, rel: &str) -> Result<Vec<String>> {
        self.names_below(rel, false)
    }

    /// The directories right below `rel`; none when it does not exist.
    pub fn list_dirs(&self, rel: &str) -> Result<Vec<String>> {
        self.names_below(rel, true)
    }

    fn names_below(&self, rel: &str, dirs_only: bool) -> Result<Vec<String>> {
        let mut names = Vec::new();
        match &self.dest {
            Dest::Dir(_) => {
                let root = self.local(rel);
                let entries = match std::fs::read_dir(&root) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(e) => return Err(Error::io("cannot list sync destination", &root, e)),
                };
                for e in entries {
                    let e = e.map_err(|e| Error::io("cannot list", &root, e))?;
                    if !dirs_only || e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Dest::Rclone(_) => {
                let path = self.remote(rel);
                let mut args = vec!["lsjson", "--no-mimetype", "--no-modtime"];
                if dirs_only {
                    args.push("--dirs-only");
                }
                args.push(&path);
                let out = match self.run_rclone(&args) {
                    Ok(out) => out,
                    Err(e) if not_found(&e) => return Ok(names),
                    Err(e) => return Err(e),
                };
                names = parse_lsjson(&out)
                    .map_err(|e| Error::Far(format!("rclone lsjson of '{path}': {e}")))?
                    .into_iter()
                    .map(|e| e.path)
                    .collect();
            }
        }
        names.sort();
        Ok(names)
    }

    /// Small objects `rels` (records), each with its bytes or None when
    /// missing. From a remote, objects of one directory come in one rclone
    /// call.
    pub fn read_many(&self, rels: &[String]) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let parent = |r: &String| {
            r.rsplit_once('/')
                .map(|x| x.0.to_string())
                .unwrap_or_default()
        };
        let one_dir = rels.first().map(parent);
        let batch = matches!(self.dest, Dest::Rclone(_))
            && rels.len() > 2
            && rels.iter().all(|r| Some(parent(r)) == one_dir);
        if !batch {
            return rels
                .iter()
                .map(|r| Ok((r.clone(), self.read(r)?)))
                .collect();
        }
        let dir = one_dir.unwrap_or_default();
        let tmp = private_temp_dir()?;
        let list = tmp.join("list");
        let names: Vec<&str> = rels
            .iter()
            .map(|r| r.rsplit('/').next().unwrap_or(r))
            .collect();
        std::fs::write(&list, names.join("\n")).map_err(|e| Error::io("cannot write", &list, e))?;
        let into = tmp.join("got");
        let result = self.run_rclone(&[
            "copy",
            "--files-from-raw",
            &list.to_string_lossy(),
            &self.remote(&dir),
            &into.to_string_lossy(),
        ]);
        let out = result.map(|_| {
            rels.iter()
                .zip(&names)
                .map(|(r, n)| (r.clone(), std::fs::read(into.join(n)).ok()))
                .collect()
        });
        let _ = std::fs::remove_dir_all(&tmp);
        out
    }

    /// The whole object `rel` (small ones: records, the lock); None when it
    /// does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match &self.dest {
            Dest::Dir(_) => match crate::store::fsutil::read_input(
                &self.local(rel),
                crate::store::fsutil::MAX_SMALL_FILE,
            ) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("cannot read", self.local(rel), e)),
            },
            // No more than a small object can hold comes into memory.
            Dest::Rclone(_) => match self.run_rclone(&[
                "cat",
                "--head",
                &(crate::store::fsutil::MAX_SMALL_FILE + 1).to_string(),
                &self.remote(rel),
            ]) {
                Ok(b) if b.len() as u64 > crate::store::fsutil::MAX_SMALL_FILE => {
                    Err(self.failed(Error::State(format!(
                        "'{}' holds more than the {} bytes such a file can have; not read",
                        self.remote(rel),
                        crate::store::fsutil::MAX_SMALL_FILE
                    ))))
                }
                Ok(b) => Ok(Some(b)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Writes `bytes` as `rel` only if nothing has that name: Ok(false)
    /// when something has. A directory destination decides it atomically
    /// (link(2) of a temporary file); a remote has no such operation every
    /// backend offers, so there it is a plain write (Ok(true)).
    pub fn write_new(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        match &self.dest {
            Dest::Dir(_) => {
                let path = self.local(rel);
                let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                crate::store::fsutil::ensure_private_dir(&parent)?;
                let mut tmp = TempFile::beside(&path)?;
                tmp.file
                    .write_all(bytes)
                    .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
                match tmp.publish(&path) {
                    Ok(()) => Ok(true),
                    Err(Error::Exists(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Dest::Rclone(_) => self.write(rel, bytes).map(|()| true),
        }
    }

    /// Writes `bytes` as `rel`: a temporary name, then a rename over it.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let mut src = std::io::Cursor::new(bytes);
        self.put(&mut src, rel, None).map(|_| ())
    }

    /// Uploads the local file `src` as `rel`, reading it once through
    /// BLAKE3: when the checksum is not `blake3`, nothing is published and
    /// the error says the home file is damaged. Returns the bytes sent.
    pub fn upload(&self, src: &Path, rel: &str, blake3: &str) -> Result<u64> {
        let mut f = std::fs::File::open(src).map_err(|e| Error::io("cannot open", src, e))?;
        crate::host::ffi::advise(&f, 0, 0, crate::host::ffi::Advice::Sequential);
        self.put(&mut f, rel, Some((src, blake3)))
    }

    fn put(&self, src: &mut dyn Read, rel: &str, expect: Option<(&Path, &str)>) -> Result<u64> {
        match &self.dest {
            Dest::Dir(_) => self.put_dir(src, rel, expect),
            Dest::Rclone(_) => self.put_rclone(src, rel, expect),
        }
    }

    /// `put` into a directory: a temporary file beside the object (all-zero
    /// chunks as holes), checked, then renamed.
    fn put_dir(&self, src: &mut dyn Read, rel: &str, expect: Option<(&Path, &str)>) -> Result<u64> {
        let name = rel.rsplit_once('/').map_or(rel, |(_, n)| n);
        let final_path = self.local(rel);
        let parent = final_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        crate::store::fsutil::ensure_private_dir(&parent)?;
        let mut tmp = TempFile::create(&parent, name)?;
        let (sent, hash) = pump(src, |off, chunk| {
            if chunk.iter().all(|&b| b == 0) {
                return Ok(());
            }
            tmp.file.seek(SeekFrom::Start(off))?;
            tmp.file.write_all(chunk)
        })
        .map_err(|e| Error::io("cannot write", &tmp.path, e))?;
        tmp.file
            .set_len(sent)
            .map_err(|e| Error::io("cannot extend (ftruncate)", &tmp.path, e))?;
        check_hash(expect, &hash)?;
        crate::fault::check("sync-before-rename")?;
        tmp.replace(&final_path)?;
        Ok(sent)
    }

    /// `put` to an rclone remote: `rclone rcat` into a temporary object
    /// beside it, checked, then `rclone moveto`; a temporary object of a
    /// failed or refused upload is deleted.
    fn put_rclone(
        &self,
        src: &mut dyn Read,
        rel: &str,
        expect: Option<(&Path, &str)>,
    ) -> Result<u64> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let temp_name = format!("{TEMP_PREFIX}{name}.{}", std::process::id());
        let tmp = if dir.is_empty() {
            temp_name
        } else {
            format!("{dir}/{temp_name}")
        };
        let (mut child, shown, err_reader) =
            self.spawn_rclone(&["rcat", &self.remote(&tmp)], Stdio::piped(), Stdio::null())?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let pumped = pump(src, |_, chunk| stdin.write_all(chunk));
        drop(stdin);
        let status = child.wait().map_err(|source| Error::CommandStart {
            command: shown.clone(),
            source,
        })?;
        let stderr = err_reader.join().unwrap_or_default();
        let (sent, hash) = match (pumped, status.success()) {
            (Ok(v), true) => v,
            (pumped, _) => {
                let _ = self.delete(&tmp);
                return Err(self.failed(Error::CommandFailed {
                    command: shown,
                    status: status.to_string(),
                    stderr: match pumped {
                        Err(e) => format!("{} (writing to it: {e})", stderr.trim()),
                        Ok(_) => stderr,
                    },
                }));
            }
        };
        if let Err(e) = check_hash(expect, &hash) {
            let _ = self.delete(&tmp);
            return Err(e);
        }
        crate::fault::check("sync-before-rename")?;
        self.run_rclone(&["moveto", &self.remote(&tmp), &self.remote(rel)])?;
        Ok(sent)
    }

    /// Reads the object `rel` through BLAKE3, writing it into `into` when
    /// given (all-zero chunks as holes); returns its size and checksum.
    pub fn stream(&self, rel: &str, into: Option<&mut std::fs::File>) -> Result<(u64, String)> {
        let mut sink = into;
        let mut put = |off: u64, chunk: &[u8]| -> std::io::Result<()> {
            if let Some(f) = sink.as_deref_mut() {
                if !chunk.iter().all(|&b| b == 0) {
                    f.seek(SeekFrom::Start(off))?;
                    f.write_all(chunk)?;
                }
            }
            Ok(())
        };
        let (size, hash) = match &self.dest {
            Dest::Dir(_) => {
                let path = self.local(rel);
                let mut f =
                    std::fs::File::open(&path).map_err(|e| Error::io("cannot open", &path, e))?;
                pump(&mut f, &mut put).map_err(|e| Error::io("cannot read", &path, e))?
            }
            Dest::Rclone(_) => {
                let (mut child, shown, err_reader) =
                    self.spawn_rclone(&["cat", &self.remote(rel)], Stdio::null(), Stdio::piped())?;
                let mut out = child.stdout.take().expect("piped stdout");
                let pumped = pump(&mut out, &mut put);
                let status = child.wait().map_err(|source| Error::CommandStart {
                    command: shown.clone(),
                    source,
                })?;
                let stderr = err_reader.join().unwrap_or_default();
                match (pumped, status.success()) {
                    (Ok(v), true) => v,
                    _ => {
                        return Err(self.failed(Error::CommandFailed {
                            command: shown,
                            status: status.to_string(),
                            stderr,
                        }))
                    }
                }
            }
        };
        if let Some(f) = sink {
            f.set_len(size)
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io("cannot write the fetched copy", rel, e))?;
        }
        Ok((size, hash))
    }

    /// Removes the object `rel` (gone already is fine).
    pub fn delete(&self, rel: &str) -> Result<()> {
        match &self.dest {
            Dest::Dir(_) => match std::fs::remove_file(self.local(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("cannot remove", self.local(rel), e)),
            },
            Dest::Rclone(_) => match self.run_rclone(&["deletefile", &self.remote(rel)]) {
                Ok(_) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// fsyncs the directory of `rel` (a directory destination; a remote's
    /// writes are durable when rclone returns).
    pub fn sync_dir(&self, rel: &str) -> Result<()> {
        match &self.dest {
            Dest::Dir(_) => crate::store::fsutil::sync_dir(&self.local(rel)),
            Dest::Rclone(_) => Ok(()),
        }
    }
}

/// A new directory (0700) under the system's temporary directory.
fn private_temp_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fi-backup-sync.{}.{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("cannot create", &dir, e))?;
    Ok(dir)
}

/// Err when a file read with BLAKE3 `got` is not what its record says
/// (`expect`: the file and the recorded BLAKE3): damaged, or changed by a
/// prune while it was read.
fn check_hash(expect: Option<(&Path, &str)>, got: &str) -> Result<()> {
    match expect {
        Some((path, want)) if got != want => Err(Error::Copy(format!(
            "'{}' reads with BLAKE3 {got}, its record says {want}: it was not sent; \
             it is damaged (fi-backup verify names the points it breaks), or a prune \
             changed it while it was read (the next sync sends what is there then)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads `src` to its end in chunks through BLAKE3, handing each chunk and
/// its offset to `sink`; returns the length and the checksum. Stops at a
/// SIGINT or SIGTERM.
fn pump(
    src: &mut dyn Read,
    mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<(u64, String)> {
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = blake3::Hasher::new();
    let mut off = 0u64;
    loop {
        if crate::cmd::signals::requested().is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted by a signal",
            ));
        }
        let mut filled = 0;
        while filled < CHUNK {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update(&buf[..filled]);
        sink(off, &buf[..filled])?;
        off += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    Ok((off, hasher.finalize().to_hex().to_string()))
}

/// Files below `dir`, with paths relative to the listed root.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io("cannot list", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let m = std::fs::symlink_metadata(e.path())
            .map_err(|err| Error::io("cannot stat", e.path(), err))?;
        if m.is_dir() {
            walk(&e.path(), &path, out)?;
        } else {
            out.push(Entry {
                path,
                // Not a regular file: never taken for an object of ours.
                size: if m.is_file() { m.len() } else { u64::MAX },
            });
        }
    }
    Ok(())
}

/// rclone's "directory not found" (3) and "file not found" (4) exits.
fn not_found(e: &Error) -> bool {
    let Error::Far(m) = e else { return false };
    m.contains("(exit status: 3)") || m.contains("(exit status: 4)")
}

/// `rclone lsjson` output: Path and Size of each entry.
fn parse_lsjson(out: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(rename = "Path")]
        path: String,
        #[serde(rename = "Size")]
        size: i64,
    }
    let items: Vec<Item> = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    Ok(items
        .into_iter()
        .map(|i| Entry {
            path: i.path,
            size: u64::try_from(i.size).unwrap_or(u64::MAX),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let cases: &[(&str, std::result::Result<Dest, &str>)] = &[
            ("/mnt/offsite", Ok(Dest::Dir("/mnt/offsite".into()))),
            (
                "rclone:s3:bucket/fi",
                Ok(Dest::Rclone("s3:bucket/fi".into())),
            ),
            (
                "rclone:sftp:/srv/fi/",
                Ok(Dest::Rclone("sftp:/srv/fi".into())),
            ),
            ("rclone:crypt:", Ok(Dest::Rclone("crypt:".into()))),
            ("rclone:nocolon", Err("not an rclone destination")),
            ("rclone::path", Err("does not name an rclone remote")),
            ("rclone:-x:path", Err("does not name an rclone remote")),
            ("", Err("empty")),
        ];
        for (s, want) in cases {
            match (Dest::parse(s), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{s}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{s}: {e}"),
                (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lsjson() {
        let out =
            br#"[{"Path":"images/a.qcow2.0123456789abcdef","Name":"a","Size":42,"IsDir":false},
                       {"Path":"points/x.json","Name":"x.json","Size":-1,"IsDir":false}]"#;
        let got = parse_lsjson(out).unwrap();
        assert_eq!(got[0].path, "images/a.qcow2.0123456789abcdef");
        assert_eq!(got[0].size, 42);
        assert_eq!(got[1].size, u64::MAX);
        assert!(parse_lsjson(b"not json").is_err());
    }

    #[test]
    fn pump_hashes_and_offsets() {
        let data = vec![7u8; CHUNK + 10];
        let mut seen = Vec::new();
        let (n, h) = pump(&mut &data[..], |off, c| {
            seen.push((off, c.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, blake3::hash(&data).to_hex().to_string());
        assert_eq!(seen, vec![(0, CHUNK), (CHUNK as u64, 10)]);
    }
}
