//! `hooklens demo`: the induction circuit of the built-in model, found, broken and drawn.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use hooklens::{HookSet, HookedModel};
use hooklens_models::builtin::{half_losses, induction_scores, previous_token_scores, repeated_tokens};
use hooklens_models::model::SeededRng;
use hooklens_models::viz::{attention_html, attention_patterns};
use hooklens_models::{GenerateOptions, HookedTransformer};

use super::common::{check_out, write_text_file, ModelArgs};
use crate::error::{CliError, CliResult};

/// A phrase that a model which copies continues from memory once it has seen it. No
/// token occurs in it twice: where one does, what followed it is ambiguous to a model
/// that, like the built-in one, looks back only one token (the built-in model then
/// mixes the two continuations).
const DEFAULT_PHRASE: &str = " an old lighthouse keeper counted seven ships sailing past northern rocks at dawn";

/// Models with at most this many heads get every head ablated in turn (one small
/// forward each); larger ones only the strongest induction head and a control.
const ABLATE_EVERY_HEAD_UP_TO: usize = 48;

/// Find, break and draw the induction heads of the built-in model (runs offline).
///
/// Runs sequences of random tokens repeated twice: a model with induction heads
/// predicts the repeat from the first occurrence, so its loss on the second half falls
/// far below the first. Prints both losses and every head's induction score (the
/// attention from a token in the repeat to the token after its first occurrence),
/// zero-ablates the strongest induction head with a hook on its `attn.hook_z` and shows
/// the loss on the repeat going back up, checks that a repeated phrase of real text is
/// continued by copying, and writes the attention patterns to an HTML file.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seeds the random tokens.
    #[arg(long, value_name = "S", default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Random tokens before the repeat (each sequence is BOS + N + the same N). The
    /// built-in model was trained on sequences of up to 57 tokens, hence 20.
    #[arg(long, value_name = "N", default_value_t = 20, allow_negative_numbers = true)]
    pub half: usize,
    /// How many random sequences to average over.
    #[arg(long, value_name = "B", default_value_t = 16, allow_negative_numbers = true)]
    pub batch: usize,
    /// The phrase of the copying check (shown once, then its first third again).
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_PHRASE)]
    pub phrase: String,
    /// Where to write the attention view of the first random sequence.
    #[arg(long, value_name = "FILE.html", default_value = "hooklens-demo.html")]
    pub out: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult<()> {
    let model = args.model.load()?;
    check_out(&args.out, &args.model, None, true)?;
    let cfg = model.cfg().clone();
    // Checked: `--half 18446744073709551615` must not wrap round to a small length.
    let positions = args.half.checked_mul(2).and_then(|n| n.checked_add(1));
    if args.half < 3 || positions.is_none_or(|n| n > cfg.n_ctx) {
        return Err(CliError(format!(
            "--half {} must be at least 3 and fit twice in the context (1 + 2 * half <= n_ctx = {})",
            args.half, cfg.n_ctx
        )));
    }
    if args.batch == 0 {
        return Err(CliError::msg("--batch must be at least 1"));
    }
    // The runs hold the batch's logits and every activation of one forward at once.
    let tokens = (args.batch as u64).saturating_mul(positions.unwrap_or(usize::MAX) as u64);
    let per_token = (cfg.d_vocab as u64)
        .saturating_add((cfg.n_layers as u64).saturating_mul(16 * cfg.d_model as u64 + 4 * cfg.d_mlp as u64));
    hooklens::__internal::check_memory(
        &format!("the demo's batch of {}", args.batch),
        tokens
            .saturating_mul(per_token)
            .saturating_mul(3 * model.dtype().size_in_bytes() as u64),
        "give a smaller --batch or --half",
    )?;
    // Everything that can refuse does so before anything is printed.
    let phrase = PhraseCheck::prepare(&model, &args.phrase)?;
    let bos = model.bos_token_id()?;
    let mut rng = SeededRng::new(args.seed);
    let tokens = repeated_tokens(&mut rng, args.batch, args.half, cfg.d_vocab, bos)?.to_device(model.device())?;
    crate::outln!(
        "model: {} ({} layers x {} heads, d_model {})",
        args.model.model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_model
    );
    crate::outln!(
        "input: {} sequences of BOS + {} random tokens + the same {} again (seed {})",
        args.batch,
        args.half,
        args.half,
        args.seed
    );

    // 1. The repeat is predictable only to a model that looks back: compare the halves.
    let (first, second) = half_losses(&model, &tokens, args.half)?;
    let uniform = (cfg.d_vocab as f32).ln();
    crate::outln!("");
    crate::outln!("loss on the first half:   {first:.3}  (random tokens: nothing to predict from)");
    if first > uniform {
        crate::outln!(
            "                          above ln(d_vocab) = {uniform:.1}, a uniform guess: the model bets confidently on \
             tokens it cannot know (the built-in one was trained only to copy)"
        );
    }
    let copies = second < first - 1.0;
    crate::outln!(
        "loss on the repeat:       {second:.3}  ({})",
        if copies {
            "far below the first half: predicted by copying from it"
        } else {
            "not far below the first half: this model does not predict the repeat by copying"
        }
    );

    // 2. Which heads do it: attention from each repeated token to the one after its
    //    first occurrence; and the heads that attend to the previous token, whose
    //    output an induction head's keys read ("the token before me was X").
    let scores = to_grid(&induction_scores(&model, &tokens, args.half)?)?;
    crate::outln!("");
    crate::outln!("induction score per head (mean attention to the token after the earlier copy):");
    print_grid(&scores, 3)?;
    let previous = to_grid(&previous_token_scores(&model, &tokens)?)?;
    crate::outln!("");
    crate::outln!("previous-token score per head (mean attention to the token just before):");
    print_grid(&previous, 3)?;
    if hooklens_models::builtin::is_builtin(&args.model.model) {
        crate::outln!(
            "(the built-in model's layer 0 heads 0 and 1 were trained toward the previous token by an auxiliary \
             loss; layer 1's induction heads formed by themselves: hooklens-models/builtin/README.md)"
        );
    }
    let (best_l, best_h, best) = argmax(&scores);
    crate::outln!("strongest induction head: L{best_l}H{best_h} (score {best:.3})");

    // 3. Break it: zero a head's output (its slice of attn.hook_z) for one run. A small
    //    model gets every head ablated in turn, which also shows the previous-token
    //    heads the circuit needs; a large one, the strongest head and a control.
    crate::outln!("");
    let n_all = cfg.n_layers * cfg.n_heads;
    let ablated = if n_all <= ABLATE_EVERY_HEAD_UP_TO {
        let mut grid = vec![vec![0f32; cfg.n_heads]; cfg.n_layers];
        for (l, row) in grid.iter_mut().enumerate() {
            for (h, cell) in row.iter_mut().enumerate() {
                *cell = ablated_losses(&model, &tokens, args.half, l, h)?.1;
            }
        }
        crate::outln!("loss on the repeat with one head ablated (was {second:.3} with none):");
        print_grid(&grid, 3)?;
        print_most_needed(&grid, second, &scores, &previous)?;
        grid[best_l][best_h]
    } else {
        // The control: the same layer's weakest induction head.
        let low_h = (0..cfg.n_heads)
            .min_by(|&a, &b| scores[best_l][a].total_cmp(&scores[best_l][b]))
            .unwrap_or(0);
        let control = ablated_losses(&model, &tokens, args.half, best_l, low_h)?.1;
        crate::outln!(
            "control: the same layer's weakest induction head L{best_l}H{low_h} (score {:.3}) ablated: {control:.3}",
            scores[best_l][low_h]
        );
        ablated_losses(&model, &tokens, args.half, best_l, best_h)?.1
    };
    crate::outln!(
        "loss on the repeat with L{best_l}H{best_h} ablated:  {ablated:.3}  (was {second:.3}: {})",
        verdict(second, ablated)
    );

    // 4. Real text: a phrase seen once is continued from memory when it starts again.
    crate::outln!("");
    phrase.run(&model)?;

    // 5. The picture: every head on the first random sequence.
    let first_seq = tokens.i(0..1)?;
    let mut view = attention_patterns(&model, &first_seq, None)?;
    view.title = format!(
        "{}: BOS + {} random tokens, repeated (strongest induction head L{best_l}H{best_h})",
        args.model.model, args.half
    );
    view.selected = Some((best_l, best_h));
    write_text_file(&args.out, &attention_html(&view)?)?;
    crate::outln!("");
    if best > 0.3 {
        crate::outln!(
            "wrote the attention patterns of every head to {} (open it in a browser: it opens on L{best_l}H{best_h}, \
             a stripe {} tokens below the diagonal)",
            args.out.display(),
            args.half - 1
        );
    } else {
        crate::outln!(
            "wrote the attention patterns of every head to {} (no head has a clear induction stripe: the \
             strongest, L{best_l}H{best_h}, scores {best:.3})",
            args.out.display()
        );
    }
    Ok(())
}

/// The half losses with head `h` of layer `l` zeroed through a per-run hook.
fn ablated_losses(
    model: &HookedTransformer,
    tokens: &Tensor,
    half: usize,
    l: usize,
    h: usize,
) -> CliResult<(f32, f32)> {
    let n_heads = model.cfg().n_heads;
    let keep: Vec<f32> = (0..n_heads).map(|i| if i == h { 0.0 } else { 1.0 }).collect();
    // [1, 1, head, 1]: broadcasts over batch, position and d_head of hook_z.
    let mask = Tensor::from_vec(keep, (1, 1, n_heads, 1), &Device::Cpu)?
        .to_dtype(model.dtype())?
        .to_device(model.device())?;
    let hooks = HookSet::new().fwd(format!("blocks.{l}.attn.hook_z"), move |z, _hp| {
        Ok(Some(z.broadcast_mul(&mask)?))
    });
    Ok(model.run_with_hooks(hooks, |m| half_losses(m, tokens, half))?)
}

fn verdict(before: f32, after: f32) -> &'static str {
    if after > before + 0.5 {
        "up: the copying needs this head"
    } else if after > before {
        "a little up"
    } else {
        "not up"
    }
}

/// The heads whose ablation raises the loss on the repeat most, each with what the
/// scores say it is; a head that is neither an induction nor a previous-token head is
/// said to be needed for reasons these scores do not show.
fn print_most_needed(grid: &[Vec<f32>], base: f32, induction: &[Vec<f32>], previous: &[Vec<f32>]) -> CliResult<()> {
    let mut cells: Vec<(usize, usize, f32)> = grid
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (l, h, v)))
        .collect();
    cells.sort_by(|a, b| b.2.total_cmp(&a.2));
    let hurt: Vec<_> = cells.into_iter().filter(|c| c.2 > base + 0.5).take(3).collect();
    if hurt.is_empty() {
        crate::outln!("no single head's ablation raises the loss on the repeat by more than 0.5");
        return Ok(());
    }
    crate::outln!("the heads whose ablation hurts most:");
    for (l, h, v) in hurt {
        let role = if induction[l][h] > 0.5 {
            format!("an induction head (score {:.3})", induction[l][h])
        } else if previous[l][h] > 0.5 {
            format!("a previous-token head (score {:.3})", previous[l][h])
        } else {
            format!(
                "neither an induction ({:.3}) nor a previous-token head ({:.3}): the circuit needs it for something \
                 these scores do not measure",
                induction[l][h], previous[l][h]
            )
        };
        crate::outln!("  L{l}H{h}: {v:.3} (+{:.3}), {role}", v - base);
    }
    Ok(())
}

/// The layer, head and value of the largest entry of a `[layer][head]` grid.
fn argmax(scores: &[Vec<f32>]) -> (usize, usize, f32) {
    let mut best = (0, 0, scores[0][0]);
    for (l, row) in scores.iter().enumerate() {
        for (h, &s) in row.iter().enumerate() {
            if s > best.2 {
                best = (l, h, s);
            }
        }
    }
    best
}

/// `[n_layers, n_heads]` scores as rows of f32.
fn to_grid(t: &Tensor) -> CliResult<Vec<Vec<f32>>> {
    Ok(t.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Prints a `[layer][head]` grid with a header of head numbers.
fn print_grid(grid: &[Vec<f32>], decimals: usize) -> CliResult<()> {
    let mut header = "        ".to_string();
    for h in 0..grid.first().map_or(0, Vec::len) {
        header.push_str(&format!("  head {h:<2}"));
    }
    crate::outln!("{}", header.trim_end());
    for (l, row) in grid.iter().enumerate() {
        let mut line = format!("layer {l:<2}");
        for s in row {
            line.push_str(&format!("  {s:>7.decimals$}"));
        }
        crate::outln!("{line}");
    }
    Ok(())
}

/// The copying check on real text: `phrase` shown once, then its first third again.
/// Prepared (tokenized and checked against the context) before the demo prints anything.
struct PhraseCheck {
    phrase: String,
    ids: Vec<u32>,
    shown: usize,
}

impl PhraseCheck {
    fn prepare(model: &HookedTransformer, phrase: &str) -> CliResult<Self> {
        let ids = model.tokenizer()?.encode(phrase)?;
        if ids.len() < 4 {
            return Err(CliError(format!(
                "--phrase must be at least 4 tokens long; {phrase:?} is {}",
                ids.len()
            )));
        }
        let shown = (ids.len() / 3).max(2);
        if 1 + ids.len() + shown + (ids.len() - shown) > model.cfg().n_ctx {
            return Err(CliError(format!(
                "--phrase is too long: shown one and a third times it does not fit the context of {} tokens",
                model.cfg().n_ctx
            )));
        }
        Ok(PhraseCheck {
            phrase: phrase.to_string(),
            ids,
            shown,
        })
    }

    /// Lets the model continue greedily and prints how much of the rest it reproduced.
    fn run(&self, model: &HookedTransformer) -> CliResult<()> {
        let (ids, shown) = (&self.ids, self.shown);
        let rest = &ids[shown..];
        let mut prompt = vec![model.bos_token_id()?];
        prompt.extend_from_slice(ids);
        prompt.extend_from_slice(&ids[..shown]);
        let n = prompt.len();
        let input = Tensor::from_vec(prompt, (1, n), model.device())?;
        let mut opts = GenerateOptions::greedy(rest.len());
        opts.stop_at_eos = false;
        let out = model.generate(&input, &opts)?.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let generated = &out[0][n..];
        let copied = generated.iter().zip(rest).take_while(|(a, b)| a == b).count();
        let tok = model.tokenizer()?;
        crate::outln!("copying real text (greedy):");
        crate::outln!(
            "  prompt:    {:?}",
            format!("{}{}", self.phrase, tok.decode(&ids[..shown])?)
        );
        crate::outln!("  continued: {:?}", tok.decode(generated)?);
        crate::outln!("  expected:  {:?}", tok.decode(rest)?);
        crate::outln!(
            "  {copied} of {} tokens copied before the first difference{}",
            rest.len(),
            if copied == rest.len() {
                ": the phrase is continued by copying"
            } else {
                ""
            }
        );
        Ok(())
    }
}
