//! The pprof files section: each file read, with a `pprof -http=: FILE`
//! command, and each file skipped, with the reason.

use std::fmt::Write as _;
use std::path::Path;

use super::text::{esc, fmt_time, shell_quote};
use super::Data;

pub(super) fn write(h: &mut String, data: &Data, dir: &Path) {
    h.push_str("<section id=\"files\"><h2>pprof files</h2>\n<p class=\"dim\">Open one in Google's pprof: <code>pprof -http=: FILE</code> (filter a span with <code>-tagfocus=span_id=ID</code>).</p>\n<ul>\n");
    let dir_abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for file in &data.files {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let full = dir_abs.join(&name);
        let start = u64::try_from(file.start).unwrap_or(0);
        let _ = writeln!(
            h,
            "<li><code class=\"cmd\">pprof -http=: {cmd}</code> <span class=\"dim\">{service} · {kind} · {samples} samples · {when} · {secs:.1} s</span></li>",
            cmd = esc(&shell_quote(&full.display().to_string())),
            service = esc(&file.service),
            kind = file.kind,
            samples = file.samples,
            when = if start > 0 { fmt_time(start) } else { "time unknown".to_string() },
            secs = file.duration_nanos as f64 / 1e9,
        );
    }
    for (path, why) in &data.skipped_files {
        let _ = writeln!(
            h,
            "<li class=\"skipped\">skipped <code>{}</code>: {}</li>",
            esc(&path.display().to_string()),
            esc(why)
        );
    }
    if data.files.is_empty() && data.skipped_files.is_empty() {
        h.push_str("<li class=\"empty\">none</li>\n");
    }
    h.push_str("</ul></section>\n");
}
