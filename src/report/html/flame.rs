//! Flame-graph panels: a "profile" toggle and a hidden panel holding an
//! [inferno](https://docs.rs/inferno) SVG in its own `<iframe srcdoc>`, so
//! the graphs' scripts and element ids cannot clash.
//!
//! inferno's script is the same in every graph, so the page holds it once
//! (see [`Flames::shared_script`]) and each graph's document holds
//! [`INFERNO_JS_MARKER`] in its place; the page's script puts it back when a
//! graph is first opened (the `data-srcdoc` attribute becomes `srcdoc`).
//!
//! Like Grafana's, the graphs are drawn root at the top (icicle). Frames
//! are named as the pprof files name their functions: without generic
//! arguments, types kept (`profile/names.rs`). Frame labels are shortened
//! for display only (`assets/flame.js`): the module path dropped when a
//! frame is narrow (and generic arguments, should a file still have them);
//! each frame's `<title>` (tooltip, details line, search) keeps the whole
//! name.

use std::fmt::Write as _;

use super::text::{esc, esc_single_quoted, fmt_bytes, fmt_duration};
use crate::report::load::{Folded, Profiles, Stacks, View};

/// Marks where inferno's (identical in every graph) script goes in a
/// flame graph's `srcdoc`; the page holds the script once and puts it back
/// when a graph is opened.
const INFERNO_JS_MARKER: &str = "/*inferno.js*/";

/// Start of each flame graph's `srcdoc` document.
const SRCDOC_HEAD: &str = concat!(
    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>",
    include_str!("../assets/flame.css"),
    "</style></head><body>"
);

/// Appended to inferno's script in every graph: shorter frame labels (the
/// whole names stay in the frames' titles) and a URL-state no-op.
const FLAME_JS: &str = include_str!("../assets/flame.js");

/// Writes flame-graph panels; keeps inferno's script, which every graph
/// shares, to be written once into the page.
pub(super) struct Flames<'a> {
    stacks: &'a Stacks,
    shared_js: Option<String>,
}

/// What a flame-graph panel is for: `data-{kind}="{key}"` on its iframe,
/// `panel` its element id.
pub(super) struct PanelFor<'a> {
    pub(super) kind: &'a str,
    pub(super) key: &'a str,
    pub(super) panel: &'a str,
}

impl<'a> Flames<'a> {
    pub(super) fn new(stacks: &'a Stacks) -> Self {
        Flames {
            stacks,
            shared_js: None,
        }
    }

    /// The script every graph written so far shares (empty if none), for
    /// the page's `<script type="text/plain" id="inferno-js">`: inferno's,
    /// then [`FLAME_JS`].
    pub(super) fn shared_script(&self) -> String {
        match &self.shared_js {
            Some(js) => format!("{js}\n{FLAME_JS}"),
            None => String::new(),
        }
    }

    /// The "profile" toggle (closing the head row opened by the caller),
    /// `after_head`, then a hidden panel: a switch between the profile
    /// types that hold samples here (CPU, wall, allocations, in-use), each
    /// a lazily loaded flame graph iframe (`data-view`), CPU first.
    pub(super) fn push_panel(
        &mut self,
        h: &mut String,
        target: &PanelFor<'_>,
        profiles: &Profiles,
        title: &str,
        after_head: &str,
    ) {
        let PanelFor { kind, key, panel } = target;
        let _ = write!(
            h,
            "<div class=\"num\"><button class=\"toggle\" type=\"button\" aria-expanded=\"false\" \
             aria-controls=\"{panel}\">profile</button></div></div>{after_head}\
             <div class=\"profile\" id=\"{panel}\" hidden>"
        );
        let views = profiles.views();
        if views.is_empty() {
            h.push_str("<p class=\"empty\">No samples.</p></div>");
            return;
        }
        h.push_str("<div class=\"views\" role=\"group\" aria-label=\"profile type\">");
        for (i, view) in views.iter().enumerate() {
            let _ = write!(
                h,
                "<button class=\"view\" type=\"button\" data-view=\"{v}\" aria-pressed=\"{p}\">{t}</button>",
                v = view.key(),
                p = i == 0,
                t = view.title(),
            );
        }
        h.push_str("</div>");
        for (i, &view) in views.iter().enumerate() {
            let folded = profiles.get(view);
            let graph_title = format!("{title} · {}", view.title());
            match flame_graph(folded, self.stacks, &graph_title, view) {
                Some((doc, height, js)) if self.shared_js.as_ref().is_none_or(|s| *s == js) => {
                    self.shared_js.get_or_insert(js);
                    // Single-quoted: the SVG is full of double quotes, so only '&'
                    // and '\'' need escaping, which keeps the page small.
                    let _ = write!(
                        h,
                        "<iframe class=\"fg\" data-view=\"{v}\" data-{kind}=\"{key}\" data-srcdoc='{doc}' \
                         height=\"{height}\" title=\"{t}\"{hidden}></iframe>",
                        v = view.key(),
                        key = esc(key),
                        doc = esc_single_quoted(&doc),
                        t = esc(&graph_title),
                        hidden = if i == 0 { "" } else { " hidden" },
                    );
                }
                _ => {
                    let _ = write!(
                        h,
                        "<p class=\"empty fg\" data-view=\"{v}\"{hidden}>Could not draw this flame graph.</p>",
                        v = view.key(),
                        hidden = if i == 0 { "" } else { " hidden" },
                    );
                }
            }
        }
        h.push_str("</div>");
    }
}

/// The totals of every view that holds samples: `CPU 1.2 s (300 samples) ·
/// wall 3.40 s · allocations 12.0 MiB · in-use 3.0 MiB`.
pub(super) fn totals(profiles: &Profiles) -> String {
    let mut out = format!(
        "CPU {} ({} samples)",
        fmt_duration(profiles.cpu.total),
        profiles.cpu.samples
    );
    for view in profiles.views() {
        if view != View::Cpu {
            let _ = write!(
                out,
                " · {} {}",
                view.title(),
                fmt_total(view, profiles.get(view))
            );
        }
    }
    out
}

/// A view's total as text: a duration, or bytes.
pub(super) fn fmt_total(view: View, folded: &Folded) -> String {
    if view.is_bytes() {
        fmt_bytes(folded.total)
    } else {
        fmt_duration(folded.total)
    }
}

/// An HTML document (for `srcdoc`) holding inferno's interactive SVG with
/// its static script replaced by [`INFERNO_JS_MARKER`], the SVG's height in
/// pixels, and the script taken out.
fn flame_graph(
    folded: &Folded,
    stacks: &Stacks,
    title: &str,
    view: View,
) -> Option<(String, usize, String)> {
    let lines = folded.lines(stacks);
    if lines.is_empty() {
        return None;
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!(
        "{} samples · {} {}",
        folded.samples,
        view.title(),
        fmt_total(view, folded)
    ));
    options.count_name = match view {
        View::Cpu => "samples",
        View::Wall => "µs",
        View::Alloc | View::Inuse => "bytes",
    }
    .to_string();
    options.hash = true;
    // Root at the top, leaves below (an icicle graph), as Grafana draws
    // flame graphs.
    options.direction = inferno::flamegraph::Direction::Inverted;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .ok()?;
    let svg = String::from_utf8(svg).ok()?;
    // Drop the XML prolog and doctype: the SVG is inlined into HTML.
    let svg = &svg[svg.find("<svg")?..];
    let height = svg_height(svg).unwrap_or(400);
    // The static script is the CDATA section starting with "use strict".
    let open = "<![CDATA[\"use strict\";";
    let start = svg.find(open)? + "<![CDATA[".len();
    let len = svg[start..].find("]]>")?;
    let js = &svg[start..start + len];
    if js.contains("</") {
        return None; // could not be held in the page's <script> block
    }
    let doc = format!(
        "{SRCDOC_HEAD}{}{INFERNO_JS_MARKER}{}</body></html>",
        &svg[..start],
        &svg[start + len..]
    );
    Some((doc, height, js.to_string()))
}

fn svg_height(svg: &str) -> Option<usize> {
    let open = &svg[..svg.find('>')?];
    let at = open.find(" height=\"")? + " height=\"".len();
    let rest = &open[at..];
    rest[..rest.find('"')?]
        .parse::<f64>()
        .ok()
        .map(|h| h.ceil() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_svg_height() {
        assert_eq!(
            svg_height(r#"<svg version="1.1" height="230" onload="init(evt)">"#),
            Some(230)
        );
        assert_eq!(svg_height("<svg>"), None);
    }

    /// [`FLAME_JS`] follows inferno's script inside the page's
    /// `<script type="text/plain">` and inside an SVG `<![CDATA[...]]>`.
    #[test]
    fn flame_script_can_sit_in_a_script_element_and_in_cdata() {
        assert!(!FLAME_JS.contains("</"));
        assert!(!FLAME_JS.contains("]]>"));
    }
}
