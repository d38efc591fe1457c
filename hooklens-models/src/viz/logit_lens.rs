//! The logit lens: what the model would predict if it stopped at each layer.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use hooklens_core::{CacheOptions, Error, HookedModel, NamesFilter, Result};

use crate::model::{ForwardOptions, HookedTransformer, ReturnType};

/// The top tokens predicted from the residual stream entering each layer and from the
/// final one, at each position of one prompt.
#[derive(Clone, Debug)]
pub struct LogitLens {
    /// The text of each input token.
    pub tokens: Vec<String>,
    /// One label per residual stream, as TransformerLens's `accumulated_resid` labels
    /// them: `"0_pre"`, `"1_pre"`, ..., `"final_post"`.
    pub labels: Vec<String>,
    /// `top[label][pos]`: the `k` most likely next tokens, most likely first, as
    /// `(id, text, probability)`.
    pub top: Vec<Vec<Vec<(u32, String, f32)>>>,
}

/// The logit lens of `tokens` (`[1, pos]` or `[pos]`): each accumulated residual stream
/// (each block's `resid_pre`, then the last block's `resid_post`) is put through
/// `ln_final` (its own normalisation, as the model would if the later blocks added
/// nothing) and the unembedding, and the `k` most likely tokens are kept. The
/// `"final_post"` row is the model's own prediction.
///
/// A model without a final norm unembeds each stream as it is, as the model does its
/// last one. In a post-LN model (OPT-350m) the stream between blocks is already
/// normalised (each block returns `ln2` of its `resid_post`): row `L > 0` is exactly
/// what block `L` reads, unembedded as if the blocks from `L` on were skipped; row 0 is
/// the raw embedding; `"final_post"` is the last block's output
/// (`hook_normalized_resid_post`), the model's prediction.
pub fn logit_lens(model: &HookedTransformer, tokens: &Tensor, k: usize) -> Result<LogitLens> {
    if k == 0 {
        return Err(Error::invalid("the logit lens needs k >= 1 top tokens"));
    }
    let (tokens, pos) = super::page::one_prompt(tokens, "the logit lens")?;
    let n = model.cfg().n_layers;
    let mut names: Vec<String> = (0..n).map(|l| format!("blocks.{l}.hook_resid_pre")).collect();
    // What the unembedding reads (through ln_final, if any): a post-LN block's output
    // is its resid_post normalised.
    names.push(if model.cfg().normalization_after_residual {
        format!("blocks.{}.hook_normalized_resid_post", n - 1)
    } else {
        format!("blocks.{}.hook_resid_post", n - 1)
    });
    let opts = CacheOptions::new().names(NamesFilter::Names(names.clone()));
    let fwd = ForwardOptions::new().return_type(ReturnType::None);
    let (_, cache) = model.run_with_cache(opts, |m| m.forward_with(&tokens, &fwd))?;
    let mut labels: Vec<String> = (0..n).map(|l| format!("{l}_pre")).collect();
    labels.push("final_post".to_string());
    let tokenizer = model.tokenizer()?;
    let k = k.min(model.cfg().d_vocab);
    let mut top = Vec::with_capacity(names.len());
    // The final norm and unembedding below are part of the model's forward, as far as
    // grad_mode and the thread rule of other threads' runs are concerned.
    let _forward = model.hook_embed.model_forward();
    for name in &names {
        let resid = cache.try_get(name)?;
        let logits = match &model.ln_final {
            Some(n) => model.unembed.forward(&n.forward(resid)?)?,
            None => model.unembed.forward(resid)?,
        };
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?
            .i(0)?
            .to_device(&Device::Cpu)?;
        let (ids, values) = top_k(&probs, k)?;
        let mut per_pos = Vec::with_capacity(pos);
        for (row_ids, row_p) in ids.iter().zip(&values) {
            let mut entries = Vec::with_capacity(k);
            for (&id, &p) in row_ids.iter().zip(row_p) {
                entries.push((id, tokenizer.token_str(id)?, p));
            }
            per_pos.push(entries);
        }
        top.push(per_pos);
    }
    let texts = model.to_str_tokens(&tokens, false)?;
    Ok(LogitLens {
        tokens: texts,
        labels,
        top,
    })
}

/// Ids and values of the top entries, one row per position.
type TopK = (Vec<Vec<u32>>, Vec<Vec<f32>>);

/// The `k` largest entries of each row of `x` `[rows, n]`: ids and values, largest first.
fn top_k(x: &Tensor, k: usize) -> Result<TopK> {
    let sorted = x.arg_sort_last_dim(false)?.narrow(D::Minus1, 0, k)?.contiguous()?;
    let x = x.contiguous()?;
    let values = x.gather(&sorted, D::Minus1)?;
    Ok((sorted.to_vec2::<u32>()?, values.to_vec2::<f32>()?))
}

/// One self-contained HTML page of `lens`: a table with a row per residual stream and a
/// column per position, each cell the top token, shaded by its probability; hovering a
/// cell shows the top tokens with their probabilities. Each token's text is isolated
/// (`<bdi>`), so bidirectional controls in one cannot reorder the others.
pub fn logit_lens_html(lens: &LogitLens, title: &str) -> String {
    let top: Vec<Vec<Vec<serde_json::Value>>> = lens
        .top
        .iter()
        .map(|row| {
            row.iter()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|(id, text, p)| serde_json::json!([id, text, super::page::round_sig4(*p)]))
                        .collect()
                })
                .collect()
        })
        .collect();
    let data = serde_json::json!({
        "title": title,
        "tokens": lens.tokens,
        "labels": lens.labels,
        "top": top,
    });
    super::page::fill(TEMPLATE, title, &data)
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 8px; }
table { border-collapse: collapse; font: 12px monospace; }
td, th { border: 1px solid #ddd; padding: 3px 5px; white-space: pre; text-align: center; }
th { background: #f4f4f4; font-weight: normal; }
th.row { text-align: right; }
#tooltip { position: fixed; pointer-events: none; background: rgba(20,20,20,.9); color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace; white-space: pre; display: none; }
.hint { color: #666; font-size: 12px; margin-bottom: 8px; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="hint">Each row is the residual stream entering a layer (and the final one) read through the final norm, where the model has one, and the unembedding; each cell is its most likely next token, darker when more probable. Hover for the top tokens.</div>
<div style="overflow:auto"><table id="lens"></table></div>
<div id="tooltip"></div>
<script type="application/json" id="lens-data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  window.addEventListener("error", function (e) { document.body.setAttribute("data-errors", String(e.message)); });
  var data = JSON.parse(document.getElementById("lens-data").textContent);
  document.getElementById("title").textContent = data.title;
  // Spaces, newlines and tabs made visible (" the" and "the" differ), as on the
  // other pages; long tokens cut.
  function show(t) {
    var s = t.replace(/ /g, "\u2423").replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\r/g, "\\r");
    return s.length > 14 ? s.slice(0, 13) + "\u2026" : s;
  }
  // Enough digits to tell small probabilities apart.
  function pct(p) {
    var v = p * 100;
    if (v >= 9.95) { return v.toFixed(0) + "%"; }
    if (v >= 0.995) { return v.toFixed(1) + "%"; }
    if (v >= 0.01) { return v.toFixed(2) + "%"; }
    return v > 0 ? v.toExponential(1) + "%" : "0%";
  }
  // Token text in a <bdi> (and between U+2068 and U+2069 in plain text such as a
  // title), so a right-to-left override in one token reorders nothing outside it.
  function bdi(t) {
    var b = document.createElement("bdi");
    b.textContent = t;
    return b;
  }
  function iso(t) { return "\u2068" + t + "\u2069"; }
  var table = document.getElementById("lens");
  var head = document.createElement("tr");
  var corner = document.createElement("th");
  corner.textContent = "layer \\ token";
  head.appendChild(corner);
  data.tokens.forEach(function (t, i) {
    var th = document.createElement("th");
    th.appendChild(bdi(show(t)));
    th.title = i + " " + iso(JSON.stringify(t));
    head.appendChild(th);
  });
  table.appendChild(head);
  var tip = document.getElementById("tooltip");
  // Last row first, as the logit lens is usually read bottom-up.
  for (var r = data.labels.length - 1; r >= 0; r--) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    th.className = "row";
    th.textContent = data.labels[r];
    tr.appendChild(th);
    data.top[r].forEach(function (entries, i) {
      var td = document.createElement("td");
      var best = entries[0];
      td.appendChild(bdi(show(best[1])));
      var p = best[2];
      td.style.background = "rgba(40, 90, 200, " + (0.08 + 0.8 * p).toFixed(3) + ")";
      if (p > 0.55) { td.style.color = "#fff"; }
      var label = data.labels[r];
      td.addEventListener("mousemove", function (ev) {
        tip.textContent = label + " at " + i + " ";
        tip.appendChild(bdi(JSON.stringify(data.tokens[i])));
        entries.forEach(function (e) {
          tip.appendChild(document.createTextNode("\n" + pct(e[2]) + "  "));
          tip.appendChild(bdi(JSON.stringify(e[1])));
        });
        tip.style.left = (ev.clientX + 14) + "px";
        tip.style.top = (ev.clientY + 14) + "px";
        tip.style.display = "block";
      });
      td.addEventListener("mouseleave", function () { tip.style.display = "none"; });
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }
  document.body.setAttribute("data-rows", String(data.labels.length));
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"##;
