//! Attribution graphs against circuit-tracer 0.5.0's own numbers
//! (`testdata/circuits*`, made by `make_circuit_reference.py`; see its README): the
//! replacement model's activations, reconstructions and errors, the graph's nodes and
//! adjacency matrix, and the pruning.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::circuits::{f32s, graph_meta, i64s, model, tokens};
use hooklens_models::circuits::{attribute, prune, replacement_run, AttributionOptions, Graph, Transcoders};
use hooklens_models::HookedTransformer;
use hooklens_testutil::{assert_close, load_tensors, testdata};

/// Every reference case shipped: the two shared ones and the extra ones made with the
/// same generator (other architectures, skip connections, feature selection).
fn cases() -> Vec<PathBuf> {
    let mut out = vec![testdata().join("circuits"), testdata().join("circuits-clt")];
    if let Ok(entries) = std::fs::read_dir(testdata().join("circuits-extra")) {
        let mut extra: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("model").is_dir())
            .collect();
        extra.sort();
        out.extend(extra);
    }
    out
}

fn opts_of(meta: &serde_json::Value) -> AttributionOptions {
    let call = &meta["attribute_call"];
    let mut o = AttributionOptions::new()
        .salient(
            call["max_n_logits"].as_u64().unwrap() as usize,
            call["desired_logit_prob"].as_f64().unwrap() as f32,
        )
        .batch_size(call["batch_size"].as_u64().unwrap() as usize)
        .update_interval(call["update_interval"].as_u64().unwrap_or(4) as usize);
    if let Some(m) = call["max_feature_nodes"].as_u64() {
        o = o.max_feature_nodes(m as usize);
    }
    o
}

/// A reference case loaded: its name (its folder's), `graph_meta.json`, model,
/// transcoders and prompt.
struct Case {
    name: String,
    meta: serde_json::Value,
    model: HookedTransformer,
    tc: Transcoders,
    tokens: Vec<u32>,
}

impl Case {
    fn load(dir: &Path) -> Self {
        Case {
            name: dir.file_name().unwrap().to_string_lossy().to_string(),
            meta: graph_meta(dir),
            model: model(dir),
            tc: Transcoders::from_dir(dir.join("transcoders")).unwrap(),
            tokens: tokens(dir),
        }
    }

    /// The options circuit-tracer was called with.
    fn opts(&self) -> AttributionOptions {
        opts_of(&self.meta)
    }

    /// The graph of the case's prompt, with `opts`.
    fn graph(&self, opts: &AttributionOptions) -> Graph {
        attribute(&self.model, &self.tc, &self.tokens, opts).unwrap()
    }
}

/// The raw entry `name` of a safetensors file: dtype, and its bytes.
fn raw_entry(path: &std::path::Path, name: &str) -> (String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let e = &header[name];
    let off = e["data_offsets"].as_array().unwrap();
    let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
    (
        e["dtype"].as_str().unwrap().to_string(),
        bytes[8 + n + a..8 + n + b].to_vec(),
    )
}

/// A BOOL tensor of a safetensors file (candle cannot read that dtype), flattened.
fn read_bools(path: &std::path::Path, name: &str) -> Vec<bool> {
    let (dtype, data) = raw_entry(path, name);
    assert_eq!(dtype, "BOOL", "{name}");
    data.into_iter().map(|b| b != 0).collect()
}

/// The f32 tensors of a safetensors file that also holds BOOL ones.
fn f32_tensors(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    let mut out = std::collections::HashMap::new();
    for name in ["node_influence", "cumulative_scores"] {
        let (dtype, data) = raw_entry(path, name);
        assert_eq!(dtype, "F32", "{name}");
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(
            name.to_string(),
            Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap(),
        );
    }
    out
}

#[test]
fn the_replacement_model_decomposes_each_mlp_as_circuit_tracer_does() {
    for dir in cases() {
        let Case {
            name,
            model: m,
            tc,
            tokens: toks,
            ..
        } = Case::load(&dir);
        let run = replacement_run(&m, &tc, &toks).unwrap();
        let want = load_tensors(dir.join("replacement_cache.safetensors"));
        let (l, p, d) = (run.n_layers(), run.n_pos(), run.d_model());
        let t = |v: &[f32]| Tensor::from_slice(v, (l, p, d), &Device::Cpu).unwrap();
        assert_close(&format!("{name} logits"), &run.logits, &want["logits"], 1e-4);
        assert_close(
            &format!("{name} feature_input"),
            &t(&run.feature_input),
            &want["feature_input"],
            1e-4,
        );
        assert_close(
            &format!("{name} feature_output"),
            &t(&run.feature_output),
            &want["feature_output"],
            1e-4,
        );
        assert_close(
            &format!("{name} reconstruction"),
            &t(&run.reconstruction),
            &want["reconstruction"],
            1e-4,
        );
        assert_close(&format!("{name} error"), &t(&run.error), &want["error"], 1e-4);
        // The active set exactly, and each activation.
        let g = load_tensors(dir.join("graph.safetensors"));
        let af = i64s(&g["active_features"]);
        let got: Vec<i64> = (0..run.active.len())
            .flat_map(|i| {
                [
                    run.active.layer[i] as i64,
                    run.active.pos[i] as i64,
                    run.active.feature[i] as i64,
                ]
            })
            .collect();
        assert_eq!(got, af, "{name}: active features");
        let acts = Tensor::from_slice(&run.active.value, run.active.len(), &Device::Cpu).unwrap();
        assert_close(&format!("{name} activations"), &acts, &g["activation_values"], 1e-4);
    }
}

#[test]
fn the_graph_equals_circuit_tracers() {
    for dir in cases() {
        let case = Case::load(&dir);
        let graph = case.graph(&case.opts());
        let Case { name, meta, .. } = &case;
        let want = load_tensors(dir.join("graph.safetensors"));
        let sel: Vec<i64> = graph.selected_features.iter().map(|&i| i as i64).collect();
        assert_eq!(sel, i64s(&want["selected_features"]), "{name}: selected features");
        let logits: Vec<i64> = graph.logit_targets.iter().map(|t| t.vocab_idx as i64).collect();
        assert_eq!(logits, i64s(&want["logit_tokens"]), "{name}: logit tokens");
        for (a, b) in graph.logit_probabilities.iter().zip(f32s(&want["logit_probabilities"])) {
            assert!((a - b).abs() <= 1e-5, "{name}: logit probability {a} vs {b}");
        }
        if let Ok(dbg) = std::env::var("HOOKLENS_DEBUG_GRAPHS") {
            graph.save_safetensors(format!("{dbg}/{name}.safetensors")).unwrap();
        }
        let n = graph.n_nodes();
        assert_eq!(n as i64, meta["n_nodes"].as_i64().unwrap(), "{name}: nodes");
        let adj = Tensor::from_vec(graph.adjacency.to_vec().unwrap(), (n, n), &Device::Cpu).unwrap();
        assert_close(&format!("{name} adjacency"), &adj, &want["adjacency_matrix"], 1e-4);

        let pruned = prune(&graph, 0.8, 0.98).unwrap();
        let file = dir.join("pruning.safetensors");
        assert_eq!(pruned.node_mask, read_bools(&file, "node_mask"), "{name}: node mask");
        assert_eq!(pruned.edge_mask(), read_bools(&file, "edge_mask"), "{name}: edge mask");
        let want = f32_tensors(&file);
        let inf = Tensor::from_slice(&pruned.node_influence, n, &Device::Cpu).unwrap();
        assert_close(&format!("{name} node influence"), &inf, &want["node_influence"], 1e-4);
        let cum = Tensor::from_slice(&pruned.cumulative_scores, n, &Device::Cpu).unwrap();
        assert_close(
            &format!("{name} cumulative scores"),
            &cum,
            &want["cumulative_scores"],
            1e-4,
        );
    }
}

#[test]
fn the_graph_file_equals_create_graph_files_output() {
    use hooklens_models::circuits::{graph_file, GraphFile, GraphFileOptions};
    for dir in cases() {
        let case = Case::load(&dir);
        let graph = case.graph(&case.opts());
        let Case {
            name, meta, model: m, ..
        } = &case;
        let slug = meta["case"].as_str().unwrap().to_string();
        let text = |id: u32| m.to_single_str_token(id).unwrap();
        let got = graph_file(&graph, &GraphFileOptions::new(slug.clone()), &text).unwrap();
        let want = GraphFile::from_json(
            &std::fs::read_to_string(dir.join("graph_files").join(format!("{slug}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got.metadata, want.metadata, "{name}: metadata");
        assert_eq!(got.q_params, want.q_params, "{name}: qParams");
        let ids = |f: &GraphFile| f.nodes.iter().map(|n| n.node_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "{name}: nodes");
        for (a, b) in got.nodes.iter().zip(&want.nodes) {
            let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                (x, y) => x == y,
            };
            assert!(
                close(a.influence, b.influence) && close(a.activation, b.activation),
                "{name}: node {}",
                a.node_id
            );
            assert!(
                (a.token_prob - b.token_prob).abs() <= 1e-5,
                "{name}: node {}",
                a.node_id
            );
            assert_eq!(
                (
                    &a.feature,
                    &a.layer,
                    a.ctx_idx,
                    &a.feature_type,
                    a.is_target_logit,
                    &a.js_node_id,
                    &a.clerp
                ),
                (
                    &b.feature,
                    &b.layer,
                    b.ctx_idx,
                    &b.feature_type,
                    b.is_target_logit,
                    &b.js_node_id,
                    &b.clerp
                ),
                "{name}: node {}",
                a.node_id
            );
        }
        let links = |f: &GraphFile| {
            f.links
                .iter()
                .map(|l| (l.source.clone(), l.target.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(links(&got), links(&want), "{name}: links");
        let scale = want.links.iter().fold(0f64, |m, l| m.max(l.weight.abs()));
        for (a, b) in got.links.iter().zip(&want.links) {
            assert!(
                (a.weight - b.weight).abs() <= 1e-4 * scale,
                "{name}: link {} -> {}",
                a.source,
                a.target
            );
        }
    }
}

#[test]
fn a_feature_intervention_adds_the_change_times_the_decoder_at_the_mlp_output() {
    use hooklens_core::{HookSet, HookedModel};
    use hooklens_models::circuits::{feature_intervention, FeatureIntervention};
    for name in ["circuits", "circuits-clt"] {
        let Case {
            model: m,
            tc,
            tokens: toks,
            ..
        } = Case::load(&testdata().join(name));
        let run = replacement_run(&m, &tc, &toks).unwrap();
        let t = Tensor::new(toks.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let clean = m.forward(&t).unwrap().squeeze(0).unwrap();
        // Setting every feature to its own value changes nothing.
        let same: Vec<FeatureIntervention> = (0..run.active.len())
            .step_by(7)
            .map(|i| FeatureIntervention {
                layer: run.active.layer[i],
                pos: run.active.pos[i],
                feature: run.active.feature[i],
                value: run.active.value[i],
            })
            .collect();
        let got = feature_intervention(&m, &tc, &toks, &same, true).unwrap();
        assert_close(&format!("{name}: no-op intervention"), &got, &clean, 1e-5);
        // In the last layer, a change of a feature is its decoder row times the change,
        // added at the MLP's output: the same as a hook adding it there by hand.
        let last = run.n_layers() - 1;
        let i = (0..run.active.len())
            .rev()
            .find(|&i| run.active.layer[i] == last)
            .unwrap();
        let (pos, feat, value) = (run.active.pos[i], run.active.feature[i], run.active.value[i]);
        let new = value + 3.0;
        let iv = [FeatureIntervention {
            layer: last,
            pos,
            feature: feat,
            value: new,
        }];
        let got = feature_intervention(&m, &tc, &toks, &iv, false).unwrap();
        let row = tc.decoder_rows(last, &[feat]).unwrap();
        let d = run.d_model();
        let mut delta = vec![0f32; toks.len() * d];
        delta[pos * d..(pos + 1) * d]
            .iter_mut()
            .zip(&row[..d])
            .for_each(|(a, b)| *a = 3.0 * b);
        let delta = Tensor::from_vec(delta, (1, toks.len(), d), &Device::Cpu).unwrap();
        let hooks = HookSet::new().fwd(format!("blocks.{last}.mlp.hook_out"), move |x: &Tensor, _| {
            Ok(Some((x + &delta)?))
        });
        let want = m.run_with_hooks(hooks, |m| m.forward(&t)).unwrap().squeeze(0).unwrap();
        assert_close(&format!("{name}: last-layer intervention"), &got, &want, 1e-5);
        let moved = hooklens_testutil::max_abs_diff(&got, &clean);
        assert!(
            moved > 1e-3,
            "{name}: the intervention moved the logits by only {moved}"
        );
    }
}

#[test]
fn a_graph_past_the_memory_budget_is_built_in_files_with_the_same_numbers() {
    use hooklens_models::circuits::graph_file_from;
    use hooklens_models::circuits::GraphFileOptions;
    let tmp = hooklens_testutil::TempDir::new("spill");
    for dir in cases() {
        let case = Case::load(&dir);
        let Case { name, model: m, .. } = &case;
        let in_memory = case.graph(&case.opts());
        assert!(in_memory.adjacency.as_slice().is_some(), "{name}");
        let spill_dir = tmp.path(name);
        std::fs::create_dir_all(&spill_dir).unwrap();
        let spilled = case.graph(&case.opts().memory_budget(1).spill_dir(&spill_dir));
        assert!(
            spilled.adjacency.as_slice().is_none(),
            "{name}: a 1-byte budget keeps nothing in memory"
        );
        // The temporary files are unlinked at once: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(&spill_dir).unwrap().count(), 0, "{name}");
        assert_eq!(spilled.selected_features, in_memory.selected_features, "{name}");
        assert_eq!(
            spilled.adjacency.to_vec().unwrap(),
            in_memory.adjacency.to_vec().unwrap(),
            "{name}"
        );
        let (a, b) = (
            prune(&in_memory, 0.8, 0.98).unwrap(),
            prune(&spilled, 0.8, 0.98).unwrap(),
        );
        assert_eq!(a, b, "{name}: pruning");
        let text = |id: u32| m.to_single_str_token(id).unwrap();
        let opts = GraphFileOptions::new("x");
        assert_eq!(
            graph_file_from(&in_memory, &a, &opts, &text).unwrap(),
            graph_file_from(&spilled, &b, &opts, &text).unwrap(),
            "{name}: graph file"
        );
        // The streamed safetensors file is the in-memory one, byte for byte.
        let (p1, p2) = (
            tmp.path(&format!("{name}-1.safetensors")),
            tmp.path(&format!("{name}-2.safetensors")),
        );
        in_memory.save_safetensors(&p1).unwrap();
        spilled.save_safetensors(&p2).unwrap();
        assert_eq!(
            std::fs::read(&p1).unwrap(),
            std::fs::read(&p2).unwrap(),
            "{name}: graph.safetensors"
        );
    }
}
