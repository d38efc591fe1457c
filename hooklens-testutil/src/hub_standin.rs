//! The Hugging Face hub with no network: a stand-in for it on loopback that serves
//! files and records what was asked, and caches laid out as Python's `huggingface_hub`
//! lays them out (`models--{org}--{name}/refs/main`, `snapshots/{commit}/...`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The commit the stand-in reports, and the snapshot [`cache_repo`] fills.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The environment variables that send HTTP requests through a proxy.
pub const PROXY_VARS: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// How long a [`StandIn`] serves at most, stopped or not.
const LIFETIME: Duration = Duration::from_secs(60);

/// How many requests a [`StandIn`] answers at most.
const MAX_REQUESTS: usize = 256;

/// Whether an HTTP proxy from the environment would take loopback requests away; if
/// so, says on stderr that the test calling it is skipped.
pub fn skipped_for_proxy() -> bool {
    let proxied = PROXY_VARS.iter().any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if proxied {
        eprintln!("skipped: an HTTP proxy is set, loopback requests would go through it");
    }
    proxied
}

/// An endpoint on loopback where connections are refused, as with no network: a port
/// that was just free, `http://127.0.0.1:{port}`.
pub fn refused_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

/// Every file of `dir` (not its folders), as `(prefix + name, path)`, sorted.
pub fn files_of(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (format!("{prefix}{}", e.file_name().to_string_lossy()), e.path()))
        .collect();
    out.sort();
    out
}

/// The folder of `repo` (`org/name`) in a hub cache `cache`: `models--org--name`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Places `files` (`(path in the repo, source)`) in `cache` as `huggingface_hub` would
/// have downloaded them into `repo`'s snapshot [`COMMIT`], `refs/main` pointing at it;
/// the snapshot's folder.
pub fn cache_repo(cache: &Path, repo: &str, files: &[(String, PathBuf)]) -> PathBuf {
    let root = repo_dir(cache, repo);
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, src) in files {
        let dst = snap.join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    snap
}

/// A stand-in for the Hugging Face hub on loopback (`127.0.0.1`, a free port):
/// `GET /{repo}/resolve/{revision}/{path}` answers with the file served as `path` (any
/// repository, any revision), with the headers `hf-hub` reads (etag, [`COMMIT`],
/// content range); other paths are 404. It serves until [`StandIn::finish`] or drop,
/// 60 seconds and 256 requests at most, and records the paths asked for.
pub struct StandIn {
    /// Its address, `http://127.0.0.1:{port}`: the endpoint to download from.
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl StandIn {
    /// Serves `files`, `(path in the repo, source)`, from a thread of its own.
    pub fn serve(files: Vec<(String, PathBuf)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            let mut asked = Vec::new();
            while asked.len() < MAX_REQUESTS && Instant::now() < deadline && !stopped.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let (mut start, mut end) = (0usize, None::<usize>);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                        start = a.parse().unwrap_or(0);
                        end = b.parse().ok();
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                // `/{repo}/resolve/{revision}/{file path}`, the repository with or
                // without an organisation.
                let in_repo = path
                    .split_once("/resolve/")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map_or("", |(_, p)| p)
                    .to_string();
                asked.push(path);
                let body = files
                    .iter()
                    .find(|(name, _)| *name == in_repo)
                    .and_then(|(_, p)| std::fs::read(p).ok());
                let _ = stream.write_all(&response(&in_repo, body, start, end));
            }
            asked
        });
        StandIn {
            endpoint,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops serving; the request paths it answered, in order.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to a request for `in_repo`: its `body` (the part a range asked for, as
/// `206 Partial Content`), or 404 when there is none.
fn response(in_repo: &str, body: Option<Vec<u8>>, start: usize, end: Option<usize>) -> Vec<u8> {
    let Some(body) = body else {
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec();
    };
    let end = end.unwrap_or(body.len() - 1).min(body.len() - 1);
    let part = &body[start.min(body.len())..=end];
    let mut r = format!(
        "HTTP/1.1 206 Partial Content\r\netag: \"etag-{in_repo}\"\r\nx-repo-commit: {COMMIT}\r\n\
         content-range: bytes {start}-{end}/{}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len(),
        part.len()
    )
    .into_bytes();
    r.extend_from_slice(part);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the stand-in answers to `GET path` with the header lines `headers`.
    fn get(endpoint: &str, path: &str, headers: &str) -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_by_path_in_the_repository_and_records_requests() {
        let tmp = crate::TempDir::new("hub-standin");
        std::fs::create_dir_all(tmp.path("src")).unwrap();
        std::fs::write(tmp.path("src/a.txt"), "hello world").unwrap();
        let files = files_of(&tmp.path("src"), "sub/");
        assert_eq!(files, [("sub/a.txt".to_string(), tmp.path("src/a.txt"))]);
        let server = StandIn::serve(files.clone());
        assert!(server.endpoint.starts_with("http://127.0.0.1:"));
        let whole = get(&server.endpoint, "/org/r/resolve/main/sub/a.txt", "");
        assert!(
            whole.starts_with("HTTP/1.1 206") && whole.ends_with("\r\n\r\nhello world"),
            "{whole}"
        );
        assert!(whole.contains(&format!("x-repo-commit: {COMMIT}")), "{whole}");
        let part = get(&server.endpoint, "/r/resolve/x/sub/a.txt", "range: bytes=6-\r\n");
        assert!(
            part.contains("content-range: bytes 6-10/11") && part.ends_with("world"),
            "{part}"
        );
        let missing = get(&server.endpoint, "/org/r/resolve/main/a.txt", "");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(
            server.finish(),
            [
                "/org/r/resolve/main/sub/a.txt",
                "/r/resolve/x/sub/a.txt",
                "/org/r/resolve/main/a.txt"
            ]
        );

        let refused = refused_endpoint();
        assert!(refused.starts_with("http://127.0.0.1:"), "{refused}");
        let addr = refused.trim_start_matches("http://");
        assert!(std::net::TcpStream::connect(addr).is_err(), "{refused}");

        let snap = cache_repo(&tmp.path("cache"), "org/r", &files);
        assert_eq!(
            snap,
            repo_dir(&tmp.path("cache"), "org/r").join("snapshots").join(COMMIT)
        );
        assert_eq!(std::fs::read_to_string(snap.join("sub/a.txt")).unwrap(), "hello world");
        let main = tmp.path("cache/models--org--r/refs/main");
        assert_eq!(std::fs::read_to_string(main).unwrap(), COMMIT);
    }
}
