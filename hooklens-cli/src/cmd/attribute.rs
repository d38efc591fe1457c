//! `hooklens attribute`: the attribution graph of a prompt over transcoders, as
//! circuit-tracer computes it.

use std::path::{Path, PathBuf};

use hooklens_models::circuits::{
    attribute, graph_file_from, prune, AttributionOptions, GraphFileOptions, Targets, Transcoders,
};
use hooklens_models::model::PaddingSide;
use hooklens_models::HubOptions;

use super::common::{write_text_file, InputArgs, ModelArgs};
use crate::error::{CliError, CliResult};

/// Trace which features cause the model's next-token prediction (an attribution graph).
///
/// Each MLP is replaced by a transcoder (a per-layer set or a cross-layer transcoder in
/// circuit-tracer's format: a folder with config.yaml and layer_{i}.safetensors or
/// W_enc_{i}/W_dec_{i}.safetensors, or a Hugging Face repo holding one), attention
/// patterns and norm scales are frozen, and the direct effect of every active feature,
/// error and token on every feature and on the top logits is computed, with
/// circuit-tracer's definitions. The model is always loaded without weight processing
/// (as circuit-tracer loads it). Position 0 (BOS) carries no features. Prints the logit
/// targets and the graph's size; --out writes the pruned graph file circuit-tracer's
/// front-end and Neuronpedia read, --html an offline viewer, --save-graph the unpruned
/// graph (circuit-tracer's Graph fields).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// The transcoders: a folder in circuit-tracer's format, or `REPO_ID` / `REPO_ID:FOLDER`
    /// on the Hugging Face hub (cached, and HF_HUB_OFFLINE=1 respected, as for models).
    #[arg(long, value_name = "DIR|REPO[:FOLDER]")]
    pub transcoders: String,
    /// A target token (its text, one token of the model's tokenizer); repeat for several.
    /// Default: the most probable next tokens (--max-n-logits, --desired-logit-prob).
    #[arg(long = "target", value_name = "TOKEN")]
    pub targets: Vec<String>,
    /// A target token id; repeat for several (instead of --target).
    #[arg(long = "target-id", value_name = "ID", conflicts_with = "targets")]
    pub target_ids: Vec<u32>,
    /// At most this many logit targets (circuit-tracer's max_n_logits).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_n_logits: usize,
    /// Logit targets until their probabilities add up to this (desired_logit_prob).
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    pub desired_logit_prob: f32,
    /// At most this many feature nodes, chosen by influence on the logits
    /// (max_feature_nodes; default: every active feature).
    #[arg(long, value_name = "N")]
    pub max_feature_nodes: Option<usize>,
    /// Rows per backward sweep (batch_size).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub batch_size: usize,
    /// Batches between re-rankings of the features (update_interval).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub update_interval: usize,
    /// Keep the nodes carrying this fraction of the influence (node_threshold).
    #[arg(long, value_name = "T", default_value_t = 0.8)]
    pub node_threshold: f64,
    /// Keep the edges carrying this fraction of the influence (edge_threshold).
    #[arg(long, value_name = "T", default_value_t = 0.98)]
    pub edge_threshold: f64,
    /// The graph's name in the graph file (default: --out's file stem, else `graph`).
    #[arg(long, value_name = "NAME")]
    pub slug: Option<String>,
    /// The scan identifier in the graph file (default: the transcoders' config.yaml `scan`).
    #[arg(long, value_name = "SCAN")]
    pub scan: Option<String>,
    /// Write the pruned graph file (circuit-tracer's `create_graph_files` JSON).
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
    /// Write an offline HTML viewer of the pruned graph.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// Write the unpruned graph (circuit-tracer's Graph fields) as safetensors.
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_graph: Option<PathBuf>,
    /// The most memory, in MiB, the graph's edge rows and matrix may take; a larger graph
    /// is built in temporary files (default: half the available memory).
    #[arg(long, value_name = "MIB")]
    pub memory_budget_mb: Option<u64>,
    /// The folder for those temporary files (default: the system's temporary folder).
    /// They are unlinked as soon as they are made, so nothing is left behind.
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The process's peak resident memory in MiB, where Linux reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Loads the transcoders of `spec`: a folder, or a hub repository (`REPO:FOLDER`).
fn load_transcoders(spec: &str, n_layers: usize, revision: &str) -> CliResult<Transcoders> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(Transcoders::from_dir(path)?);
    }
    if path.exists() {
        return Err(CliError(format!(
            "--transcoders {spec}: not a folder (give the folder holding config.yaml)"
        )));
    }
    let (repo, folder) = spec.split_once(':').unwrap_or((spec, ""));
    if repo.split('/').count() != 2 || repo.contains("//") {
        return Err(CliError(format!(
            "--transcoders {spec}: no such folder, and not a Hugging Face repo id (OWNER/NAME[:FOLDER])"
        )));
    }
    let hub = HubOptions::from_env().revision(revision.to_string());
    Ok(Transcoders::from_pretrained(repo, folder, n_layers, &hub)?)
}

/// Runs the subcommand.
pub fn run(mut args: Args) -> CliResult<()> {
    // circuit-tracer reads the MLP's input after ln2's gain: the weights as stored.
    args.model.no_processing = true;
    for (flag, v) in [
        ("--node-threshold", args.node_threshold),
        ("--edge-threshold", args.edge_threshold),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CliError(format!("{flag} {v}: must be between 0 and 1")));
        }
    }
    let model = args.model.load()?;
    let mut inputs = args.model.files()?;
    inputs.extend(args.input.files());
    let outputs: Vec<(&str, &PathBuf)> = [
        ("--out", &args.out),
        ("--html", &args.html),
        ("--save-graph", &args.save_graph),
    ]
    .into_iter()
    .filter_map(|(f, p)| p.as_ref().map(|p| (f, p)))
    .collect();
    // Outputs are checked before any work: a bad path fails in a second, not after the graph.
    for (flag, path) in &outputs {
        crate::output::check_output_file(flag, path, &inputs)?;
    }
    let transcoders = load_transcoders(&args.transcoders, model.cfg().n_layers, &args.model.revision)?;
    // The transcoders' files (a folder's, or the cached ones of a hub repository) are
    // inputs too, known once they are found.
    for (flag, path) in &outputs {
        crate::output::check_output_file(flag, path, transcoders.files())?;
    }
    let input = args.input.read(&model, PaddingSide::Right)?;
    if input.tokens.dim(0)? != 1 {
        return Err(CliError(
            "attribute explains one prompt: give one --prompt (or a tokens file with one row)".into(),
        ));
    }
    let tokens: Vec<u32> = input.row(0)?.flatten_all()?.to_vec1::<u32>()?;
    let targets = if !args.targets.is_empty() {
        Targets::Strings(args.targets.clone())
    } else if !args.target_ids.is_empty() {
        Targets::TokenIds(args.target_ids.clone())
    } else {
        Targets::Salient {
            max_n_logits: args.max_n_logits,
            desired_logit_prob: args.desired_logit_prob,
        }
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows, ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    };
    let progress_bar = bar.clone();
    let mut opts = AttributionOptions::new()
        .targets(targets)
        .batch_size(args.batch_size)
        .update_interval(args.update_interval)
        .progress(move |p| {
            progress_bar.set_length(p.rows_total as u64);
            progress_bar.set_position(p.rows_done as u64);
        });
    if let Some(n) = args.max_feature_nodes {
        opts = opts.max_feature_nodes(n);
    }
    if let Some(mb) = args.memory_budget_mb {
        opts = opts.memory_budget(mb.saturating_mul(1 << 20));
    }
    if let Some(dir) = &args.spill_dir {
        if !dir.is_dir() {
            return Err(CliError(format!("--spill-dir {}: not a folder", dir.display())));
        }
        opts = opts.spill_dir(dir);
    }
    let started = std::time::Instant::now();
    let graph = attribute(&model, &transcoders, &tokens, &opts)?;
    bar.finish_and_clear();
    crate::outln!(
        "{} positions, {} active features ({} in the graph), {} error and {} token nodes, {} logit targets; {:.2} s",
        graph.n_pos(),
        graph.active_features.len(),
        graph.n_features(),
        graph.n_layers * graph.n_pos(),
        graph.n_pos(),
        graph.logit_targets.len(),
        started.elapsed().as_secs_f64()
    );
    for (t, p) in graph.logit_targets.iter().zip(&graph.logit_probabilities) {
        crate::outln!("  target {:>8}  p={p:.4}  {:?}", t.vocab_idx, t.token);
    }
    let pruned = prune(&graph, args.node_threshold as f32, args.edge_threshold as f32)?;
    let kept_nodes = pruned.node_mask.iter().filter(|&&k| k).count();
    let kept_edges = pruned.edges.len();
    crate::outln!(
        "pruned at {} / {}: {kept_nodes} nodes, {kept_edges} edges kept",
        args.node_threshold,
        args.edge_threshold
    );
    let n = graph.n_nodes() as f64;
    crate::outln!(
        "adjacency matrix {:.1} MiB, held {}; peak resident memory {}",
        n * n * 4.0 / (1u64 << 20) as f64,
        if graph.adjacency.as_slice().is_some() {
            "in memory"
        } else {
            "in temporary files (past the memory budget)"
        },
        peak_rss_mib().map_or("unknown".to_string(), |m| format!("{m:.0} MiB"))
    );
    if let Some(path) = &args.save_graph {
        graph.save_safetensors(path)?;
        eprintln!(
            "wrote the unpruned graph ({} nodes) to {}",
            graph.n_nodes(),
            path.display()
        );
    }
    if args.out.is_some() || args.html.is_some() {
        let slug = args.slug.clone().unwrap_or_else(|| {
            args.out
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "graph".into())
        });
        let mut gopts = GraphFileOptions::new(slug);
        gopts.node_threshold = args.node_threshold;
        gopts.edge_threshold = args.edge_threshold;
        gopts.scan = args
            .scan
            .clone()
            .or_else(|| graph.scan.clone())
            .or_else(|| Some(args.transcoders.clone()));
        let text = |id: u32| model.to_single_str_token(id).unwrap_or_default();
        let file = graph_file_from(&graph, &pruned, &gopts, &text)?;
        if let Some(path) = &args.out {
            write_text_file(path, &file.to_json())?;
            eprintln!(
                "wrote the graph file ({} nodes, {} links) to {}",
                file.nodes.len(),
                file.links.len(),
                path.display()
            );
        }
        if let Some(path) = &args.html {
            write_text_file(path, &hooklens_models::viz::graph_file_html(&file)?)?;
            eprintln!("wrote the graph viewer to {}", path.display());
        }
    }
    Ok(())
}
