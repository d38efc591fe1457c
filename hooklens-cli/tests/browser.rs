//! The HTML views in a real headless browser (Debian's `chromium`): the pages load with
//! no console message at all (errors included), their script runs to the end, every
//! head gets its pattern, every node of an attribution graph its shape, and token text
//! cannot inject markup or script.
//!
//! Without chromium the test is skipped with a message, except in CI (`CI=true`, set by
//! `.ci/run`, which installs chromium), where a missing browser is a failure.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser to use: `HOOKLENS_CHROMIUM`, else the first of chromium,
/// chromium-browser, google-chrome on the PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOOKLENS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What the browser made of a page: the DOM after its scripts ran, and the page's
/// console messages.
struct Loaded {
    dom: String,
    console: Vec<String>,
}

/// Loads `page` in headless chromium (no network features, a fresh profile), waits for
/// its scripts and returns the DOM and the console lines (chromium logs every console
/// message and uncaught error as `...:CONSOLE...` with `--enable-logging=stderr`).
fn load(chromium: &Path, page: &Path, tmp: &Path) -> Loaded {
    load_at(chromium, page, "", tmp)
}

/// [`load`] with a URL fragment (`"#..."`, or empty) after the page's path.
fn load_at(chromium: &Path, page: &Path, fragment: &str, tmp: &Path) -> Loaded {
    let profile = tmp.join(format!("profile-{}", page.file_stem().unwrap().to_string_lossy()));
    let url = format!("file://{}{fragment}", page.canonicalize().unwrap().display());
    let dom_path = tmp.join("dom.html");
    let log_path = tmp.join("stderr.txt");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "chromium failed on {url}: {status}\n{log}");
    let console = log
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    Loaded { dom, console }
}

/// The value of attribute `name` of the `<body>` tag in `dom`.
fn body_attr(dom: &str, name: &str) -> Option<String> {
    let start = dom.find("<body")?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let key = format!("{name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

/// The text of the `<title>` element (a script that ran would have changed it).
fn title(dom: &str) -> &str {
    let start = dom.find("<title>").map_or(0, |i| i + "<title>".len());
    let end = dom[start..].find("</title>").map_or(start, |i| start + i);
    &dom[start..end]
}

fn hooklens(args: &[&str]) {
    let out = offline_command(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small random model (2 layers, 4 heads) with GPT-2's vocabulary, so prompts go
/// through GPT-2's BPE.
fn small_model(dir: &Path) -> PathBuf {
    use hooklens_models::model::{random_weights, save_hf_checkpoint};
    let cfg = hooklens_models::TransformerConfig::new(2, 32, 4, 50257, 64);
    let path = dir.join("model");
    save_hf_checkpoint(&path, &cfg, &random_weights(&cfg, 3).unwrap(), candle_core::DType::F32).unwrap();
    path
}

#[test]
fn attention_and_logit_lens_pages_work_in_chromium() {
    let Some(chromium) = find_chromium() else {
        if in_ci() {
            panic!("chromium is not installed, and CI=true: .ci/run installs it with `apt-get install -y chromium`");
        }
        eprintln!(
            "SKIPPED attention_and_logit_lens_pages_work_in_chromium: no chromium on the PATH \
             (apt-get install -y chromium, or set HOOKLENS_CHROMIUM); CI=true makes this a failure"
        );
        return;
    };
    let tmp = TempDir::new("views");
    let model = small_model(&tmp);
    let m = model.to_str().unwrap();
    // Token text that would break a page that put it into markup.
    let prompt = "A </script><script>document.title='owned'</script> <img src=x onerror=alert(1)> & \"quotes\"";

    let page = tmp.join("attention.html");
    hooklens(&[
        "attention",
        "--model",
        m,
        "--prompt",
        prompt,
        "--out",
        page.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load anything"
    );
    let loaded = load(&chromium, &page, &tmp);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(
        body_attr(&loaded.dom, "data-ready").as_deref(),
        Some("1"),
        "the script did not finish"
    );
    assert_eq!(body_attr(&loaded.dom, "data-errors"), None);
    assert_eq!(body_attr(&loaded.dom, "data-patterns").as_deref(), Some("8"));
    // One thumbnail per head, each labelled with its layer and head.
    assert_eq!(loaded.dom.matches("class=\"thumb-box").count(), 8);
    for l in 0..2 {
        for h in 0..4 {
            assert!(
                loaded.dom.contains(&format!("data-layer=\"{l}\" data-head=\"{h}\"")),
                "no pattern for L{l}H{h}"
            );
        }
    }
    assert!(!loaded.dom.contains("<img"), "a token became markup");
    assert!(!title(&loaded.dom).contains("owned"), "a token ran as script");
    assert!(
        loaded.dom.contains("<option value=\"7\">L1H3</option>"),
        "the head selector"
    );

    // Only the layers asked for.
    let page1 = tmp.join("layer1.html");
    hooklens(&[
        "attention",
        "--model",
        m,
        "--prompt",
        "one two three",
        "--layers",
        "1",
        "--out",
        page1.to_str().unwrap(),
    ]);
    let loaded = load(&chromium, &page1, &tmp);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(body_attr(&loaded.dom, "data-patterns").as_deref(), Some("4"));

    let lens = tmp.join("lens.html");
    hooklens(&[
        "logit-lens",
        "--model",
        m,
        "--prompt",
        prompt,
        "--out",
        lens.to_str().unwrap(),
    ]);
    let loaded = load(&chromium, &lens, &tmp);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(body_attr(&loaded.dom, "data-ready").as_deref(), Some("1"));
    assert_eq!(body_attr(&loaded.dom, "data-rows").as_deref(), Some("3"));
    assert!(!loaded.dom.contains("<img") && !title(&loaded.dom).contains("owned"));
}

/// A standard SAE with random weights at `blocks.0.hook_resid_pre` of a `d_model`-wide
/// model, whose encoder bias makes a few features fire on most tokens.
fn small_sae(dir: &Path, d_model: usize) -> PathBuf {
    use candle_core::{Device, Tensor};
    let path = dir.join("sae");
    std::fs::create_dir_all(&path).unwrap();
    let d_sae = 24;
    let cfg = format!(
        r#"{{"architecture": "standard", "d_in": {d_model}, "d_sae": {d_sae}, "apply_b_dec_to_input": false,
            "metadata": {{"sae_lens_version": "6.54.12", "hook_name": "blocks.0.hook_resid_pre"}}}}"#
    );
    std::fs::write(path.join("cfg.json"), cfg).unwrap();
    let wave = |n: usize, s: f32, k: f32| {
        Tensor::from_vec(
            (0..n).map(|i| ((i as f32 * k).sin()) * s).collect::<Vec<f32>>(),
            n,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut t = std::collections::HashMap::new();
    t.insert(
        "W_enc".to_string(),
        wave(d_model * d_sae, 1.0, 0.7).reshape((d_model, d_sae)).unwrap(),
    );
    t.insert("b_enc".to_string(), wave(d_sae, 0.5, 1.3).abs().unwrap());
    t.insert(
        "W_dec".to_string(),
        wave(d_sae * d_model, 0.2, 0.9).reshape((d_sae, d_model)).unwrap(),
    );
    t.insert("b_dec".to_string(), wave(d_model, 0.1, 0.4));
    candle_core::safetensors::save(&t, path.join("sae_weights.safetensors")).unwrap();
    path
}

#[test]
fn features_page_works_in_chromium() {
    let Some(chromium) = find_chromium() else {
        if in_ci() {
            panic!("chromium is not installed, and CI=true: .ci/run installs it with `apt-get install -y chromium`");
        }
        eprintln!("SKIPPED features_page_works_in_chromium: no chromium on the PATH (set HOOKLENS_CHROMIUM)");
        return;
    };
    let tmp = TempDir::new("features-view");
    let model = small_model(&tmp.0);
    let sae = small_sae(&tmp.0, 32);
    let prompt = "A </script><script>document.title='owned'</script> <img src=x onerror=alert(1)> & \"quotes\"";
    let page = tmp.0.join("features.html");
    let out = offline_command(&[
        "features",
        "--model",
        model.to_str().unwrap(),
        "--sae",
        sae.to_str().unwrap(),
        "--prompt",
        prompt,
        "--out",
        page.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let n_tokens = table.lines().count() - 1;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let feature = stderr
        .rsplit("opens on feature ")
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(')')
        .to_string();
    let loaded = load(&chromium, &page, &tmp.0);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(
        body_attr(&loaded.dom, "data-ready").as_deref(),
        Some("1"),
        "the script did not finish"
    );
    assert_eq!(body_attr(&loaded.dom, "data-errors"), None);
    assert_eq!(body_attr(&loaded.dom, "data-tokens"), Some(n_tokens.to_string()));
    assert_eq!(
        body_attr(&loaded.dom, "data-feature"),
        Some(feature.clone()),
        "opens on the feature it said"
    );
    let lit: usize = body_attr(&loaded.dom, "data-lit").unwrap().parse().unwrap();
    assert!(lit >= 1, "the most active feature lights at least its token");
    assert_eq!(loaded.dom.matches("class=\"tok\"").count(), n_tokens);
    assert!(loaded.dom.contains("\u{2423}"), "spaces are visible");
    assert!(
        loaded.dom.contains(&format!("<option value=\"{feature}\">")),
        "the feature selector"
    );
    assert!(!loaded.dom.contains("<img"), "a token became markup");
    assert!(!title(&loaded.dom).contains("owned"), "a token ran as script");
}

/// The attribution graph circuit-tracer wrote for the reference prompt.
const GRAPH_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/circuits/graph_files/public.json"
);

/// The DOM's table rows of the side panel's edges `which` ("in" or "out"), in order, as
/// `(node id, weight)`.
fn panel_edges(dom: &str, which: &str) -> Vec<(String, f64)> {
    let key = format!("data-edge=\"{which}\" data-node-id=\"");
    dom.match_indices(&key)
        .map(|(at, _)| {
            let rest = &dom[at + key.len()..];
            let id = &rest[..rest.find('"').unwrap()];
            let w = rest.split("data-weight=\"").nth(1).unwrap();
            (id.to_string(), w[..w.find('"').unwrap()].parse().unwrap())
        })
        .collect()
}

#[test]
fn attribution_graph_page_works_in_chromium() {
    let Some(chromium) = find_chromium() else {
        if in_ci() {
            panic!("chromium is not installed, and CI=true: .ci/run installs it with `apt-get install -y chromium`");
        }
        eprintln!("SKIPPED attribution_graph_page_works_in_chromium: no chromium on the PATH (set HOOKLENS_CHROMIUM)");
        return;
    };
    let tmp = TempDir::new("graph-view");
    let json = std::fs::read_to_string(GRAPH_FILE).unwrap();
    let graph = hooklens_models::viz::GraphFile::from_json(&json).unwrap();
    let page = tmp.0.join("graph.html");
    std::fs::write(&page, hooklens_models::viz::attribution_graph_html(&json).unwrap()).unwrap();

    // Opened plainly: on the target logit.
    let loaded = load(&chromium, &page, &tmp.0);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(
        body_attr(&loaded.dom, "data-ready").as_deref(),
        Some("1"),
        "the script did not finish"
    );
    assert_eq!(body_attr(&loaded.dom, "data-errors"), None);
    assert_eq!(
        body_attr(&loaded.dom, "data-nodes"),
        Some(graph.nodes.len().to_string())
    );
    assert_eq!(
        loaded.dom.matches("class=\"node ").count(),
        graph.nodes.len(),
        "one shape per node"
    );
    for n in &graph.nodes {
        assert_eq!(
            loaded
                .dom
                .matches(&format!("data-node-id=\"{}\" data-index=", n.node_id))
                .count(),
            1,
            "node {}",
            n.node_id
        );
    }
    let target = graph.nodes.iter().find(|n| n.is_target_logit).unwrap();
    assert_eq!(body_attr(&loaded.dom, "data-selected"), Some(target.node_id.clone()));
    // One label per prompt token, each isolated for bidi.
    assert!(loaded.dom.matches("<bdi class=\"t\">").count() >= graph.metadata.prompt_tokens.len());
    assert!(loaded.dom.contains("<bdi class=\"t\">gaza</bdi>"));

    // Selected by the URL fragment: the node with the most edges, and the panel lists its
    // ten strongest inputs and outputs by |weight|.
    let degree = |id: &str| graph.links.iter().filter(|l| l.source == id || l.target == id).count();
    let busiest = graph
        .nodes
        .iter()
        .filter(|n| n.feature_type == "cross layer transcoder")
        .max_by_key(|n| degree(&n.node_id))
        .unwrap();
    let id = &busiest.node_id;
    let loaded = load_at(&chromium, &page, &format!("#select={id}"), &tmp.0);
    assert!(loaded.console.is_empty(), "console messages: {:#?}", loaded.console);
    assert_eq!(body_attr(&loaded.dom, "data-selected").as_deref(), Some(id.as_str()));
    assert!(loaded
        .dom
        .contains(&format!("<aside id=\"panel\" data-node-id=\"{id}\">")));
    let (layer, pos) = (&busiest.layer, busiest.ctx_idx);
    let feature = id.split('_').nth(1).unwrap();
    assert!(
        loaded
            .dom
            .contains(&format!("layer {layer}, feature {feature}, position {pos}")),
        "the panel names the feature"
    );
    let expect = |ends: &dyn Fn(&hooklens_models::viz::GraphLink) -> Option<String>| {
        let mut edges: Vec<(String, f64)> = graph
            .links
            .iter()
            .filter_map(|l| ends(l).map(|o| (o, l.weight)))
            .collect();
        edges.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        edges.truncate(10);
        edges
    };
    let inputs = expect(&|l| (l.target == *id).then(|| l.source.clone()));
    let outputs = expect(&|l| (l.source == *id).then(|| l.target.clone()));
    assert!(!inputs.is_empty() && !outputs.is_empty());
    assert_eq!(panel_edges(&loaded.dom, "in"), inputs);
    assert_eq!(panel_edges(&loaded.dom, "out"), outputs);
    // Its edges are drawn, one line each.
    let n_edges = degree(id);
    assert_eq!(loaded.dom.matches("class=\"edge\"").count(), n_edges);
}

/// Every U+202E (right-to-left override) in `dom` as the browser serialised it, with
/// whether it is isolated from what follows: text inside a `<bdi>` (or between U+2068
/// and U+2069 in its text node), an attribute value between U+2068 and U+2069. Script
/// and style elements are skipped (the page's data escapes it there).
fn rlo_sites(dom: &str) -> Vec<(String, bool)> {
    const RLO: char = '\u{202E}';
    let isolated_by_marks = |s: &str| s.matches('\u{2068}').count() > s.matches('\u{2069}').count();
    let mut sites = Vec::new();
    let mut bdi_depth = 0i32;
    let mut i = 0;
    while i < dom.len() {
        let rest = &dom[i..];
        if rest.starts_with('<') {
            // The tag's end: the first `>` outside a quoted attribute value.
            let mut quote = None;
            let mut end = rest.len() - 1;
            for (j, c) in rest.char_indices().skip(1) {
                match (quote, c) {
                    (None, '"' | '\'') => quote = Some(c),
                    (Some(q), c) if c == q => quote = None,
                    (None, '>') => {
                        end = j;
                        break;
                    }
                    _ => {}
                }
            }
            let tag = &rest[..=end];
            let name: String = tag[1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
                .collect::<String>()
                .to_ascii_lowercase();
            for (p, _) in tag.match_indices(RLO) {
                let value_start = tag[..p].rfind('"').map_or(0, |q| q + 1);
                sites.push((
                    format!("attribute in {}", &tag[..tag.len().min(80)]),
                    isolated_by_marks(&tag[value_start..p]),
                ));
            }
            match name.as_str() {
                "bdi" => bdi_depth += 1,
                "/bdi" => bdi_depth -= 1,
                "script" | "style" => {
                    let close = format!("</{name}");
                    i += rest.find(&close).unwrap_or(rest.len());
                    continue;
                }
                _ => {}
            }
            i += end + 1;
        } else {
            let text = &rest[..rest.find('<').unwrap_or(rest.len())];
            for (p, _) in text.match_indices(RLO) {
                let from = p.saturating_sub(40);
                let from = (0..=from).rev().find(|&k| text.is_char_boundary(k)).unwrap_or(0);
                sites.push((
                    format!("text {:?}", &text[from..]),
                    bdi_depth > 0 || isolated_by_marks(&text[..p]),
                ));
            }
            i += text.len();
        }
    }
    sites
}

/// `html` with `probe` run after the page's own script: it hovers what shows tokens
/// (`hover`, a function body given the tooltip), then records on the body whether the
/// elements of `ordered` (a selector) lie left to right, and whether the tooltip shows
/// an override.
fn with_probe(html: &str, hover: &str, ordered: &str) -> String {
    let probe = format!(
        r#"<script>
(function () {{
  "use strict";
  var tip = document.getElementById("tooltip");
  function fire(el, x, y) {{ el.dispatchEvent(new MouseEvent("mousemove", {{ bubbles: true, clientX: x, clientY: y }})); }}
  (function (tip, fire) {{ {hover} }})(tip, fire);
  if (tip && tip.textContent.indexOf("\u202e") >= 0) {{ document.body.setAttribute("data-probe-tooltip", "1"); }}
  var lefts = Array.prototype.map.call(document.querySelectorAll("{ordered}"), function (e) {{ return e.getBoundingClientRect().left; }});
  var bad = [];
  for (var i = 1; i < lefts.length; i++) {{ if (!(lefts[i] > lefts[i - 1])) {{ bad.push(i); }} }}
  document.body.setAttribute("data-probe-order", lefts.length + (bad.length ? " out of order at " + bad.join(",") : " in order"));
}})();
</script>
</body>"#
    );
    assert!(html.contains("</body>"));
    html.replacen("</body>", &probe, 1)
}

/// Issue 27, point 21: a token holding U+202E (right-to-left override) reversed every
/// later token on the features page. On every page, each token's text is isolated: in
/// a `<bdi>` in the DOM (tooltips included), between U+2068 and U+2069 in a title, and
/// the tokens after it stay in order.
#[test]
fn a_right_to_left_override_in_a_token_stays_in_it_in_chromium() {
    use candle_core::{DType, Device, Tensor};
    use hooklens_models::viz;
    let Some(chromium) = find_chromium() else {
        if in_ci() {
            panic!("chromium is not installed, and CI=true: .ci/run installs it with `apt-get install -y chromium`");
        }
        eprintln!("SKIPPED a_right_to_left_override_in_a_token_stays_in_it_in_chromium: no chromium on the PATH");
        return;
    };
    let tmp = TempDir::new("bidi-views");
    let tokens: Vec<String> = ["<|endoftext|>", "A", " \u{202E}evil", " later", " tok", " end"]
        .map(String::from)
        .to_vec();
    let n = tokens.len();

    let attention = viz::attention_html(&viz::AttentionView {
        title: "bidi".into(),
        tokens: tokens.clone(),
        layers: vec![(0, Tensor::ones((2, n, n), DType::F32, &Device::Cpu).unwrap())],
        selected: None,
    })
    .unwrap();
    let features = viz::features_html(&viz::FeatureView {
        title: "bidi".into(),
        tokens: tokens.clone(),
        top: (0..n).map(|p| vec![(3, p as f32 + 1.0)]).collect(),
        columns: [(3, (0..n).map(|p| p as f32 + 1.0).collect())].into_iter().collect(),
        feature: 3,
    });
    let lens = viz::logit_lens_html(
        &viz::LogitLens {
            tokens: tokens.clone(),
            labels: vec!["0_pre".into(), "final_post".into()],
            top: vec![vec![vec![(7, "\u{202E}next".to_string(), 0.5), (8, " ok".to_string(), 0.25)]; n]; 2],
        },
        "bidi",
    );
    let mut graph: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(GRAPH_FILE).unwrap()).unwrap();
    graph["metadata"]["prompt_tokens"][2] = serde_json::json!(" \u{202E}evil");
    graph["metadata"]["prompt"] = serde_json::json!("A \u{202E}evil prompt");
    let graph = viz::attribution_graph_html(&graph.to_string()).unwrap();

    // Hovers: the attention canvas is scanned until the tooltip shows the override.
    let scan_canvas = r#"var c = document.getElementById("main"); var r = c.getBoundingClientRect();
      for (var y = r.top + 1; y < r.bottom; y += 3) { for (var x = r.left + 1; x < r.right; x += 3) {
        fire(c, x, y); if (tip.textContent.indexOf("\u202e") >= 0) { return; } } }"#;
    let hover_token = r#"fire(document.querySelector('[data-pos="2"]'), 10, 10);"#;
    let hover_cell = r#"fire(document.querySelectorAll("td")[2], 10, 10);"#;
    let pages = [
        ("attention", with_probe(&attention, scan_canvas, "canvas.thumb"), true),
        ("features", with_probe(&features, hover_token, ".tok"), true),
        ("logit-lens", with_probe(&lens, hover_cell, "th:not(.row)"), true),
        ("graph", with_probe(&graph, "", "#tokens .tok"), false),
    ];
    for (name, html, tooltip) in pages {
        let page = tmp.0.join(format!("{name}.html"));
        std::fs::write(&page, html).unwrap();
        let loaded = load(&chromium, &page, &tmp.0);
        assert!(
            loaded.console.is_empty(),
            "{name}: console messages: {:#?}",
            loaded.console
        );
        assert_eq!(body_attr(&loaded.dom, "data-ready").as_deref(), Some("1"), "{name}");
        assert_eq!(body_attr(&loaded.dom, "data-errors"), None, "{name}");
        if tooltip {
            assert_eq!(
                body_attr(&loaded.dom, "data-probe-tooltip").as_deref(),
                Some("1"),
                "{name}: the hover showed no token with the override"
            );
        }
        let order = body_attr(&loaded.dom, "data-probe-order").unwrap();
        assert!(
            order.ends_with(" in order") && !order.starts_with("0 "),
            "{name}: {order}"
        );
        let sites = rlo_sites(&loaded.dom);
        assert!(!sites.is_empty(), "{name}: the override is nowhere on the page");
        let loose: Vec<_> = sites.iter().filter(|(_, ok)| !ok).map(|(at, _)| at).collect();
        assert!(loose.is_empty(), "{name}: token text not isolated: {loose:#?}");
    }
}
