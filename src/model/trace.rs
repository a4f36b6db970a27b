//! A W3C trace context parent (`traceparent`), as a client sends it to continue its trace in
//! kiln's. It is input from outside: only the exact shape of version 00 is taken.

use std::fmt;
use std::str::FromStr;

use super::Invalid;

/// A `traceparent` header value: `00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`,
/// lowercase, neither id all zeros (<https://www.w3.org/TR/trace-context/#traceparent-header>).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace's id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The caller's span, 16 lowercase hex digits.
    pub fn parent_id(&self) -> &str {
        &self.0[36..52]
    }

    /// The trace flags (bit 0: the caller samples this trace).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.0[53..55], 16).expect("checked as two hex digits")
    }
}

impl FromStr for TraceParent {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid(
                "traceparent must be `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>` with non-zero ids"
                    .into(),
            )
        };
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace, parent, flags] = parts[..] else {
            return Err(bad());
        };
        let hex = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |part: &str| part.bytes().all(|b| b == b'0');
        if version != "00"
            || !hex(trace, 32)
            || !hex(parent, 16)
            || !hex(flags, 2)
            || zero(trace)
            || zero(parent)
        {
            return Err(bad());
        }
        Ok(TraceParent(s.to_string()))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_into_its_ids() {
        let parent: TraceParent = GOOD.parse().unwrap();
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id(), "00f067aa0ba902b7");
        assert_eq!(parent.flags(), 1);
        assert_eq!(parent.to_string(), GOOD);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
    }
}
