//! Checkpoints of a run: everything a resumed run needs to end with the same weights,
//! bit for bit, as an uninterrupted one.
//!
//! `OUT/checkpoints/N/` (N: tokens trained on) holds `trainer_state.safetensors` (the
//! training-time parameters, Adam's moments, the firing counters) and
//! `trainer_state.json` (the options, step counts, the input scale). A checkpoint is
//! written in a hidden temporary folder and renamed into place, so a folder with a
//! final name is always complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hooklens_core::{Error, Result};
use serde_json::{json, Value};

use super::adam::AdamState;
use super::architecture::Params;
use super::export::write_atomic;
use super::options::TrainOptions;
use super::trainer::SaeTrainer;

/// The checkpoints' folder in an output folder.
pub(crate) const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_TENSORS: &str = "trainer_state.safetensors";
const STATE_JSON: &str = "trainer_state.json";
const FORMAT: u64 = 1;

/// Writes `t`'s state to `root/N`, replacing a checkpoint of the same N.
pub(crate) fn save(t: &SaeTrainer, root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = t.n_training_samples.to_string();
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for ((name, param), state) in t.params.named().into_iter().zip(&t.adam) {
        tensors.insert(name.to_string(), param.clone());
        tensors.insert(format!("{name}.exp_avg"), vec_tensor(&state.exp_avg)?);
        tensors.insert(format!("{name}.exp_avg_sq"), vec_tensor(&state.exp_avg_sq)?);
    }
    tensors.insert("act_freq_scores".into(), vec_tensor(&t.act_freq_scores)?);
    tensors.insert(
        "n_forward_passes_since_fired".into(),
        vec_tensor(&t.n_forward_passes_since_fired)?,
    );
    let file = tmp.join(STATE_TENSORS);
    candle_core::safetensors::save(&tensors, &file)
        .map_err(|e| Error::invalid(format!("{}: writing safetensors: {e}", file.display())))?;
    let state = json!({
        "format": FORMAT,
        "hook": t.hook,
        "d_in": t.d_in,
        "options": t.opts.to_json(),
        "n_training_steps": t.n_training_steps,
        "n_training_samples": t.n_training_samples,
        "n_frac_active_samples": t.n_frac_active_samples,
        "scaling_factor": t.scaling_factor,
        "topk_threshold": t.topk_threshold,
        "hook_out": t.out.as_ref().map(|(h, _)| h),
        "d_out": t.out.as_ref().map(|(_, d)| d),
    });
    let text = serde_json::to_string_pretty(&state).map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&tmp.join(STATE_JSON), text.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

fn vec_tensor(v: &[f32]) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
}

/// Removes the temporary folders a killed run left under `root` (a checkpoint being
/// written; never a finished one, which has its final name).
pub(crate) fn remove_leftovers(root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") && e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint under `root` (the most tokens), if any.
pub(crate) fn newest(root: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(root, e)),
    };
    let best = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.parse().ok()?;
            e.path().join(STATE_JSON).is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    Ok(best.map(|(_, p)| p))
}

/// Loads the checkpoint in `dir` for a run with `opts` on `hook` `d_in` wide (a
/// transcoder's: to `out`, its output hook and width); any difference from the
/// checkpoint's settings is an error naming it.
pub(crate) fn load(
    dir: &Path,
    opts: &TrainOptions,
    hook: &str,
    d_in: usize,
    out: Option<(&str, usize)>,
) -> Result<SaeTrainer> {
    let state_path = dir.join(STATE_JSON);
    let state = read_state(&state_path)?;
    let differ = setting_differences(&state, opts, hook, d_in, out);
    if !differ.is_empty() {
        return Err(Error::invalid(format!(
            "{} was written with other settings ({}); use the same settings to resume, or another --out",
            dir.display(),
            differ.join("; ")
        )));
    }
    let mut t = match out {
        Some((hook_out, d_out)) => SaeTrainer::new_transcoder(opts.clone(), d_in, hook, d_out, hook_out)?,
        None => SaeTrainer::new(opts.clone(), d_in, hook)?,
    };
    restore_counters(&mut t, &state, &state_path)?;
    restore_tensors(&mut t, &dir.join(STATE_TENSORS))?;
    Ok(t)
}

/// The error for a checkpoint file at `path` that is not as written.
fn bad_file(path: &Path, reason: String) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The JSON state in `state_path`, once its format is known to be this one's.
fn read_state(state_path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(state_path).map_err(|e| Error::io(state_path, e))?;
    let state: Value = serde_json::from_str(&text).map_err(|e| bad_file(state_path, format!("not valid JSON: {e}")))?;
    if state["format"].as_u64() != Some(FORMAT) {
        return Err(bad_file(
            state_path,
            format!("checkpoint format {} (this hooklens writes {FORMAT})", state["format"]),
        ));
    }
    Ok(state)
}

/// One line per setting that differs between the checkpoint's `state` and this run
/// (hook, widths, then the options in `TrainOptions::to_json`'s order); empty when
/// they all match.
fn setting_differences(
    state: &Value,
    opts: &TrainOptions,
    hook: &str,
    d_in: usize,
    out: Option<(&str, usize)>,
) -> Vec<String> {
    let mut differ = Vec::new();
    if state["hook"].as_str() != Some(hook) {
        differ.push(format!("hook: checkpoint {}, now `{hook}`", state["hook"]));
    }
    if state["d_in"].as_u64() != Some(d_in as u64) {
        differ.push(format!("d_in: checkpoint {}, now {d_in}", state["d_in"]));
    }
    let (hook_out, d_out) = (out.map(|(h, _)| h), out.map(|(_, d)| d as u64));
    if state["hook_out"].as_str() != hook_out || state["d_out"].as_u64() != d_out {
        differ.push(format!(
            "hook_out: checkpoint {} ({} wide), now {hook_out:?} ({d_out:?} wide)",
            state["hook_out"], state["d_out"]
        ));
    }
    let now = opts.to_json();
    if let (Some(saved), Some(now)) = (state["options"].as_object(), now.as_object()) {
        for (k, v) in now {
            let was = saved.get(k).unwrap_or(&Value::Null);
            if was != v {
                differ.push(format!("{k}: checkpoint {was}, now {v}"));
            }
        }
    }
    differ
}

/// `Ok` once `t`'s step and token counts, input scale and BatchTopK threshold are the
/// checkpoint's `state` (read from `state_path`).
fn restore_counters(t: &mut SaeTrainer, state: &Value, state_path: &Path) -> Result<()> {
    let uint = |k: &str| {
        state[k]
            .as_u64()
            .ok_or_else(|| bad_file(state_path, format!("no `{k}`")))
    };
    t.n_training_steps = uint("n_training_steps")? as usize;
    t.n_training_samples = uint("n_training_samples")?;
    t.n_frac_active_samples = uint("n_frac_active_samples")?;
    t.scaling_factor = state["scaling_factor"].as_f64();
    t.topk_threshold = state["topk_threshold"]
        .as_f64()
        .ok_or_else(|| bad_file(state_path, "no `topk_threshold`".into()))?;
    Ok(())
}

/// `Ok` once `t`'s parameters, Adam moments and firing counters are the ones in the
/// tensors `file`, each checked against the shape `t` gives it.
fn restore_tensors(t: &mut SaeTrainer, file: &Path) -> Result<()> {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| Error::invalid(format!("{}: not a readable checkpoint: {e}", file.display())))?;
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| bad_file(file, format!("no tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(bad_file(
                file,
                format!("`{name}` is {:?}, expected {shape:?}", t.dims()),
            ));
        }
        Ok(t)
    };
    // The fresh trainer's parameters name what the checkpoint must hold, and shape it.
    let d_sae = t.opts.d_sae;
    let wanted: Vec<(&'static str, Vec<usize>)> = t
        .params
        .named()
        .into_iter()
        .map(|(name, p)| (name, p.dims().to_vec()))
        .collect();
    let mut params = Vec::with_capacity(wanted.len());
    for (i, (name, shape)) in wanted.iter().enumerate() {
        params.push(take(name, shape)?);
        let n: usize = shape.iter().product();
        t.adam[i] = AdamState {
            exp_avg: take(&format!("{name}.exp_avg"), &[n])?.to_vec1()?,
            exp_avg_sq: take(&format!("{name}.exp_avg_sq"), &[n])?.to_vec1()?,
        };
    }
    let mut it = params.into_iter();
    let mut next = || it.next().expect("the parameters pushed above");
    t.params = Params {
        w_enc: next(),
        b_enc: next(),
        w_dec: next(),
        b_dec: next(),
        threshold: t.params.threshold.is_some().then(&mut next),
    };
    t.act_freq_scores = take("act_freq_scores", &[d_sae])?.to_vec1()?;
    t.n_forward_passes_since_fired = take("n_forward_passes_since_fired", &[d_sae])?.to_vec1()?;
    Ok(())
}
