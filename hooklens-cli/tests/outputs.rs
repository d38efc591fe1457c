//! What `--out` may be and what a write leaves behind (issue 18): never a device, a
//! FIFO, a directory or one of the run's own inputs; `-` only where the format is
//! text; a name near the file-name limit works; a writer killed mid-write leaves a
//! temporary file that the next write removes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// [`common::fails`], with the exit status of a handled error (1) rather than any failure.
fn fails(o: Output, needle: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "not a clean error: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::fails(o, needle)
}

/// `harvest` of `blocks.0.hook_resid_post` over the text in `corpus` into `out`.
fn harvest_to(model: &Path, corpus: &Path, out: &Path) -> Vec<String> {
    vec![
        "harvest".into(),
        "--model".into(),
        model.to_string_lossy().into_owned(),
        "--input".into(),
        corpus.to_string_lossy().into_owned(),
        "--names".into(),
        "blocks.0.hook_resid_post".into(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ]
}

/// `cache` of the tiny model's reference tokens into `out`.
fn cache_to(model: &Path, out: &Path) -> Vec<String> {
    vec![
        "cache".into(),
        "--model".into(),
        model.to_string_lossy().into_owned(),
        "--tokens".into(),
        tiny_tokens().to_string_lossy().into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ]
}

/// A copy of the tiny model's directory in `tmp`.
fn model_copy(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path("model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

/// Names in `dir` starting with a dot: temporary files.
fn hidden(dir: &Path) -> Vec<String> {
    hidden_files(dir).unwrap()
}

#[test]
fn out_is_never_a_device_a_fifo_or_a_directory() {
    let tmp = TempDir::new("out-kinds");
    let fifo = tmp.path("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let model = tiny_model();
    // A device of our own where we may make one (as root, which could also replace the
    // system's /dev/null should this check ever fail); /dev/null otherwise, which a
    // user who is not root cannot replace anyway.
    let own = tmp.path("null-device");
    let made = std::process::Command::new("mknod")
        .args([own.as_os_str(), "c".as_ref(), "1".as_ref(), "3".as_ref()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let device = if made { own } else { PathBuf::from("/dev/null") };
    fails(hooklens(&cache_to(&model, &device)), "is a device");
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&device).unwrap().file_type().is_char_device());
    }
    fails(hooklens(&cache_to(&model, &fifo)), "is a FIFO");
    fails(hooklens(&cache_to(&model, &tmp.0)), "is a directory");
    // A link is followed to see what it leads to.
    let link = tmp.path("null-link");
    std::os::unix::fs::symlink(&device, &link).unwrap();
    fails(hooklens(&cache_to(&model, &link)), "is a device");
    // Safetensors never goes to standard output; an HTML page may.
    fails(hooklens(&cache_to(&model, Path::new("-"))), "--out -: standard output");
    let o = hooklens(&[
        "attention",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a b c",
        "--out",
        "-",
    ]);
    ok_stderr(o.clone());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("<html"),
        "no page on stdout"
    );
    // The harvest's directory: not a file, not a FIFO.
    let corpus = tmp.path("c.txt");
    std::fs::write(&corpus, "a b c\n").unwrap();
    for out in [&fifo, &corpus] {
        fails(hooklens(&harvest_to(&model, &corpus, out)), "expected a directory");
    }
}

#[test]
fn out_onto_an_input_is_refused_before_anything_is_written() {
    let tmp = TempDir::new("out-input");
    let model = model_copy(&tmp);
    let weights = model.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    // However the path is spelled: directly, through `..`, through a link, a hard link.
    let link = tmp.path("weights-link");
    std::os::unix::fs::symlink(&weights, &link).unwrap();
    let hard = tmp.path("weights-hard");
    std::fs::hard_link(&weights, &hard).unwrap();
    for out in [
        weights.clone(),
        model.join("..").join("model").join("model.safetensors"),
        link,
        hard,
        model.join("config.json"),
    ] {
        fails(hooklens(&cache_to(&model, &out)), "writing it would destroy the input");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before, "the checkpoint was touched");
    ok_stderr(hooklens(&cache_to(&model, &tmp.path("fine.safetensors"))));
    // The tokens file is an input too, and so is a harvest's corpus.
    let tokens = tmp.path("tokens.safetensors");
    std::fs::copy(tiny_tokens(), &tokens).unwrap();
    let mut args = cache_to(&model, &tokens);
    args[4] = tokens.to_string_lossy().into_owned();
    fails(hooklens(&args), "is the input");
    let out = tmp.path("harvest");
    std::fs::create_dir_all(&out).unwrap();
    let corpus = out.join("00000-of-00001-manifest.json");
    std::fs::write(&corpus, "a b c\n").unwrap();
    let mut args = harvest_to(&model, &corpus, &out);
    args.extend(["--input-format".into(), "text".into()]);
    fails(hooklens(&args), "writing it would destroy the input");
    assert_eq!(std::fs::read_to_string(&corpus).unwrap(), "a b c\n");
}

#[test]
fn an_output_name_near_the_file_name_limit_is_written() {
    let tmp = TempDir::new("out-long");
    let name = "x".repeat(255 - ".safetensors".len()) + ".safetensors";
    assert_eq!(name.len(), 255);
    ok_stderr(hooklens(&cache_to(&tiny_model(), &tmp.path(&name))));
    assert!(tmp.path(&name).is_file());
    assert!(hidden(&tmp.0).is_empty(), "{:?}", hidden(&tmp.0));
}

#[test]
fn a_cache_killed_mid_write_leaves_a_temporary_that_the_next_write_removes() {
    let tmp = TempDir::new("out-killed");
    let out = tmp.path("cache.safetensors");
    let mut child = spawn_paused_mid_write(&cache_to(&tiny_model(), &out));
    // The writer pauses halfway through the file, with bytes on disk: the kill lands
    // mid-write every time.
    let deadline = Instant::now() + Duration::from_secs(60);
    let temp = loop {
        if let Some(name) = hidden(&tmp.0).into_iter().next() {
            let len = std::fs::metadata(tmp.path(&name)).map(|m| m.len()).unwrap_or(0);
            if len > 0 {
                break name;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "cache ended before it wrote");
        assert!(Instant::now() < deadline, "no temporary file after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "the cut file sits at its final path");
    assert!(tmp.path(&temp).exists());
    ok_stderr(hooklens(&cache_to(&tiny_model(), &out)));
    assert!(out.is_file());
    assert!(hidden(&tmp.0).is_empty(), "left behind: {:?}", hidden(&tmp.0));
}

/// Files written by `cache` and `harvest` follow the umask, as the HTML and manifest
/// files do (a group reading a shared harvest directory needs it).
#[test]
fn written_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("umask");
    let corpus = tmp.path("corpus.txt");
    std::fs::write(&corpus, "one two three four five\n".repeat(20)).unwrap();
    let bin = env!("CARGO_BIN_EXE_hooklens");
    let model = tiny_model().display().to_string();
    let tokens = tiny_tokens().display().to_string();
    for (umask, want) in [("002", 0o664), ("022", 0o644)] {
        let cache = tmp.path(&format!("c{umask}.safetensors"));
        let acts = tmp.path(&format!("acts{umask}"));
        let script = format!(
            "umask {umask} && {bin} cache --model {model} --tokens {tokens} --out {} && \
             {bin} harvest --model {model} --input {} --names hook_embed --context-size 8 --quiet --out {}",
            cache.display(),
            corpus.display(),
            acts.display()
        );
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), want, "cache file under umask {umask}");
        for e in std::fs::read_dir(&acts).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "safetensors" || x == "json") {
                assert_eq!(mode(&p), want, "{} under umask {umask}", p.display());
            }
        }
    }
}

/// Issue 27, point 7: `features --out` goes through the same guard as every other
/// output, before the model runs (nothing is printed): never the checkpoint, the
/// tokenizer, the tokens file, an SAE file, a FIFO or a directory.
#[test]
fn features_out_is_checked_before_the_model_runs() {
    let tmp = TempDir::new("out-features");
    let model = model_copy(&tmp);
    let tokens = tmp.path("tokens.safetensors");
    std::fs::copy(tiny_tokens(), &tokens).unwrap();
    let sae = tmp.path("sae");
    std::fs::create_dir_all(&sae).unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(root().join("testdata/saes/saes/standard").join(f), sae.join(f)).unwrap();
    }
    let fifo = tmp.path("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let features_to = |out: &Path| {
        hooklens(&[
            "features",
            "--no-processing",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--sae",
            sae.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let snapshot = || {
        [
            model.join("model.safetensors"),
            model.join("tokenizer.json"),
            model.join("config.json"),
            tokens.clone(),
            sae.join("cfg.json"),
            sae.join("sae_weights.safetensors"),
        ]
        .map(|p| std::fs::read(p).unwrap())
    };
    let before = snapshot();
    let dir = tmp.path("pages");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (model.join("model.safetensors"), "writing it would destroy the input"),
        (model.join("tokenizer.json"), "writing it would destroy the input"),
        (tokens.clone(), "writing it would destroy the input"),
        (sae.join("cfg.json"), "writing it would destroy the input"),
        (
            sae.join("sae_weights.safetensors"),
            "writing it would destroy the input",
        ),
        (fifo.clone(), "is a FIFO"),
        (dir.clone(), "is a directory"),
        (PathBuf::from(format!("{}/", dir.display())), "is a directory"),
        (tmp.path("new-dir/"), "--out"),
        (tmp.path("no/such/dir/page.html"), "no/such/dir"),
    ];
    for (out, needle) in &cases {
        let o = features_to(out);
        assert!(
            o.stdout.is_empty(),
            "{out:?}: the model ran: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        fails(o, needle);
    }
    assert!(before == snapshot(), "an input was touched");
    assert!(!tmp.path("new-dir").exists());
    // A new file is written.
    let page = tmp.path("page.html");
    ok_stderr(features_to(&page));
    assert!(std::fs::read_to_string(&page).unwrap().contains("<html"));
}

/// Runs `hooklens` with `args`, killed after `secs` seconds: `None` when it had to be.
fn within(args: &[String], secs: u64) -> Option<Output> {
    let mut child = offline_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// Issue 27, point 10: the harvest's lock file was opened whatever it was: a FIFO of
/// its name hung the harvest, a dangling link of its name created a file outside
/// --out. Only a regular file (or none) is taken, and a link is never followed.
#[test]
fn the_harvest_lock_file_is_a_regular_file_or_nothing() {
    let tmp = TempDir::new("lock-kinds");
    let model = tiny_model();
    let corpus = tmp.path("c.txt");
    std::fs::write(&corpus, "a b c\n").unwrap();
    let lock = "00000-of-00001.lock";

    let out = tmp.path("fifo-out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(out.join(lock))
        .status()
        .unwrap()
        .success());
    let o = within(&harvest_to(&model, &corpus, &out), 60).expect("the harvest hung on a FIFO lock file");
    fails(o, "is a FIFO, not a regular file");

    let out = tmp.path("link-out");
    std::fs::create_dir_all(&out).unwrap();
    let outside = tmp.path("outside.lock");
    std::os::unix::fs::symlink(&outside, out.join(lock)).unwrap();
    let o = within(&harvest_to(&model, &corpus, &out), 60).expect("the harvest hung");
    fails(o, "is a symbolic link, not a regular file");
    assert!(!outside.exists(), "a file was created outside --out");
    // A link to a regular file is refused too: it is not this directory's lock.
    std::fs::write(&outside, "").unwrap();
    let o = within(&harvest_to(&model, &corpus, &out), 60).expect("the harvest hung");
    fails(o, "is a symbolic link, not a regular file");

    // A regular lock file left by an earlier run is taken.
    let out = tmp.path("file-out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(lock), "").unwrap();
    let o = within(&harvest_to(&model, &corpus, &out), 120).expect("the harvest hung");
    ok_stderr(o);
}
