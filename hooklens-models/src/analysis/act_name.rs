//! `act_name`: TransformerLens's `utils.get_act_name`, the shorthand for hook names.
//!
//! TransformerLens builds a name from any input, so a typo or a missing argument gives a
//! name no model has (`("scale", 4)` -> `blocks.4.hook_scale`, `"resid_pre5"` ->
//! `hook_resid_pre5`) and the mistake shows up later as a missing cache key. Here every
//! input that TransformerLens maps to a real hook gives the same name, and every other
//! input is an error saying what is wrong.

use hooklens_core::__internal::nearest_names;
use hooklens_core::{Error, Result};

/// Attention activations: `blocks.L.attn.hook_{name}`.
const ATTN_NAMES: &[&str] = &["k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"];
/// MLP activations: `blocks.L.mlp.hook_{name}`.
const MLP_NAMES: &[&str] = &["pre", "post", "mid", "pre_linear"];
/// LayerNorm activations: `blocks.L.ln1/ln2.hook_{name}`, or `ln_final.hook_{name}` without a layer.
const LN_NAMES: &[&str] = &["scale", "normalized"];
/// Activations of the block itself: `blocks.L.hook_{name}`.
const BLOCK_NAMES: &[&str] = &[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "attn_in",
    "q_input",
    "k_input",
    "v_input",
    "mlp_in",
];
/// Activations outside the blocks: `hook_{name}`.
const GLOBAL_NAMES: &[&str] = &["embed", "pos_embed", "tokens"];

/// TransformerLens's `act_name_alias`.
fn alias(name: &str) -> &str {
    match name {
        "attn" => "pattern",
        "attn_logits" => "attn_scores",
        "key" => "k",
        "query" => "q",
        "value" => "v",
        "mlp_pre" => "pre",
        "mlp_mid" => "mid",
        "mlp_post" => "post",
        other => other,
    }
}

/// TransformerLens's `layer_type_alias`, with `""` meaning the block itself.
fn layer_type_alias(t: &str) -> &str {
    match t {
        "a" | "attention" => "attn",
        "m" => "mlp",
        "b" | "block" | "blocks" => "",
        other => other,
    }
}

/// Splits TransformerLens's `"k6"` / `"scale4ln1"` shorthand (`([a-z]+)(\d+)(.*)`, a
/// match at the start) into name, layer and layer type.
fn split_shorthand(name: &str) -> Option<(&str, &str, &str)> {
    let letters = name.bytes().take_while(|b| b.is_ascii_lowercase()).count();
    if letters == 0 {
        return None;
    }
    let digits = name[letters..].bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    Some((
        &name[..letters],
        &name[letters..letters + digits],
        &name[letters + digits..],
    ))
}

/// The full hook name for a TransformerLens shorthand, as `utils.get_act_name` builds it.
///
/// - A full name (`"blocks.3.hook_resid_pre"`, `"hook_embed"`) is returned as is.
/// - `name` may carry its layer and layer type: `"k6"` = (`"k"`, 6), `"scale4ln1"` =
///   (`"scale"`, 4, `"ln1"`), `"pre5"` = (`"pre"`, 5).
/// - Aliases: `"attn"` -> `pattern`, `"attn_logits"` -> `attn_scores`, `"key"`/`"query"`/
///   `"value"` -> `k`/`q`/`v`, `"mlp_pre"`/`"mlp_post"` -> `pre`/`post`; layer types `"a"`,
///   `"attention"` -> `attn`, `"m"` -> `mlp`, `"b"`/`"block"` -> the block itself.
/// - `q k v z result pattern attn_scores` live in `blocks.L.attn`, `pre post` in
///   `blocks.L.mlp`, `resid_pre resid_mid resid_post attn_out mlp_out` (and the optional
///   `attn_in q_input k_input v_input mlp_in`) in `blocks.L`, `embed pos_embed tokens`
///   outside the blocks, `scale normalized` in `blocks.L.ln1`/`ln2` (layer type required)
///   or, without a layer, in `ln_final`.
///
/// Errors, where TransformerLens would build a name that no model has: an unknown name,
/// a block activation without a layer (or a global one with a layer), a LayerNorm
/// activation with a layer but no `ln1`/`ln2`, a layer type that contradicts the name,
/// a trailing layer number on a name with `_` (`"resid_pre5"`: TransformerLens does not
/// read it), a shorthand layer that disagrees with `layer`, and a negative layer
/// (resolve it against the model first: [`resolve_layer`]).
///
/// ```
/// # use hooklens_models::analysis::act_name;
/// assert_eq!(act_name("q", Some(0), None).unwrap(), "blocks.0.attn.hook_q");
/// assert_eq!(act_name("scale4ln1", None, None).unwrap(), "blocks.4.ln1.hook_scale");
/// assert_eq!(act_name("scale", None, None).unwrap(), "ln_final.hook_scale");
/// assert!(act_name("scale", Some(4), None).is_err());
/// assert!(act_name("resid_pre5", None, None).is_err());
/// ```
pub fn act_name(name: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<String> {
    let call = ActNameCall {
        name,
        layer,
        layer_type,
    };
    if (name.contains('.') || name.starts_with("hook_")) && layer.is_none() && layer_type.is_none() {
        return Ok(name.to_string());
    }
    if name.contains('.') || name.starts_with("hook_") {
        return Err(call.bad(
            "a full hook name takes no layer or layer type; give the short name (\"resid_pre\", \"q\", ...)".into(),
        ));
    }
    let (short, layer, layer_type) = call.split_layer()?;
    let short = alias(short);
    let layer_type = layer_type.as_deref().map(layer_type_alias);
    if let Some(l) = layer {
        if l < 0 {
            return Err(call.bad(format!(
                "layer {l} is negative: negative layers count from the end and need the model's n_layers \
                 (use resolve_layer, or look the activation up through an Analysis)"
            )));
        }
    }
    if ATTN_NAMES.contains(&short) || MLP_NAMES.contains(&short) {
        return call.module_hook(short, layer, layer_type);
    }
    if BLOCK_NAMES.contains(&short) {
        return call.block_hook(short, layer, layer_type);
    }
    if LN_NAMES.contains(&short) {
        return call.norm_hook(short, layer, layer_type);
    }
    if GLOBAL_NAMES.contains(&short) {
        return call.global_hook(short, layer, layer_type);
    }
    Err(call.unknown_name(short))
}

/// The arguments of one [`act_name`] call, which every error message repeats.
struct ActNameCall<'a> {
    name: &'a str,
    layer: Option<isize>,
    layer_type: Option<&'a str>,
}

impl<'a> ActNameCall<'a> {
    /// The error for this call, saying `why`.
    fn bad(&self, why: String) -> Error {
        let (name, layer, layer_type) = (self.name, self.layer, self.layer_type);
        Error::invalid(format!("act_name({name:?}, {layer:?}, {layer_type:?}): {why}"))
    }

    /// The error for an activation `short` (`what` it is) given without a layer.
    fn needs_layer(&self, short: &str, what: &str) -> Error {
        self.bad(format!("`{short}` is {what}, so it needs a layer"))
    }

    /// The short name, layer and layer type, from the shorthand in the name (`"k6"`,
    /// `"scale4ln1"`) where it has one, checked against the layer and layer type given.
    fn split_layer(&self) -> Result<(&'a str, Option<isize>, Option<String>)> {
        let name = self.name;
        let (mut short, mut layer, mut layer_type) = (name, self.layer, self.layer_type.map(str::to_string));
        if let Some((n, l, t)) = split_shorthand(name) {
            let l: isize = l
                .parse()
                .map_err(|_| self.bad(format!("layer `{l}` is not a number")))?;
            if let Some(given) = layer {
                if given != l {
                    return Err(self.bad(format!("the name says layer {l} but layer {given} was given")));
                }
            }
            if !t.is_empty() {
                if let Some(given) = &layer_type {
                    if layer_type_alias(given) != layer_type_alias(t) {
                        return Err(self.bad(format!(
                            "the name says layer type `{t}` but layer type `{given}` was given"
                        )));
                    }
                }
                layer_type = Some(t.to_string());
            }
            short = n;
            layer = Some(l);
        } else if let Some(stem) = name.strip_suffix(|c: char| c.is_ascii_digit()) {
            let stem = stem.trim_end_matches(|c: char| c.is_ascii_digit());
            return Err(self.bad(format!(
                "TransformerLens reads a trailing layer number only on names without `_` (\"k6\"), so \
                 \"{name}\" would become `hook_{name}`, which no model has; write act_name(\"{stem}\", Some(L), ..)"
            )));
        }
        Ok((short, layer, layer_type))
    }

    /// `blocks.L.attn.hook_{short}` or `blocks.L.mlp.hook_{short}`.
    fn module_hook(&self, short: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<String> {
        let (module, what) = if ATTN_NAMES.contains(&short) {
            ("attn", "an attention activation")
        } else {
            ("mlp", "an MLP activation")
        };
        let l = layer.ok_or_else(|| self.needs_layer(short, what))?;
        if let Some(t) = layer_type {
            if t != module {
                return Err(self.bad(format!("`{short}` lives in `{module}`, not in `{t}`")));
            }
        }
        Ok(format!("blocks.{l}.{module}.hook_{short}"))
    }

    /// `blocks.L.hook_{short}`.
    fn block_hook(&self, short: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<String> {
        let l = layer.ok_or_else(|| self.needs_layer(short, "an activation of a block"))?;
        if let Some(t) = layer_type.filter(|t| !t.is_empty()) {
            return Err(self.bad(format!(
                "`{short}` belongs to the block itself (`blocks.{l}.hook_{short}`), not to `{t}`"
            )));
        }
        Ok(format!("blocks.{l}.hook_{short}"))
    }

    /// `blocks.L.ln1.hook_{short}` / `blocks.L.ln2.hook_{short}`, or without a layer
    /// `ln_final.hook_{short}`.
    fn norm_hook(&self, short: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<String> {
        match (layer, layer_type) {
            (None, None) => Ok(format!("ln_final.hook_{short}")),
            (None, Some(t)) => Err(self.bad(format!(
                "`{t}` needs a layer; without a layer `{short}` is the final LayerNorm's (`ln_final.hook_{short}`)"
            ))),
            (Some(l), Some(t @ ("ln1" | "ln2"))) => Ok(format!("blocks.{l}.{t}.hook_{short}")),
            (Some(l), Some(t)) if !t.is_empty() => Err(self.bad(format!(
                "blocks have LayerNorms `ln1` and `ln2`, not `{t}`: give layer type \"ln1\" or \"ln2\" for layer {l}"
            ))),
            (Some(l), _) => Err(self.bad(format!(
                "a block has two LayerNorms: give layer type \"ln1\" (before attention) or \"ln2\" (before the MLP) \
                 for layer {l}; TransformerLens would build `blocks.{l}.hook_{short}`, which does not exist"
            ))),
        }
    }

    /// `hook_{short}`, outside the blocks.
    fn global_hook(&self, short: &str, layer: Option<isize>, layer_type: Option<&str>) -> Result<String> {
        if let Some(l) = layer {
            return Err(self.bad(format!("`hook_{short}` is outside the blocks and has no layer {l}")));
        }
        if let Some(t) = layer_type.filter(|t| !t.is_empty()) {
            return Err(self.bad(format!("`hook_{short}` is outside the blocks, not in `{t}`")));
        }
        Ok(format!("hook_{short}"))
    }

    /// The error for a `short` name that is no activation, with the nearest ones.
    fn unknown_name(&self, short: &str) -> Error {
        let known = ATTN_NAMES
            .iter()
            .chain(MLP_NAMES)
            .chain(LN_NAMES)
            .chain(BLOCK_NAMES)
            .chain(GLOBAL_NAMES)
            .copied();
        let near = nearest_names(short, known, 3);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(
                "; did you mean {}?",
                near.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )
        };
        self.bad(format!("`{short}` is not an activation name{hint}"))
    }
}

/// A layer index that may count from the end, resolved against `n_layers`: `-1` is the
/// last block, `-n_layers` the first. An error outside `[-n_layers, n_layers)`.
pub fn resolve_layer(layer: isize, n_layers: usize) -> Result<usize> {
    let n = n_layers as isize;
    let l = if layer < 0 { layer + n } else { layer };
    if l < 0 || l >= n {
        return Err(Error::invalid(format!(
            "layer {layer} is out of range for a model with {n_layers} layers"
        )));
    }
    Ok(l as usize)
}

/// [`act_name`] with negative layers counting from the end of a model with `n_layers`
/// blocks (TransformerLens's `cache[("k", -1)]`).
pub fn act_name_in(name: &str, layer: Option<isize>, layer_type: Option<&str>, n_layers: usize) -> Result<String> {
    let layer = layer
        .map(|l| resolve_layer(l, n_layers).map(|l| l as isize))
        .transpose()?;
    act_name(name, layer, layer_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str, layer: Option<isize>, t: Option<&str>) -> String {
        act_name(name, layer, t).unwrap()
    }

    #[test]
    fn docstring_examples_of_transformer_lens() {
        assert_eq!(ok("k", Some(6), Some("a")), "blocks.6.attn.hook_k");
        assert_eq!(ok("pre", Some(2), None), "blocks.2.mlp.hook_pre");
        assert_eq!(ok("embed", None, None), "hook_embed");
        assert_eq!(ok("normalized", Some(27), Some("ln2")), "blocks.27.ln2.hook_normalized");
        assert_eq!(ok("k6", None, None), "blocks.6.attn.hook_k");
        assert_eq!(ok("scale4ln1", None, None), "blocks.4.ln1.hook_scale");
        assert_eq!(ok("pre5", None, None), "blocks.5.mlp.hook_pre");
    }

    #[test]
    fn aliases_and_block_names() {
        assert_eq!(ok("attn", Some(1), None), "blocks.1.attn.hook_pattern");
        assert_eq!(ok("pattern", Some(1), None), "blocks.1.attn.hook_pattern");
        assert_eq!(ok("attn_logits", Some(0), None), "blocks.0.attn.hook_attn_scores");
        assert_eq!(ok("attn_scores", Some(0), None), "blocks.0.attn.hook_attn_scores");
        assert_eq!(ok("query", Some(0), None), "blocks.0.attn.hook_q");
        assert_eq!(ok("value", Some(3), Some("attn")), "blocks.3.attn.hook_v");
        assert_eq!(ok("mlp_post", Some(0), None), "blocks.0.mlp.hook_post");
        assert_eq!(ok("z", Some(0), None), "blocks.0.attn.hook_z");
        assert_eq!(ok("result", Some(0), None), "blocks.0.attn.hook_result");
        for n in ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"] {
            assert_eq!(ok(n, Some(3), None), format!("blocks.3.hook_{n}"));
        }
        assert_eq!(ok("resid_pre", Some(3), Some("b")), "blocks.3.hook_resid_pre");
        assert_eq!(ok("pos_embed", None, None), "hook_pos_embed");
        assert_eq!(ok("scale", None, None), "ln_final.hook_scale");
        assert_eq!(ok("normalized", None, None), "ln_final.hook_normalized");
        assert_eq!(ok("scale", Some(1), Some("ln2")), "blocks.1.ln2.hook_scale");
        assert_eq!(ok("k6a", None, None), "blocks.6.attn.hook_k");
        assert_eq!(ok("blocks.0.hook_resid_pre", None, None), "blocks.0.hook_resid_pre");
        assert_eq!(ok("hook_embed", None, None), "hook_embed");
    }

    #[test]
    fn names_transformer_lens_would_invent_are_errors() {
        let err = |n: &str, l: Option<isize>, t: Option<&str>| act_name(n, l, t).unwrap_err().to_string();
        assert!(err("scale", Some(4), None).contains("ln1"));
        assert!(err("resid_pre5", None, None).contains("act_name(\"resid_pre\""));
        assert!(err("q", None, None).contains("needs a layer"));
        assert!(err("resid_pre", None, None).contains("needs a layer"));
        assert!(err("embed", Some(2), None).contains("outside the blocks"));
        assert!(err("resid_pre", Some(2), Some("attn")).contains("block itself"));
        assert!(err("q", Some(2), Some("mlp")).contains("lives in `attn`"));
        assert!(err("scale", None, Some("ln1")).contains("needs a layer"));
        assert!(err("scale", Some(0), Some("attn")).contains("ln1"));
        assert!(err("resid_pree", Some(0), None).contains("did you mean `resid_pre`"));
        assert!(err("k6", Some(5), None).contains("layer 6"));
        assert!(err("k", Some(-1), None).contains("negative"));
        assert!(err("hook_embed", Some(0), None).contains("full hook name"));
    }

    #[test]
    fn negative_layers_resolve_against_the_model() {
        assert_eq!(act_name_in("k", Some(-1), None, 12).unwrap(), "blocks.11.attn.hook_k");
        assert_eq!(
            act_name_in("scale", Some(-2), Some("ln1"), 2).unwrap(),
            "blocks.0.ln1.hook_scale"
        );
        assert!(act_name_in("k", Some(-13), None, 12).is_err());
        assert!(act_name_in("k", Some(12), None, 12).is_err());
        assert_eq!(act_name_in("embed", None, None, 12).unwrap(), "hook_embed");
    }
}
