//! `hooklens attribute --transcoders REPO[:FOLDER]`: circuit-tracer transcoders from the
//! Hugging Face hub, with no network: placed in a cache laid out as `huggingface_hub`
//! lays it out, or served by a stand-in for the hub on loopback (`HF_ENDPOINT`). The
//! graph must be the one the same transcoders give from a folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// The commit the stand-in reports, and the prepared caches' snapshot.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn case(name: &str) -> PathBuf {
    root().join("testdata").join(name)
}

/// Every file of `dir`, as `(prefix + name, path)`.
fn files_of(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (format!("{prefix}{}", e.file_name().to_string_lossy()), e.path()))
        .collect();
    out.sort();
    out
}

/// Places `files` (`(path in the repo, source)`) in `cache` as `huggingface_hub` would
/// have downloaded them into `repo`'s snapshot [`COMMIT`], `refs/main` pointing at it.
fn cache_repo(cache: &Path, repo: &str, files: &[(String, PathBuf)]) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(COMMIT);
    for (name, src) in files {
        let dst = snap.join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
}

/// A stand-in for the Hugging Face hub on loopback: `GET /{repo}/resolve/{rev}/{path}`
/// answers with the file served as `path`, with the headers `hf-hub` reads (etag,
/// commit, content range); other paths are 404. It serves until stopped (60 seconds at
/// most) and records the paths asked for.
struct StandIn {
    endpoint: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl StandIn {
    fn serve(files: Vec<(String, PathBuf)>) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut asked = Vec::new();
            while std::time::Instant::now() < deadline && !stopped.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
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
                // `/{org}/{name}/resolve/{revision}/{file path}`
                let in_repo = path.splitn(6, '/').nth(5).unwrap_or("").to_string();
                asked.push(path);
                let body = files
                    .iter()
                    .find(|(name, _)| *name == in_repo)
                    .and_then(|(_, p)| std::fs::read(p).ok());
                let response = match body {
                    None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                    Some(body) => {
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
                };
                let _ = stream.write_all(&response);
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
    fn finish(mut self) -> Vec<String> {
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

/// `hooklens attribute` on reference case `name` with `--transcoders transcoders`,
/// writing the graph file to `out`; the Hugging Face cache is `cache`, offline unless
/// `endpoint` is given (then downloading from it, past any proxy of the environment).
fn attribute(name: &str, transcoders: &str, out: &Path, cache: &Path, endpoint: Option<&str>) -> Output {
    let dir = case(name);
    let mut cmd = offline_command(&[
        "attribute".as_ref(),
        "--model".as_ref(),
        dir.join("model").as_os_str(),
        "--tokens".as_ref(),
        dir.join("tokens.safetensors").as_os_str(),
        "--transcoders".as_ref(),
        transcoders.as_ref(),
        "--max-n-logits".as_ref(),
        "5".as_ref(),
        "--slug".as_ref(),
        "hub".as_ref(),
        "--quiet".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    cmd.env("HF_HUB_CACHE", cache).env_remove("HF_TOKEN");
    if let Some(endpoint) = endpoint {
        cmd.env_remove("HF_HUB_OFFLINE").env("HF_ENDPOINT", endpoint);
        for k in [
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
        ] {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("the hooklens binary runs")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn transcoders_from_a_prepared_cache_give_the_folders_graph() {
    let tmp = TempDir::new("attribute-hub-cache");
    let cache = tmp.path("cache");
    cache_repo(&cache, "org/plt", &files_of(&case("circuits/transcoders"), ""));
    cache_repo(
        &cache,
        "org/many",
        &files_of(&case("circuits-clt/transcoders"), "sets/clt/"),
    );
    for (name, spec) in [("circuits", "org/plt"), ("circuits-clt", "org/many:sets/clt")] {
        let from_hub = tmp.path(&format!("{name}-hub.json"));
        let stdout = ok_stdout(attribute(name, spec, &from_hub, &cache, None));
        assert!(stdout.contains("5 logit targets"), "{spec}: {stdout}");
        let from_dir = tmp.path(&format!("{name}-dir.json"));
        let folder = case(name).join("transcoders");
        ok_stdout(attribute(name, folder.to_str().unwrap(), &from_dir, &cache, None));
        assert_eq!(json(&from_hub), json(&from_dir), "{spec}");
    }
    // Nothing cached, offline: an error naming the repository and why.
    let err = fails(
        attribute("circuits", "org/absent", &tmp.path("absent.json"), &cache, None),
        "`org/absent`",
    );
    assert!(err.contains("config.yaml") && err.contains("HF_HUB_OFFLINE"), "{err}");
    let err = fails(
        attribute("circuits", "org/plt:sub", &tmp.path("sub.json"), &cache, None),
        "sub/config.yaml",
    );
    assert!(err.contains("`org/plt`") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(!tmp.path("absent.json").exists() && !tmp.path("sub.json").exists());
}

#[test]
fn transcoders_download_from_the_hub_then_work_offline() {
    let tmp = TempDir::new("attribute-hub-download");
    let cache = tmp.path("cache");
    let server = StandIn::serve(files_of(&case("circuits/transcoders"), "tc/"));
    let out = tmp.path("hub.json");
    let got = attribute("circuits", "org/plt:tc", &out, &cache, Some(&server.endpoint));
    let asked = server.finish();
    let stdout = ok_stdout(got);
    assert!(stdout.contains("5 logit targets"), "{stdout}");
    // Metadata and body of config.yaml, layer_0 and layer_1; nothing else.
    assert_eq!(asked.len(), 6, "{asked:?}");
    assert!(
        asked.iter().all(|p| p.starts_with("/org/plt/resolve/main/tc/")),
        "{asked:?}"
    );
    let snap = cache.join("models--org--plt/snapshots").join(COMMIT).join("tc");
    assert!(snap.join("config.yaml").is_file() && snap.join("layer_1.safetensors").is_file());
    // Cached now: offline gives the same graph.
    let again = tmp.path("again.json");
    let stdout = ok_stdout(attribute("circuits", "org/plt:tc", &again, &cache, None));
    assert!(stdout.contains("5 logit targets"), "{stdout}");
    assert_eq!(json(&out), json(&again));
}
