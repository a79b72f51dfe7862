//! Rendering the report page, one section at a time:
//!
//! - [`summary`]: the document head and the page header (counts and notes);
//! - [`services`]: one aggregate flame graph per service;
//! - [`labels`]: one flame graph per value of each span-field label;
//! - [`traces`]: the trace rows, each with a waterfall of its root spans and
//!   a flame graph per span;
//! - [`files`]: the pprof files with a `pprof` command each;
//! - [`flame`]: the flame-graph panels (inferno SVG, each in its own
//!   `<iframe srcdoc>`, loaded when opened).
//!
//! The page's CSS and JavaScript live in `src/report/assets/` and are
//! compiled in, so the page stays one self-contained HTML file.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use super::load::{Data, Span};
use super::{MAX_SPAN_FLAME_GRAPHS, MAX_TRACE_ROWS};

mod breakdown;
mod files;
mod flame;
mod labels;
mod services;
mod summary;
mod text;
mod traces;

/// The page's script: sorting, filtering, and opening flame graphs.
const REPORT_JS: &str = include_str!("../assets/report.js");

/// The rendered page and what it holds.
pub(super) struct Page {
    pub(super) html: String,
    pub(super) traces: usize,
    pub(super) span_flame_graphs: usize,
}

/// Which spans get a flame graph of their own: the heaviest by samples.
struct SpanGraphs<'a> {
    with_graph: HashSet<&'a str>,
    /// Spans with at least one sample.
    with_samples: usize,
}

impl<'a> SpanGraphs<'a> {
    fn heaviest(data: &'a Data) -> Self {
        let mut by_weight: Vec<&Span> = data
            .spans
            .values()
            .filter(|s| s.profile.any_samples())
            .collect();
        by_weight.sort_by(|a, b| {
            span_weight(b)
                .cmp(&span_weight(a))
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
        SpanGraphs {
            with_samples: by_weight.len(),
            with_graph: by_weight
                .iter()
                .take(MAX_SPAN_FLAME_GRAPHS)
                .map(|s| s.span_id.as_str())
                .collect(),
        }
    }

    fn has_graph(&self, span: &Span) -> bool {
        self.with_graph.contains(span.span_id.as_str())
    }

    /// Spans with samples but without a graph of their own.
    fn left_out(&self) -> usize {
        self.with_samples.saturating_sub(self.with_graph.len())
    }
}

/// How heavy a span is: CPU samples, then wall time, then bytes allocated.
fn span_weight(span: &Span) -> (u64, u64, u64) {
    let p = &span.profile;
    (p.cpu.samples, p.wall.total, p.alloc.total)
}

pub(super) fn render(data: &Data, dir: &Path) -> Page {
    let graphs = SpanGraphs::heaviest(data);
    let mut traces = traces::group(data);
    let total_traces = traces.len();
    traces.truncate(MAX_TRACE_ROWS);

    let mut h = String::with_capacity(1 << 20);
    summary::write_head(&mut h, dir);
    summary::write_header(&mut h, data, dir, total_traces, graphs.left_out());
    let mut flames = flame::Flames::new(&data.stacks);
    services::write(&mut h, data, &mut flames);
    labels::write(&mut h, data, &mut flames);
    let span_flame_graphs = traces::write(&mut h, data, &traces, &graphs, &mut flames);
    files::write(&mut h, data, dir);
    write_scripts(&mut h, &flames.shared_script());

    Page {
        html: h,
        traces: traces.len(),
        span_flame_graphs,
    }
}

/// The flame graphs' shared script (as inert text, see [`flame`]), the
/// page's script, and the end of the document.
fn write_scripts(h: &mut String, shared_flame_script: &str) {
    let _ = write!(
        h,
        "<script type=\"text/plain\" id=\"inferno-js\">{shared_flame_script}</script>\n\
         <script>\n{REPORT_JS}</script>\n</body>\n</html>\n",
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_script_can_sit_in_a_script_element() {
        assert!(!super::REPORT_JS.contains("</"));
    }
}
