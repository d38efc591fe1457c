//! The README's Python snippet for reading a harvest, run on a real harvest of two
//! workers: it must work on any harvest, not only on the one it was written for.
//! Needs `python3` with `safetensors` and `numpy` (`.ci/run` installs them; elsewhere a
//! missing module fails the test with the command that installs it).

mod common;

use common::*;
use std::process::Command;

/// The Python block after "Reading the shards back" in the README.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = &readme[readme
        .find("Reading the shards back")
        .expect("the README's harvest reading section")..];
    let start = after.find("```python\n").unwrap() + "```python\n".len();
    after[start..start + after[start..].find("```").unwrap()].to_string()
}

#[test]
fn the_readme_python_snippet_reads_any_harvest() {
    let tmp = TempDir::new("readme-python");
    let corpus = tmp.path("corpus.txt");
    std::fs::write(&corpus, "one two three four five six seven\n".repeat(40)).unwrap();
    for worker in ["0", "1"] {
        let o = offline_command(&[
            "harvest",
            "--model",
            tiny_model().to_str().unwrap(),
            "--input",
            corpus.to_str().unwrap(),
            "--names",
            "blocks.1.hook_resid_post",
            "hook_embed",
            "--context-size",
            "16",
            "--shard-size-mb",
            "0.01",
            "--num-shards",
            "2",
            "--shard-index",
            worker,
            "--quiet",
            "--out",
            tmp.path("acts").to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = Command::new("python3")
        .arg("-c")
        .arg(readme_snippet())
        .current_dir(tmp.path(""))
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the snippet needs safetensors and numpy: pip install safetensors numpy\n{stderr}"
    );
    assert!(o.status.success(), "the README's snippet failed:\n{stderr}");
    let out = String::from_utf8_lossy(&o.stdout);
    // Both workers' manifests, complete, and every shard's tensors with their shapes.
    assert_eq!(out.matches("-manifest.json complete").count(), 2, "{out}");
    assert!(
        out.contains("blocks.1.hook_resid_post (") && out.contains("hook_embed ("),
        "{out}"
    );
    let shards = std::fs::read_dir(tmp.path("acts"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("-shard-"))
        .count();
    assert!(shards >= 4, "several shards per worker: {shards}");
    assert_eq!(out.matches("hook_embed (").count(), shards, "{out}");
}
