//! Whether the retry loop still converges: an attempt that repeats an earlier tree, or puts a
//! file back the way it was before an earlier attempt changed it, is going in circles.

use git2::Oid;

use crate::workspace::BlobChange;

/// Why attempt `n` (tree `tree`, per-file change `delta` from the attempt before) shows the loop
/// is not converging: it left the same tree as an earlier attempt, or it undid a change an
/// earlier attempt made to some file (that file's blob went back from after to before).
pub(super) fn convergence(
    n: u32,
    tree: Oid,
    earlier_trees: &[Oid],
    delta: &[BlobChange],
    earlier_deltas: &[Vec<BlobChange>],
) -> Option<String> {
    if let Some(k) = earlier_trees.iter().position(|t| *t == tree) {
        return Some(format!(
            "attempt {n} produced the same change as attempt {}",
            k + 1
        ));
    }
    for (k, earlier) in earlier_deltas.iter().enumerate() {
        for change in delta {
            if earlier
                .iter()
                .any(|e| e.path == change.path && e.old == change.new && e.new == change.old)
            {
                return Some(format!(
                    "attempt {n} reverts attempt {}'s change to {}",
                    k + 1,
                    change.path
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn change(path: &str, old: u8, new: u8) -> BlobChange {
        BlobChange {
            path: path.into(),
            old: oid(old),
            new: oid(new),
        }
    }

    #[test]
    fn stops_on_a_repeated_tree() {
        let reason = convergence(
            3,
            oid(7),
            &[oid(7), oid(8)],
            &[change("a", 8, 7)],
            &[vec![change("a", 1, 7)], vec![change("a", 7, 8)]],
        );
        assert_eq!(
            reason.as_deref(),
            Some("attempt 3 produced the same change as attempt 1")
        );
    }

    #[test]
    fn stops_when_an_attempt_reverts_an_earlier_one() {
        let reason = convergence(
            3,
            oid(9),
            &[oid(5), oid(6)],
            &[change("src/a.rs", 2, 1)],
            &[vec![change("src/a.rs", 1, 2)], vec![change("b", 3, 4)]],
        );
        assert_eq!(
            reason.as_deref(),
            Some("attempt 3 reverts attempt 1's change to src/a.rs")
        );
    }

    #[test]
    fn a_new_change_keeps_going() {
        assert_eq!(
            convergence(
                2,
                oid(6),
                &[oid(5)],
                &[change("a", 2, 3)],
                &[vec![change("a", 1, 2)]]
            ),
            None
        );
    }
}
