//! The README's library guide is `examples/guide.rs` (which `cargo test` builds):
//! every `// guide: <step>` ... `// end` block of the example must appear in the
//! README as written, so that the README's code is code that compiles.

/// `(step, code)` for each guide block of the example, dedented.
fn guide_blocks(example: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in example.lines() {
        let trimmed = line.trim();
        if let Some(step) = trimmed.strip_prefix("// guide: ") {
            assert!(current.is_none(), "guide block `{step}` opens inside another");
            current = Some((step.to_string(), Vec::new()));
        } else if trimmed == "// end" {
            let (step, lines) = current.take().expect("`// end` without `// guide:`");
            let indent = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let code: Vec<&str> = lines.iter().map(|l| l.get(indent..).unwrap_or("")).collect();
            blocks.push((step, code.join("\n")));
        } else if let Some((_, lines)) = &mut current {
            lines.push(line);
        }
    }
    assert!(current.is_none(), "a guide block is not closed");
    blocks
}

#[test]
fn every_guide_block_is_in_the_readme_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/examples/guide.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let blocks = guide_blocks(&example);
    let steps: Vec<&str> = blocks.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        steps,
        [
            "imports",
            "tokens",
            "cache",
            "ablate",
            "patch",
            "decompose",
            "attribute",
            "sweep",
            "generate",
            "load"
        ]
    );
    let guide = readme
        .split("\n## Library guide\n")
        .nth(1)
        .expect("the README has a `## Library guide` section")
        .split("\n## ")
        .next()
        .unwrap();
    for (step, code) in &blocks {
        assert!(
            guide.contains(code.as_str()),
            "the README's library guide lacks the `{step}` block of examples/guide.rs as written:\n{code}"
        );
    }
}
