//! Unpacks a layer blob (tar, gzip or zstd) into a directory that overlayfs
//! can use as a lower dir: OCI whiteouts become overlayfs whiteouts.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

/// The prefix OCI marks a deleted file with (`.wh.NAME`).
const WHITEOUT: &str = ".wh.";
/// The OCI marker that hides everything lower layers have in a directory.
const OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads for an opaque directory.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// Unpacks the layer blob at `blob` into `dest`, which must not exist yet;
/// the compression is told by the blob's first bytes.
pub(super) fn unpack(blob: &Path, dest: &Path) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(blob)?);
    let magic = reader.fill_buf()?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        unpack_tar(flate2::bufread::MultiGzDecoder::new(reader), dest)
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        unpack_tar(Zstd::new(reader)?, dest)
    } else {
        unpack_tar(reader, dest)
    }
}

/// Unpacks a tar stream into `dest`, keeping modes, owners, xattrs and
/// links, and turning whiteouts into their overlayfs form.
pub(super) fn unpack_tar(reader: impl Read, dest: &Path) -> io::Result<()> {
    fs::create_dir(dest)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let context = |err: io::Error| {
            // tar's errors keep the cause (`Permission denied`) as a source.
            let mut message = format!("{}: {err}", path.display());
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            io::Error::new(err.kind(), message)
        };
        match path.file_name().and_then(OsStr::to_str) {
            Some(OPAQUE) => {
                let dir = inside(dest, path.parent().unwrap_or(Path::new(""))).map_err(context)?;
                rustix::fs::setxattr(&dir, OVERLAY_OPAQUE, b"y", rustix::fs::XattrFlags::empty())
                    .map_err(|err| context(err.into()))?;
            }
            Some(name) if name.starts_with(WHITEOUT) => {
                let hidden = &name[WHITEOUT.len()..];
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(context(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a valid whiteout",
                    )));
                }
                let dir = inside(dest, path.parent().unwrap_or(Path::new(""))).map_err(context)?;
                whiteout(&dir.join(hidden)).map_err(context)?;
            }
            _ => {
                if !entry.unpack_in(dest).map_err(context)? {
                    return Err(context(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the path leaves the layer",
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The directory `relative` names under `dest`, created when missing;
/// refuses `..` and symlinks on the way so nothing outside `dest` is touched.
fn inside(dest: &Path, relative: &Path) -> io::Result<PathBuf> {
    let mut dir = dest.to_path_buf();
    for component in relative.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(name) => {
                dir.push(name);
                match fs::symlink_metadata(&dir) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is not a directory", dir.display()),
                        ));
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
                    Err(err) => return Err(err),
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the path leaves the layer",
                ));
            }
        }
    }
    Ok(dir)
}

/// Makes `path` an overlayfs whiteout: a 0/0 character device.
fn whiteout(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

/// A zstd stream of one or more frames (a compressor may split a large
/// layer into several).
struct Zstd<R: BufRead> {
    decoder: Option<StreamingDecoder<R, FrameDecoder>>,
}

impl<R: BufRead> Zstd<R> {
    fn new(source: R) -> io::Result<Self> {
        Ok(Self {
            decoder: Some(StreamingDecoder::new(source).map_err(io::Error::other)?),
        })
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(mut source) = self.decoder.take().map(StreamingDecoder::into_inner) else {
                return Ok(0);
            };
            if !source.fill_buf()?.is_empty() {
                self.decoder = Some(StreamingDecoder::new(source).map_err(io::Error::other)?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8], mode: u32) {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        header.set_uid(1234);
        header.set_gid(5678);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, body)
            .expect("appending a file");
    }

    fn dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Directory);
        builder
            .append_data(&mut header, path, io::empty())
            .expect("appending a directory");
    }

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("finishing the tar")
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = layer(|b| {
            dir(b, "etc/");
            file(b, "etc/.wh.passwd", b"", 0o600);
            file(b, "etc/kept", b"kept", 0o640);
            dir(b, "var/cache/");
            file(b, "var/cache/.wh..wh..opq", b"", 0o600);
            file(b, "tmp/.wh.gone", b"", 0o600);
        });
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("layer");
        unpack_tar(&tar[..], &dest).expect("unpacks");

        let passwd = fs::symlink_metadata(dest.join("etc/passwd")).expect("whiteout made");
        assert!(passwd.file_type().is_char_device());
        assert_eq!(passwd.rdev(), 0);
        assert!(!dest.join("etc/.wh.passwd").exists());
        let kept = fs::metadata(dest.join("etc/kept")).expect("kept");
        assert_eq!(kept.permissions().mode() & 0o777, 0o640);
        assert_eq!((kept.uid(), kept.gid()), (1234, 5678));
        // The whiteout's directory did not appear in the tar of its own.
        assert!(
            fs::symlink_metadata(dest.join("tmp/gone"))
                .expect("made")
                .file_type()
                .is_char_device()
        );
        let opaque = rustix::fs::getxattr(dest.join("var/cache"), OVERLAY_OPAQUE, &mut [0u8; 8])
            .expect("opaque xattr");
        assert_eq!(opaque, 1);
        assert!(!dest.join("var/cache/.wh..wh..opq").exists());
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks_out() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("outside dir");
        fs::write(outside.join("victim"), b"x").expect("victim");
        let tar = layer(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut header, "escape", &outside)
                .expect("symlink");
            file(b, "escape/.wh.victim", b"", 0o600);
        });
        let err = unpack_tar(&tar[..], &tmp.path().join("layer")).expect_err("refused");
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(outside.join("victim").is_file());
    }

    #[test]
    fn compressed_layers() {
        use std::io::Write as _;
        let tar = layer(|b| file(b, "bin/hello", b"hello", 0o755));
        let tmp = tempfile::tempdir().expect("tempdir");

        let gz = tmp.path().join("layer.tar.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            File::create(&gz).expect("gz"),
            flate2::Compression::fast(),
        );
        encoder.write_all(&tar).expect("compressing");
        encoder.finish().expect("finishing");
        unpack(&gz, &tmp.path().join("gz")).expect("gzip unpacks");
        assert_eq!(
            fs::read(tmp.path().join("gz/bin/hello")).expect("read"),
            b"hello"
        );

        let plain = tmp.path().join("layer.tar");
        fs::write(&plain, &tar).expect("tar");
        unpack(&plain, &tmp.path().join("plain")).expect("tar unpacks");
        assert!(tmp.path().join("plain/bin/hello").is_file());
    }
}
