//! `summary.html`: one self-contained page a person reads in a browser to decide an escalation.
//! No script, no external asset (a Content-Security-Policy forbids loading any), and every
//! string from a job or a container escaped: the page shows hostile text, it never runs it.

use std::fmt::Write;

use super::{Decision, Escalation};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#1d1d1f}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}\
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:13px;white-space:pre-wrap;word-break:break-all}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
.state{display:inline-block;padding:.15em .6em;border-radius:4px;background:#fff3cd}\
.approved{background:#d4edda}.rejected{background:#f8d7da}code{background:#f6f8fa;padding:0 .2em}";

/// The page for `escalation`, showing `decision` when there is one.
pub fn summary(e: &Escalation, decision: Option<&Decision>) -> String {
    let mut page = String::new();
    let id = escape(&e.id);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>kiln escalation {id}</title><style>{STYLE}</style></head><body>\n\
         <h1>Escalation of job <code>{id}</code></h1>\n"
    );
    match decision {
        None => {
            let _ = writeln!(
                page,
                "<p><span class=\"state\">open</span> since {}</p>",
                escape(&e.created_at)
            );
        }
        Some(d) => {
            let (class, word) = match d.decision {
                super::Verdict::Approved => ("approved", "approved"),
                super::Verdict::Rejected => ("rejected", "rejected"),
            };
            let _ = writeln!(
                page,
                "<p><span class=\"state {class}\">{word}</span> by {} at {}{}</p>",
                escape(&d.by),
                escape(&d.at),
                d.note
                    .as_deref()
                    .map(|n| format!(": {}", escape(n)))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        page,
        "<table><tr><th>why</th><td>{} ({})</td></tr><tr><th>final state</th><td>{}</td></tr>\
         <tr><th>action</th><td>{}</td></tr><tr><th>channel</th><td>{}</td></tr>\
         <tr><th>tested change</th><td>{}</td></tr></table>",
        escape(&e.reason),
        escape(&format!("{:?}", e.kind).to_lowercase()),
        escape(&e.status),
        escape(e.action.as_deref().unwrap_or("-")),
        escape(e.channel.as_deref().unwrap_or("-")),
        match &e.candidate {
            Some(c) => format!(
                "commit <code>{}</code> from attempt {}, to publish as <code>{}</code>",
                escape(&c.commit),
                c.attempt,
                escape(&e.publish.branch)
            ),
            None => "none: no attempt passed its tests".into(),
        }
    );
    if decision.is_none() {
        let _ = writeln!(
            page,
            "<p>Decide with <code>kiln approve {id} --by NAME [--note TEXT]</code> or \
             <code>kiln reject {id} --by NAME --note TEXT</code>.</p>"
        );
    }

    let r = &e.request;
    let _ = writeln!(
        page,
        "<h2>Request</h2><table><tr><th>repository</th><td>{}</td></tr>\
         <tr><th>base</th><td>{} {}</td></tr><tr><th>branch</th><td>{}</td></tr></table>\
         <pre>{}</pre>",
        escape(&r.repo),
        escape(r.base.as_deref().unwrap_or("HEAD")),
        escape(r.base_commit.as_deref().unwrap_or("")),
        escape(&r.branch),
        escape(&r.prompt),
    );
    if let Some(req) = &r.test_requirements {
        let _ = writeln!(page, "<p>Test requirements: {}</p>", escape(req));
    }

    if let Some(gate) = &e.gate {
        findings(&mut page, gate);
    }

    for a in &e.attempts {
        let _ = writeln!(
            page,
            "<h2>Attempt {} — {}</h2>",
            a.attempt,
            if a.passed {
                "tests passed".to_string()
            } else {
                format!(
                    "tests failed or did not run (exit {})",
                    a.test_exit_code.map_or("-".to_string(), |c| c.to_string())
                )
            }
        );
        if !a.protected_reverted.is_empty() {
            let _ = writeln!(
                page,
                "<p>Protected paths the generator changed (the tests ran their base version): {}</p>",
                escape(&a.protected_reverted.join(", "))
            );
        }
        if let Some(review) = &a.review {
            reviewer(&mut page, review);
        }
        let _ = write!(
            page,
            "<h3>Diff{}</h3><pre>{}</pre>\n<h3>Test output (tail)</h3><pre>{}</pre>\n\
             <h3>Generator log (tail)</h3><pre>{}</pre>\n",
            if a.diff_truncated {
                " (first 64 KiB)"
            } else {
                ""
            },
            escape(&a.diff),
            escape(&a.test_log_tail),
            escape(&a.generate_log_tail),
        );
    }
    calls(&mut page, &e.calls);
    let _ = writeln!(
        page,
        "<p>Everything: <code>{}</code></p></body></html>",
        escape(&e.artifacts)
    );
    page
}

/// What the agents asked of their models and were told (with `[egress] transcripts`).
fn calls(page: &mut String, calls: &[super::transcript::Call]) {
    if calls.is_empty() {
        return;
    }
    let _ = writeln!(
        page,
        "<h2>Model calls</h2><table><tr><th>attempt</th><th>stage</th><th>call</th>\
         <th>tokens in / cached / out</th><th>answer (end)</th></tr>"
    );
    for c in calls {
        let count = |k: &str| c.usage[k].as_u64().map_or("-".into(), |n| n.to_string());
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{} ({}, {} bytes asked)</td><td>{} / {} / {}</td>\
             <td><pre>{}</pre></td></tr>",
            c.attempt,
            escape(&c.stage),
            escape(&c.path),
            c.status.map_or("-".into(), |s| s.to_string()),
            c.request_bytes,
            count("input"),
            count("cached"),
            count("output"),
            escape(&c.response_tail),
        );
    }
    let _ = writeln!(page, "</table>");
}

fn findings(page: &mut String, gate: &serde_json::Value) {
    let str_of = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let _ = writeln!(
        page,
        "<h2>Policy gate: {}</h2><table><tr><th>policy</th><th>decision</th><th>rule</th>\
         <th>where</th><th>message</th></tr>",
        escape(&str_of(gate, "decision"))
    );
    for policy in gate["policies"].as_array().into_iter().flatten() {
        let findings = policy["findings"].as_array().cloned().unwrap_or_default();
        if findings.is_empty() {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td></td><td></td><td></td></tr>",
                escape(&str_of(policy, "name")),
                escape(&str_of(policy, "decision"))
            );
        }
        for f in findings {
            let at = match (f["path"].as_str(), f["line"].as_u64()) {
                (Some(p), Some(l)) => format!("{p}:{l}"),
                (Some(p), None) => p.to_string(),
                _ => String::new(),
            };
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&str_of(policy, "name")),
                escape(&str_of(policy, "decision")),
                escape(&str_of(&f, "rule")),
                escape(&at),
                escape(&str_of(&f, "message"))
            );
        }
    }
    page.push_str("</table>\n");
    if let Some(auto) = gate.get("auto_merge") {
        let _ = writeln!(page, "<p>Auto-merge: {}</p>", escape(&auto.to_string()));
    }
}

fn reviewer(page: &mut String, review: &serde_json::Value) {
    let _ = writeln!(
        page,
        "<h3>Reviewer: {}</h3><p>{}</p>",
        escape(review["verdict"].as_str().unwrap_or("")),
        escape(
            review["invalid"]
                .as_str()
                .or(review["summary"].as_str())
                .unwrap_or("")
        )
    );
    let comments = review["comments"].as_array().cloned().unwrap_or_default();
    if !comments.is_empty() {
        page.push_str("<ul>\n");
        for c in comments {
            let at = match (c["path"].as_str(), c["line"].as_u64()) {
                (Some(p), Some(l)) => format!("{p}:{l}: "),
                (Some(p), None) => format!("{p}: "),
                _ => String::new(),
            };
            let _ = writeln!(
                page,
                "<li>{}{}</li>",
                escape(&at),
                escape(c["message"].as_str().unwrap_or(""))
            );
        }
        page.push_str("</ul>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\"\u{1b}[31m"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}[31m"
        );
    }
}
