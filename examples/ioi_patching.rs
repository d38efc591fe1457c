//! Indirect-object identification, TransformerLens style: activation patching of the
//! residual stream (by layer and position) and of every head's output (by layer), plus
//! direct logit attribution of the heads.
//!
//! `cargo run --release --example ioi_patching [-- MODEL]`
//!
//! MODEL is a model directory or a Hugging Face id (`gpt2`). On GPT-2 the clean prompts
//! are "When John and Mary went to the shops, John gave the bag to" (answer " Mary"),
//! the corrupted ones swap who gives, and the metric is the logit difference between the
//! right and the wrong name, normalised so that 0 is the corrupted run and 1 the clean
//! one. By default it runs offline on the TransformerLens reference checkpoint in
//! `testdata/tiny-gpt2/model` (random weights, 512-token vocabulary), on token ids with
//! the same structure, so the numbers only show the machinery.

use hooklens::candle_core::{DType, IndexOp, Tensor};
use hooklens::models::analysis::patching::{stderr_progress, Patching};
use hooklens::models::analysis::{Analysis, LogitAttrs, StackHeads};
use hooklens::models::model::PaddingSide;
use hooklens::{CacheOptions, HookedModel, HookedTransformer, LoadOptions, Slice};

/// GPT-2's vocabulary size: below it, the model cannot read GPT-2 BPE ids.
const GPT2_VOCAB: usize = 50257;

/// (template, indirect object, subject): the clean prompt names the subject twice.
const PROMPTS: [(&str, &str, &str); 2] = [
    (
        "When {A} and {B} went to the shops,{S} gave the bag to",
        " Mary",
        " John",
    ),
    (
        "When {A} and {B} went to the park,{S} gave the ball to",
        " James",
        " Tom",
    ),
];

struct Task {
    clean: Tensor,
    corrupted: Tensor,
    /// Correct and incorrect answer ids per prompt, `[batch]` each.
    answers: (Tensor, Tensor),
    labels: Vec<String>,
}

fn text_task(model: &HookedTransformer) -> hooklens::Result<Task> {
    let mut clean = Vec::new();
    let mut corrupted = Vec::new();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (template, io, s) in PROMPTS {
        let base = template.replace("{A}", s.trim()).replace("{B}", io.trim());
        clean.push(base.replace("{S}", s));
        // The corrupted prompt has the other name as subject: now the answer flips.
        corrupted.push(base.replace("{S}", io));
        good.push(model.to_single_token(io)?);
        bad.push(model.to_single_token(s)?);
    }
    let labels = model.to_str_tokens(clean[0].as_str(), true)?;
    let device = model.device();
    Ok(Task {
        clean: model.to_tokens(clean.as_slice(), true, PaddingSide::Right)?,
        corrupted: model.to_tokens(corrupted.as_slice(), true, PaddingSide::Right)?,
        answers: (Tensor::new(good, device)?, Tensor::new(bad, device)?),
        labels,
    })
}

/// The same structure on token ids: names 10 and 20, the subject repeated at position 5.
fn token_task(model: &HookedTransformer) -> hooklens::Result<Task> {
    let bos = model.cfg().bos_token_id.unwrap_or(0);
    let device = model.device();
    let clean = Tensor::new(&[[bos, 1, 10, 2, 20, 10, 3, 4], [bos, 1, 30, 2, 40, 30, 3, 4]], device)?;
    let corrupted = Tensor::new(&[[bos, 1, 10, 2, 20, 20, 3, 4], [bos, 1, 30, 2, 40, 40, 3, 4]], device)?;
    let labels = ["BOS", "When", "A", "and", "B", "S", "gave", "to"]
        .map(String::from)
        .to_vec();
    Ok(Task {
        clean,
        corrupted,
        answers: (Tensor::new(&[20u32, 40], device)?, Tensor::new(&[10u32, 30], device)?),
        labels,
    })
}

/// Mean logit difference (correct - incorrect) at the last position. `logits` `[batch, pos, d_vocab]`.
fn logit_diff(logits: &Tensor, answers: &(Tensor, Tensor)) -> hooklens::Result<f64> {
    let last = logits.i((.., logits.dim(1)? - 1))?.contiguous()?;
    let pick = |ids: &Tensor| -> hooklens::Result<Tensor> {
        Ok(last.gather(&ids.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)?)
    };
    let diff = (pick(&answers.0)? - pick(&answers.1)?)?;
    Ok(diff.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn print_grid(title: &str, grid: &Tensor, rows: &[String], cols: &[String]) -> hooklens::Result<()> {
    println!("\n{title}");
    let width = cols.iter().map(|c| c.chars().count()).max().unwrap_or(0).clamp(6, 10);
    print!("{:>8}", "");
    for c in cols {
        let c: String = c.chars().take(width).collect();
        print!(" {c:>width$}");
    }
    println!();
    for (r, values) in rows.iter().zip(grid.to_vec2::<f32>()?) {
        print!("{r:>8}");
        for v in values {
            print!(" {v:>width$.3}");
        }
        println!();
    }
    Ok(())
}

fn main() -> hooklens::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny-gpt2/model").to_string());
    let model = HookedTransformer::from_pretrained(&name, &LoadOptions::default())?;
    let cfg = model.cfg();
    let task = if cfg.d_vocab >= GPT2_VOCAB {
        text_task(&model)?
    } else {
        token_task(&model)?
    };
    if task.clean.dims() != task.corrupted.dims() {
        return Err(hooklens::Error::invalid(
            "clean and corrupted prompts must tokenize to the same length (single-token names)",
        ));
    }

    let (clean_logits, clean_cache) = model.run_with_cache(CacheOptions::new(), |m| m.forward(&task.clean))?;
    let clean_diff = logit_diff(&clean_logits, &task.answers)?;
    let corrupted_diff = logit_diff(&model.forward(&task.corrupted)?, &task.answers)?;
    println!("{name}: logit difference clean {clean_diff:.4}, corrupted {corrupted_diff:.4}");
    let span = clean_diff - corrupted_diff;
    if span.abs() < 1e-6 {
        return Err(hooklens::Error::invalid(
            "clean and corrupted runs give the same metric: nothing to patch",
        ));
    }
    // 0 = as corrupted, 1 = as clean.
    let metric =
        |logits: &Tensor| -> hooklens::Result<f64> { Ok((logit_diff(logits, &task.answers)? - corrupted_diff) / span) };

    let patching = Patching::gpt2(&model, &task.corrupted, &clean_cache)?;
    let layers: Vec<String> = (0..cfg.n_layers).map(|l| format!("L{l}")).collect();
    let positions: Vec<String> = task.labels.iter().map(|s| s.trim().to_string()).collect();
    let heads: Vec<String> = (0..cfg.n_heads).map(|h| format!("H{h}")).collect();

    let block = patching
        .progress(stderr_progress("residual, attention and MLP by position"))
        .get_act_patch_block_every(&metric)?;
    print_grid(
        "resid_pre patched, by layer and position",
        &block.get(0)?,
        &layers,
        &positions,
    )?;
    print_grid(
        "attn_out patched, by layer and position",
        &block.get(1)?,
        &layers,
        &positions,
    )?;
    print_grid(
        "mlp_out patched, by layer and position",
        &block.get(2)?,
        &layers,
        &positions,
    )?;

    let patching = Patching::gpt2(&model, &task.corrupted, &clean_cache)?;
    let by_head = patching
        .progress(stderr_progress("every head's output, all positions"))
        .get_act_patch_attn_head_out_all_pos(&metric)?;
    print_grid("head outputs (z) patched, by layer and head", &by_head, &layers, &heads)?;

    // Direct logit attribution of each head to the logit difference, last position.
    let analysis = Analysis::new(&model, clean_cache);
    let stack = analysis.stack_head_results(&StackHeads {
        pos_slice: Slice::Index(-1),
        ..Default::default()
    })?;
    let attrs = analysis.logit_attrs(
        &stack.stack,
        &task.answers.0,
        &LogitAttrs::new().pos_slice(-1).incorrect_tokens(task.answers.1.clone()),
    )?; // [layers * heads, batch]
    let per_head = attrs.mean(1)?.reshape((cfg.n_layers, cfg.n_heads))?;
    print_grid(
        "direct logit attribution of each head (clean run)",
        &per_head,
        &layers,
        &heads,
    )?;
    Ok(())
}
