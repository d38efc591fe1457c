//! Which SAE features fire on each token of a prompt, and a page of the prompt coloured
//! by one feature's activation.

use std::collections::BTreeMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use hooklens_core::{CacheOptions, Error, Result};

use crate::model::HookedTransformer;
use crate::sae::{Sae, SaeModel, SaeSet};

/// The features of an SAE on one prompt.
#[derive(Clone, Debug)]
pub struct FeatureView {
    /// The page's title.
    pub title: String,
    /// The text of each token.
    pub tokens: Vec<String>,
    /// `top[pos]`: the most active features at each position, `(feature, activation)`,
    /// largest first (features at zero left out).
    pub top: Vec<Vec<(usize, f32)>>,
    /// Every feature of `top` with its activation at every position.
    pub columns: BTreeMap<usize, Vec<f32>>,
    /// The feature the page opens on.
    pub feature: usize,
}

/// The SAE's feature activations on `tokens` (`[1, pos]` or `[pos]`), spliced in with its
/// error term (so each SAE reads the model as it is), keeping the `k` most active
/// features per position. The page opens on `feature`, or else on the feature with the
/// largest activation anywhere in the prompt.
pub fn feature_activations(
    model: &HookedTransformer,
    sae: &Sae,
    tokens: &Tensor,
    k: usize,
    feature: Option<usize>,
) -> Result<FeatureView> {
    if k == 0 {
        return Err(Error::invalid("the feature view needs k >= 1 features per token"));
    }
    let (tokens, pos) = super::page::one_prompt(tokens, "the feature view")?;
    if let Some(f) = feature {
        if f >= sae.cfg().d_sae {
            return Err(Error::invalid(format!(
                "feature {f} does not exist: the SAE for `{}` has d_sae = {}",
                sae.cfg().spliced_at(),
                sae.cfg().d_sae
            )));
        }
    }
    let name = sae.hook_name("hook_sae_acts_post");
    let opts = CacheOptions::new().names(name.as_str()).device(Device::Cpu);
    let set = SaeSet::new().sae_with_error_term(sae);
    let (_, cache) = model.run_with_cache_with_saes(set, opts, |m| {
        m.forward_with(
            &tokens,
            &crate::ForwardOptions::new().return_type(crate::ReturnType::None),
        )
    })?;
    let acts = cache.try_get(&name)?.i(0)?.to_dtype(DType::F32)?; // [pos, d_sae]
    let mut top = Vec::with_capacity(pos);
    for p in 0..pos {
        top.push(Sae::top_features(&acts.i(p)?, k)?);
    }
    let best = top
        .iter()
        .flatten()
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(f, _)| *f);
    let feature = feature.or(best).unwrap_or(0);
    let mut columns = BTreeMap::new();
    for f in top.iter().flatten().map(|(f, _)| *f).chain([feature]) {
        if let std::collections::btree_map::Entry::Vacant(e) = columns.entry(f) {
            e.insert(acts.i((.., f))?.to_vec1::<f32>()?);
        }
    }
    let texts = model.to_str_tokens(&tokens, false)?;
    Ok(FeatureView {
        title: format!("Features of the SAE at {}", sae.cfg().spliced_at()),
        tokens: texts,
        top,
        columns,
        feature,
    })
}

/// One self-contained HTML page of `view`: the prompt with each token shaded by the
/// chosen feature's activation (a colour scale from 0 to its largest value beside it;
/// leading and other spaces shown as `␣`), a selector over the features that appear,
/// and a token's top features on hover. Each token's text is isolated (`<bdi>`), so
/// bidirectional controls in one (a right-to-left override) cannot reorder the others.
pub fn features_html(view: &FeatureView) -> String {
    let columns: serde_json::Map<String, serde_json::Value> = view
        .columns
        .iter()
        .map(|(f, v)| (f.to_string(), v.iter().map(|a| super::page::round4(*a)).collect()))
        .collect();
    let top: Vec<Vec<serde_json::Value>> = view
        .top
        .iter()
        .map(|t| {
            t.iter()
                .map(|(f, a)| serde_json::json!([f, super::page::round4(*a)]))
                .collect()
        })
        .collect();
    let data = serde_json::json!({
        "title": view.title,
        "tokens": view.tokens,
        "top": top,
        "columns": columns,
        "feature": view.feature,
    });
    super::page::fill(TEMPLATE, &view.title, &data)
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 8px; }
#prompt { font: 15px monospace; line-height: 2; margin: 12px 0; }
.tok { padding: 2px 1px; border-radius: 3px; white-space: pre; cursor: default; }
.sp { color: #aaa; }
#scale { display: inline-block; width: 160px; height: 12px; vertical-align: middle; background: linear-gradient(to right, rgba(220,90,30,0), rgba(220,90,30,1)); border: 1px solid #ccc; }
#tooltip { position: fixed; pointer-events: none; background: rgba(20,20,20,.9); color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace; white-space: pre; display: none; }
.hint { color: #666; font-size: 12px; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div><label>Feature <select id="feature"></select></label>
  <span class="hint">0</span> <span id="scale"></span> <span class="hint" id="max"></span></div>
<div id="prompt"></div>
<div class="hint">Each token is shaded by the chosen feature's activation; hover a token for its most active features. Spaces are shown as &#9251;.</div>
<div id="tooltip"></div>
<script type="application/json" id="features-data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  window.addEventListener("error", function (e) { document.body.setAttribute("data-errors", String(e.message)); });
  var data = JSON.parse(document.getElementById("features-data").textContent);
  document.getElementById("title").textContent = data.title;
  var select = document.getElementById("feature");
  Object.keys(data.columns).map(Number).sort(function (a, b) { return a - b; }).forEach(function (f) {
    var o = document.createElement("option");
    o.value = String(f);
    o.textContent = String(f);
    select.appendChild(o);
  });
  var prompt = document.getElementById("prompt");
  var tip = document.getElementById("tooltip");
  // Token text in a <bdi>: a right-to-left override (U+202E) in a token then reorders
  // nothing outside it.
  function bdi(t) {
    var b = document.createElement("bdi");
    b.textContent = t;
    return b;
  }
  var spans = data.tokens.map(function (t, i) {
    var span = document.createElement("bdi");
    span.className = "tok";
    // Spaces made visible, so " the" and "the" differ on the page.
    t.split(/( )/).forEach(function (part) {
      if (part === " ") {
        var sp = document.createElement("span");
        sp.className = "sp";
        sp.textContent = "\u2423";
        span.appendChild(sp);
      } else if (part.length) {
        span.appendChild(document.createTextNode(part.replace(/\n/g, "\\n").replace(/\t/g, "\\t")));
      }
    });
    span.setAttribute("data-pos", String(i));
    span.addEventListener("mousemove", function (ev) {
      var f = Number(select.value);
      tip.textContent = i + " ";
      tip.appendChild(bdi(JSON.stringify(t)));
      tip.appendChild(document.createTextNode("\nfeature " + f + ": " + data.columns[f][i] + "\n" +
        (data.top[i].length ? data.top[i].map(function (e) { return "f" + e[0] + "  " + e[1]; }).join("\n") : "no feature active")));
      tip.style.left = (ev.clientX + 14) + "px";
      tip.style.top = (ev.clientY + 14) + "px";
      tip.style.display = "block";
    });
    span.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    prompt.appendChild(span);
    return span;
  });
  function paint() {
    var f = Number(select.value);
    var acts = data.columns[f];
    var max = Math.max.apply(null, acts.concat([0]));
    document.getElementById("max").textContent = max.toFixed(3);
    var lit = 0;
    spans.forEach(function (span, i) {
      var a = acts[i] > 0 && max > 0 ? acts[i] / max : 0;
      if (a > 0) { lit++; }
      span.style.background = "rgba(220, 90, 30, " + a.toFixed(3) + ")";
      span.setAttribute("data-act", String(acts[i]));
    });
    document.body.setAttribute("data-feature", String(f));
    document.body.setAttribute("data-lit", String(lit));
  }
  select.value = String(data.feature);
  select.addEventListener("change", paint);
  paint();
  document.body.setAttribute("data-tokens", String(spans.length));
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"##;
