//! Text helpers: output cut on a character boundary, never mid-rune; git's scp-like remotes.

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn head_text(text: &str, max: usize) -> &str {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// The last `max` bytes of `bytes`, as text, for feeding back to the generator.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// `user@host:path`, git's scp-like remote syntax.
pub fn is_scp_like(text: &str) -> bool {
    match text.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/') && host.contains('@'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(head_text("héllo", 2), "h");
        assert_eq!(head_text("abc", 10), "abc");
        assert_eq!(tail_text(b"abcdef", 3), "def");
        assert_eq!(tail_text(b"ab", 3), "ab");
    }

    #[test]
    fn scp_like_needs_a_user_and_no_slash_before_the_colon() {
        assert!(is_scp_like("git@host:x.git"));
        assert!(!is_scp_like("./a:b"));
        assert!(!is_scp_like("host:x"));
    }
}
