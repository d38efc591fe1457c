//! Pictures of a model at work, as single self-contained HTML files (scripts and styles
//! inlined, no network): every head's attention pattern ([`attention_html`]), the
//! logit lens ([`logit_lens`], [`logit_lens_html`]), an SAE's features on a prompt
//! ([`feature_activations`], [`features_html`]) and an attribution graph as
//! circuit-tracer writes it ([`attribution_graph_html`], read through [`GraphFile`]).
//!
//! Token strings come from the model's vocabulary and can hold anything, `</script>`
//! included; the pages never put them into markup. The data travels as JSON in a
//! `<script type="application/json">` element with every `<` escaped, and the page's
//! script shows it through `textContent` and canvas text only.

mod attention;
mod features;
mod graph;
mod logit_lens;

pub use crate::circuits::{GraphFile, GraphLink, GraphMetadata, GraphNode, QParams};
pub use attention::{attention_html, attention_patterns, AttentionView};
pub use features::{feature_activations, features_html, FeatureView};
pub use graph::{attribution_graph_html, graph_file_html};
pub use logit_lens::{logit_lens, logit_lens_html, LogitLens};

/// `value` as JSON that is safe inside a `<script>` element: `<`, `>` and `&` become
/// `\u003c`, `\u003e`, `\u0026` (so no `</script>` or `<!--` can end or change the
/// element), and U+2028 / U+2029 are escaped too, as are the bidirectional controls
/// (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), so a token's
/// right-to-left override cannot reorder the page's source as an editor shows it. These
/// only occur inside JSON strings, where the escapes mean the same characters.
pub(crate) fn json_for_script(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped for HTML element content and double-quoted attributes.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `tokens` of one prompt as `[1, pos]` (from `[pos]` or `[1, pos]`) and `pos`; anything
/// else is an error naming the view (`what`) that shows one prompt.
fn one_prompt(tokens: &candle_core::Tensor, what: &str) -> hooklens_core::Result<(candle_core::Tensor, usize)> {
    let tokens = match tokens.rank() {
        1 => tokens.unsqueeze(0)?,
        _ => tokens.clone(),
    };
    let (batch, pos) = tokens.dims2().map_err(|_| {
        hooklens_core::Error::invalid(format!("tokens must be [1, pos], got shape {:?}", tokens.dims()))
    })?;
    if batch != 1 {
        return Err(hooklens_core::Error::invalid(format!(
            "{what} shows one prompt; got a batch of {batch}"
        )));
    }
    Ok((tokens, pos))
}

/// A page: `template` with `{{TITLE}}` replaced by the escaped title and `{{DATA}}` by
/// the script-safe JSON. The data goes in last, so nothing in it is ever substituted.
fn fill(template: &str, title: &str, data: &serde_json::Value) -> String {
    template
        .replace("{{TITLE}}", &escape_html(title))
        .replace("{{DATA}}", &json_for_script(data))
}

/// `x` rounded to 4 decimals, so the pages stay small (the weights are shown with 3).
fn round4(x: f32) -> f64 {
    (f64::from(x) * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_element() {
        let v = serde_json::json!({"t": ["</script><script>alert(1)</script>", "<!--", "a&b", "\u{2028}", "x\u{202E}y\u{2067}z\u{200F}"]});
        let s = json_for_script(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'), "{s}");
        assert!(!s.contains('\u{2028}'));
        assert!(s.contains("x\\u202ey\\u2067z\\u200f"), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn html_escaping() {
        assert_eq!(escape_html("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
