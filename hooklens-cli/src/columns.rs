//! Text columns in a terminal: widths in terminal cells, not characters, so that rows
//! stay aligned whatever a token holds (CJK and other wide characters take two cells,
//! combining marks and zero-width characters none).

/// The cells `c` takes in a monospace terminal: 0, 1 or 2.
fn char_width(c: char) -> usize {
    let u = c as u32;
    // Combining marks, zero-width spaces and joiners, variation selectors.
    let zero = matches!(u,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x0610..=0x061A | 0x064B..=0x065F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x2069 | 0xFE00..=0xFE0F
        | 0xFE20..=0xFE2F | 0xFEFF | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF);
    if zero || c.is_control() {
        return 0;
    }
    // East Asian wide and fullwidth ranges, and the emoji blocks.
    let wide = matches!(u,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6 | 0x1F300..=0x1F64F | 0x1F900..=0x1F9FF | 0x20000..=0x2FFFD | 0x30000..=0x3FFFD);
    if wide {
        2
    } else {
        1
    }
}

/// The cells `s` takes in a monospace terminal.
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `s` cut to at most `max` cells, with `…` where something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if display_width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// `s` followed by spaces up to `width` cells.
pub fn pad(s: &str, width: usize) -> String {
    let w = display_width(s);
    format!("{s}{}", " ".repeat(width.saturating_sub(w)))
}

/// A probability as a percentage with enough digits to tell small ones apart:
/// `87%`, `4.2%`, `0.37%`, `2.1e-3%`.
pub fn percent(p: f32) -> String {
    let v = f64::from(p) * 100.0;
    if v >= 9.95 {
        format!("{v:.0}%")
    } else if v >= 0.995 {
        format!("{v:.1}%")
    } else if v >= 0.01 {
        format!("{v:.2}%")
    } else if v > 0.0 {
        format!("{v:.1e}%")
    } else {
        "0%".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_count_terminal_cells() {
        assert_eq!(display_width("the"), 3);
        assert_eq!(display_width("日本"), 4);
        assert_eq!(display_width("e\u{301}"), 1);
        assert_eq!(display_width("\u{FFFD}"), 1);
        assert_eq!(pad("日本", 6), "日本  ");
        assert_eq!(display_width(&truncate("日本語のテキスト", 7)), 7);
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn small_probabilities_keep_their_digits() {
        assert_eq!(percent(0.873), "87%");
        assert_eq!(percent(0.042), "4.2%");
        assert_eq!(percent(0.0037), "0.37%");
        assert_eq!(percent(0.000021), "2.1e-3%");
        assert_eq!(percent(0.0), "0%");
        assert_ne!(percent(0.004), percent(0.001));
    }
}
