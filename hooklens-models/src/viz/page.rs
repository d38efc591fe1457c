//! What every page of the views shares: the template filled with a title and the data
//! as script-safe JSON, the one-prompt check, and the rounding that keeps pages small.

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

/// `tokens` of one prompt as `[1, pos]` (from `[pos]` or `[1, pos]`) and `pos`; anything
/// else is an error naming the view (`what`) that shows one prompt.
pub(super) fn one_prompt(
    tokens: &candle_core::Tensor,
    what: &str,
) -> hooklens_core::Result<(candle_core::Tensor, usize)> {
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
pub(super) fn fill(template: &str, title: &str, data: &serde_json::Value) -> String {
    template
        .replace("{{TITLE}}", &crate::html::escape_html(title))
        .replace("{{DATA}}", &json_for_script(data))
}

/// `x` rounded to 4 decimals, so the pages stay small (the weights are shown with 3).
pub(super) fn round4(x: f32) -> f64 {
    (f64::from(x) * 1e4).round() / 1e4
}

/// `x` to 4 significant digits: probabilities far below 1e-4 keep their size.
pub(super) fn round_sig4(x: f32) -> f64 {
    let x = f64::from(x);
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::viz::*;

    #[test]
    fn probabilities_keep_four_significant_digits() {
        assert_eq!(round_sig4(0.123456), 0.1235);
        assert!((round_sig4(2.345678e-6) - 2.346e-6).abs() < 1e-12);
        assert_eq!(round_sig4(0.0), 0.0);
    }

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
        assert_eq!(
            crate::html::escape_html("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    /// The lines of `page`'s scripts that put text into the DOM as plain text (a
    /// `textContent` or a `title`) built from a token: there must be none, as a token's
    /// right-to-left override would reorder whatever follows it (issue 27, 21). Token
    /// text goes into a `<bdi>`, or between U+2068 and U+2069 (`iso(...)`) in a title.
    fn unisolated_token_text(page: &str) -> Vec<String> {
        let token = ["JSON.stringify(", "show(", "shown(", "tokens[", "best["];
        page.lines()
            .filter(|l| l.contains("textContent =") || l.contains(".title ="))
            .filter(|l| token.iter().any(|t| l.contains(t)) && !l.contains("iso("))
            // The graph's prompt element is a <bdi> itself.
            .filter(|l| !l.contains("getElementById(\"prompt\")"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    #[test]
    fn every_page_isolates_token_text() {
        use candle_core::{Device, Tensor};
        let tokens = vec!["a".to_string(), "\u{202E}b".to_string(), "c".to_string()];
        let attention = attention_html(&AttentionView {
            title: "t".into(),
            tokens: tokens.clone(),
            layers: vec![(
                0,
                Tensor::ones((1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )],
            selected: None,
        })
        .unwrap();
        let features = features_html(&FeatureView {
            title: "t".into(),
            tokens: tokens.clone(),
            top: vec![vec![(0, 1.0)], vec![], vec![]],
            columns: [(0, vec![1.0, 0.0, 0.0])].into_iter().collect(),
            feature: 0,
        });
        let lens = logit_lens_html(
            &LogitLens {
                tokens,
                labels: vec!["final_post".into()],
                top: vec![vec![vec![(1, "\u{202E}x".into(), 0.5)]; 3]],
            },
            "t",
        );
        let graph = graph_file_html(
            &GraphFile::from_json(
                &std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../testdata/circuits/graph_files/public.json"
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        for (name, page) in [
            ("attention", &attention),
            ("features", &features),
            ("logit lens", &lens),
            ("graph", &graph),
        ] {
            assert!(
                page.contains("createElement(\"bdi\")") || page.contains("el(\"bdi\""),
                "{name}: no <bdi>"
            );
            let bad = unisolated_token_text(page);
            assert!(bad.is_empty(), "{name}: token text not isolated: {bad:#?}");
            assert!(!page.contains('\u{202E}'), "{name}: a bidi override is written raw");
        }
        assert!(graph.contains("<bdi id=\"prompt\">"));
    }
}
