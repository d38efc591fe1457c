//! Every head's attention pattern as one self-contained HTML page.

use candle_core::{DType, Device, IndexOp, Tensor};
use hooklens_core::{CacheOptions, Error, HookedModel, NamesFilter, Result};

use crate::model::{ForwardOptions, HookedTransformer, ReturnType};

/// The attention patterns of one prompt, ready to draw: what [`attention_html`] shows.
#[derive(Clone, Debug)]
pub struct AttentionView {
    /// The page's title.
    pub title: String,
    /// The text of each token of the prompt (BOS included when it was put first).
    pub tokens: Vec<String>,
    /// `(layer, pattern)` for each layer shown, the pattern `[n_heads, pos, pos]`
    /// (query, key), as `blocks.{layer}.attn.hook_pattern` of a batch of one.
    pub layers: Vec<(usize, Tensor)>,
    /// The head the page opens on, `(layer, head)`; the first one shown when `None`.
    pub selected: Option<(usize, usize)>,
}

/// Runs `model` on `tokens` (`[1, pos]` or `[pos]`) and collects the attention patterns
/// of `layers` (all layers when `None`), stopping the forward after the last of them.
/// Token texts come from the model's tokenizer. Out-of-range or repeated layers are
/// errors.
pub fn attention_patterns(
    model: &HookedTransformer,
    tokens: &Tensor,
    layers: Option<&[usize]>,
) -> Result<AttentionView> {
    let (tokens, _pos) = super::page::one_prompt(tokens, "the attention view")?;
    let n_layers = model.cfg().n_layers;
    let layers: Vec<usize> = match layers {
        None => (0..n_layers).collect(),
        Some(ls) => {
            if ls.is_empty() {
                return Err(Error::invalid("no layer to show: give at least one layer"));
            }
            for (i, &l) in ls.iter().enumerate() {
                if l >= n_layers {
                    return Err(Error::invalid(format!(
                        "layer {l} does not exist: the model has {n_layers} layers (0..{})",
                        n_layers - 1
                    )));
                }
                if ls[..i].contains(&l) {
                    return Err(Error::invalid(format!("layer {l} is listed twice")));
                }
            }
            ls.to_vec()
        }
    };
    let names: Vec<String> = layers.iter().map(|l| format!("blocks.{l}.attn.hook_pattern")).collect();
    let last = layers.iter().copied().max().unwrap_or(0);
    // Blocks after the last one shown cannot change its pattern: skip them and the unembedding.
    let fwd = ForwardOptions::new()
        .return_type(ReturnType::None)
        .stop_at_layer((last + 1) as isize);
    let opts = CacheOptions::new()
        .names(NamesFilter::Names(names.clone()))
        .device(Device::Cpu);
    let (_, cache) = model.run_with_cache(opts, |m| m.forward_with(&tokens, &fwd))?;
    let mut out = Vec::with_capacity(layers.len());
    for (l, name) in layers.iter().zip(&names) {
        out.push((*l, cache.try_get(name)?.i(0)?.to_dtype(DType::F32)?));
    }
    let texts = model.to_str_tokens(&tokens, false)?;
    Ok(AttentionView {
        title: "Attention patterns".to_string(),
        tokens: texts,
        layers: out,
        selected: None,
    })
}

/// One self-contained HTML page (no network, nothing outside the file) showing every
/// head of `view`: a thumbnail per head, and the selected head as a large heatmap with
/// the query tokens down the side and the key tokens along the top; hovering a cell
/// shows both tokens and the weight. A layer/head selector and clicks on thumbnails
/// choose the head. Token text is isolated (`<bdi>`), so bidirectional controls in one
/// token cannot reorder the others. Patterns must be `[n_heads, pos, pos]` with `pos` tokens.
pub fn attention_html(view: &AttentionView) -> Result<String> {
    let pos = view.tokens.len();
    let mut layers = Vec::with_capacity(view.layers.len());
    for (layer, pattern) in &view.layers {
        let (n_heads, q, k) = pattern.dims3().map_err(|_| {
            Error::invalid(format!(
                "layer {layer}: a pattern must be [n_heads, pos, pos], got shape {:?}",
                pattern.dims()
            ))
        })?;
        if q != pos || k != pos {
            return Err(Error::invalid(format!(
                "layer {layer}: the pattern is [{n_heads}, {q}, {k}] but there are {pos} tokens"
            )));
        }
        let rows = pattern.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        // Causal attention: a query sees keys 0..=q only, so only those are stored
        // (half the size); the page treats missing keys as 0.
        let heads: Vec<Vec<Vec<f64>>> = rows
            .iter()
            .map(|head| {
                head.iter()
                    .enumerate()
                    .map(|(qi, row)| {
                        let keep = trim_zeros(row, qi + 1);
                        row[..keep].iter().map(|&w| super::page::round4(w)).collect()
                    })
                    .collect()
            })
            .collect();
        layers.push(serde_json::json!({ "layer": layer, "heads": heads }));
    }
    if let Some((l, h)) = view.selected {
        let heads = view
            .layers
            .iter()
            .find(|(layer, _)| *layer == l)
            .map(|(_, p)| p.dim(0))
            .transpose()?;
        if heads.is_none_or(|n| h >= n) {
            return Err(Error::invalid(format!(
                "the page is to open on L{l}H{h}, which is not among the heads shown"
            )));
        }
    }
    let data = serde_json::json!({
        "title": view.title,
        "tokens": view.tokens,
        "layers": layers,
        "selected": view.selected.map(|(l, h)| serde_json::json!([l, h])),
    });
    Ok(super::page::fill(TEMPLATE, &view.title, &data))
}

/// How many leading entries of `row` to keep: at least `causal`, more only if a later
/// entry is non-zero (a pattern that is not causal still shows correctly).
fn trim_zeros(row: &[f32], causal: usize) -> usize {
    let last_nonzero = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
    last_nonzero.max(causal.min(row.len()))
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 18px; margin: 0 0 8px; }
#controls { margin: 8px 0; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
#thumbs { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 16px; }
.thumb-box { display: flex; flex-direction: column; align-items: center; cursor: pointer; padding: 3px; border: 2px solid transparent; border-radius: 4px; }
.thumb-box.selected { border-color: #c33; }
.thumb-box span { font-size: 11px; color: #555; }
canvas.thumb { image-rendering: pixelated; border: 1px solid #ccc; }
#main-wrap { position: relative; overflow: auto; max-width: 100%; }
#tooltip { position: fixed; pointer-events: none; background: rgba(20,20,20,.9); color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace; white-space: pre; display: none; z-index: 10; }
#error { color: #b00; font-weight: bold; }
.hint { color: #666; font-size: 12px; }
#scale { display: inline-block; width: 140px; height: 12px; border: 1px solid #ccc; background: linear-gradient(to right, rgb(255,255,255), rgb(180,20,30)); }
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="hint">Rows are queries (the token attending), columns are keys (the token attended to). Hover a cell for the weight; click a thumbnail or use the selector to choose a head. Spaces in tokens are shown as &#9251;.</div>
<div id="controls"><label>Head <select id="head-select"></select></label><span id="selected-label"></span>
  <span class="hint">weight 0</span><span id="scale"></span><span class="hint">1</span></div>
<div id="thumbs"></div>
<div id="main-wrap"><canvas id="main"></canvas></div>
<div id="tooltip"></div>
<div id="error"></div>
<script type="application/json" id="attention-data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message));
    document.body.setAttribute("data-errors", errors.join(" | "));
    document.getElementById("error").textContent = "Error: " + e.message;
  });
  var data = JSON.parse(document.getElementById("attention-data").textContent);
  var tokens = data.tokens;
  var n = tokens.length;
  document.getElementById("title").textContent = data.title;

  // Token text as shown: spaces, newlines and tabs made visible (" the" and "the"
  // differ), long tokens cut.
  function show(t) {
    var s = t.replace(/ /g, "\u2423").replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\r/g, "\\r");
    return s.length > 16 ? s.slice(0, 15) + "\u2026" : s;
  }
  function weight(head, q, k) {
    var row = head[q];
    return k < row.length ? row[k] : 0;
  }
  // Colours go from white (weight 0) to dark red (weight 1).
  // One pixel per weight in an offscreen canvas, scaled up without smoothing: fast
  // enough for hundreds of heads of long prompts, where a rectangle per cell is not.
  function drawCells(ctx, head, x0, y0, cell) {
    var img = new ImageData(Math.max(n, 1), Math.max(n, 1));
    for (var q = 0; q < n; q++) {
      var row = head[q];
      for (var k = 0; k < n; k++) {
        var x = Math.max(0, Math.min(1, k < row.length ? row[k] : 0));
        var i = 4 * (q * n + k);
        img.data[i] = 255 - 75 * x;
        img.data[i + 1] = 255 - 235 * x;
        img.data[i + 2] = 255 - 225 * x;
        img.data[i + 3] = 255;
      }
    }
    var off = document.createElement("canvas");
    off.width = img.width;
    off.height = img.height;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, x0, y0, n * cell, n * cell);
  }

  var entries = [];
  data.layers.forEach(function (layer) {
    layer.heads.forEach(function (head, h) {
      entries.push({ layer: layer.layer, head: h, pattern: head, label: "L" + layer.layer + "H" + h });
    });
  });

  var select = document.getElementById("head-select");
  var thumbs = document.getElementById("thumbs");
  var boxes = [];
  entries.forEach(function (e, i) {
    var opt = document.createElement("option");
    opt.value = String(i);
    opt.textContent = e.label;
    select.appendChild(opt);
    var box = document.createElement("div");
    box.className = "thumb-box";
    box.setAttribute("data-layer", String(e.layer));
    box.setAttribute("data-head", String(e.head));
    var c = document.createElement("canvas");
    c.className = "thumb";
    var cell = Math.max(1, Math.floor(96 / Math.max(n, 1)));
    c.width = n * cell;
    c.height = n * cell;
    c.title = e.label;
    drawCells(c.getContext("2d"), e.pattern, 0, 0, cell);
    var label = document.createElement("span");
    label.textContent = e.label;
    box.appendChild(c);
    box.appendChild(label);
    box.addEventListener("click", function () { choose(i); });
    thumbs.appendChild(box);
    boxes.push(box);
  });

  var main = document.getElementById("main");
  var mctx = main.getContext("2d");
  var font = "12px monospace";
  mctx.font = font;
  var labelW = 0;
  tokens.forEach(function (t) { labelW = Math.max(labelW, mctx.measureText(show(t)).width); });
  labelW = Math.ceil(labelW) + 8;
  var cell = Math.max(6, Math.min(28, Math.floor(760 / Math.max(n, 1))));
  var x0 = labelW + 40, y0 = labelW + 8;
  var current = 0;

  function drawMain() {
    var e = entries[current];
    main.width = x0 + n * cell + 8;
    main.height = y0 + n * cell + 8;
    mctx.font = font;
    mctx.fillStyle = "#fff";
    mctx.fillRect(0, 0, main.width, main.height);
    drawCells(mctx, e.pattern, x0, y0, cell);
    mctx.fillStyle = "#222";
    mctx.textBaseline = "middle";
    var step = Math.max(1, Math.ceil(12 / cell));
    for (var i = 0; i < n; i += step) {
      var s = show(tokens[i]);
      mctx.textAlign = "right";
      mctx.fillText(s, labelW, y0 + i * cell + cell / 2);
      mctx.fillText(String(i), x0 - 4, y0 + i * cell + cell / 2);
      mctx.save();
      mctx.translate(x0 + i * cell + cell / 2, y0 - 4);
      mctx.rotate(-Math.PI / 2);
      mctx.textAlign = "left";
      mctx.fillText(s, 0, 0);
      mctx.restore();
    }
  }

  function choose(i) {
    current = i;
    select.value = String(i);
    boxes.forEach(function (b, j) { b.className = j === i ? "thumb-box selected" : "thumb-box"; });
    document.getElementById("selected-label").textContent = entries[i].label;
    document.body.setAttribute("data-selected", entries[i].label);
    drawMain();
  }
  select.addEventListener("change", function () { choose(Number(select.value)); });

  var tip = document.getElementById("tooltip");
  // Token text in a <bdi>, so a right-to-left override in one token reorders nothing
  // outside it (on the canvas each label is drawn on its own, isolated already).
  function bdi(t) {
    var b = document.createElement("bdi");
    b.textContent = t;
    return b;
  }
  main.addEventListener("mousemove", function (ev) {
    var r = main.getBoundingClientRect();
    var k = Math.floor((ev.clientX - r.left - x0) / cell);
    var q = Math.floor((ev.clientY - r.top - y0) / cell);
    if (q < 0 || k < 0 || q >= n || k >= n) { tip.style.display = "none"; return; }
    var w = weight(entries[current].pattern, q, k);
    tip.textContent = entries[current].label + "\nquery " + q + " ";
    tip.appendChild(bdi(JSON.stringify(tokens[q])));
    tip.appendChild(document.createTextNode("\nkey   " + k + " "));
    tip.appendChild(bdi(JSON.stringify(tokens[k])));
    tip.appendChild(document.createTextNode("\nweight " + w.toFixed(3)));
    tip.style.left = (ev.clientX + 14) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
    tip.style.display = "block";
  });
  main.addEventListener("mouseleave", function () { tip.style.display = "none"; });

  var first = 0;
  if (data.selected) {
    entries.forEach(function (e, i) { if (e.layer === data.selected[0] && e.head === data.selected[1]) { first = i; } });
  }
  if (entries.length > 0) { choose(first); }
  document.body.setAttribute("data-patterns", String(entries.length));
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_holds_every_head_and_escapes_tokens() {
        let pattern = Tensor::new(&[[[1f32, 0.], [0.25, 0.75]], [[1., 0.], [0.5, 0.5]]], &Device::Cpu).unwrap();
        let view = AttentionView {
            title: "<b>t</b>".into(),
            tokens: vec!["</script><script>alert(1)</script>".into(), " & <!--".into()],
            layers: vec![(0, pattern.clone()), (3, pattern)],
            selected: Some((3, 1)),
        };
        let html = attention_html(&view).unwrap();
        assert!(!html.contains("<script>alert"), "a token closed the script element");
        assert!(html.contains("&lt;b&gt;t&lt;/b&gt;"));
        let start = html.find("id=\"attention-data\">").unwrap() + "id=\"attention-data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(data["tokens"][0], "</script><script>alert(1)</script>");
        assert_eq!(data["layers"][1]["layer"], 3);
        assert_eq!(data["selected"], serde_json::json!([3, 1]));
        let mut elsewhere = view.clone();
        elsewhere.selected = Some((1, 0));
        let err = attention_html(&elsewhere).unwrap_err().to_string();
        assert!(err.contains("L1H0"), "{err}");
        assert_eq!(data["layers"][0]["heads"][0][1][1], 0.75);
        // Causal rows are stored up to the diagonal.
        assert_eq!(data["layers"][0]["heads"][0][0].as_array().unwrap().len(), 1);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let view = AttentionView {
            title: "x".into(),
            tokens: vec!["a".into()],
            layers: vec![(0, Tensor::zeros((2, 2, 2), DType::F32, &Device::Cpu).unwrap())],
            selected: None,
        };
        let err = attention_html(&view).unwrap_err().to_string();
        assert!(err.contains("there are 1 tokens"), "{err}");
    }
}
