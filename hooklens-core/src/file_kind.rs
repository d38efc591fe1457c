//! What kind of file-system object a path is, for the errors that refuse anything but a
//! regular file (a FIFO would hang a reader, a device never ends).

/// `"a FIFO"`, `"a device"`, `"a socket"`, `"a directory"` or `"not a regular file"`, for
/// a message about `meta`'s object.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_a_directory_and_a_device() {
        let dir = std::fs::metadata(std::env::temp_dir()).unwrap();
        assert_eq!(super::file_kind(&dir), "a directory");
        #[cfg(unix)]
        assert_eq!(super::file_kind(&std::fs::metadata("/dev/null").unwrap()), "a device");
    }
}
