//! The span-labels section: one flame graph per value of each span-field
//! label (`PYROSCOPE_SPAN_LABELS`), from the samples of every service that
//! carry it, heaviest value first. Grafana's equivalent is a query such as
//! `{service_name="ride-sharing-app", vehicle="car"}`.

use std::fmt::Write as _;

use super::flame::{totals, Flames, PanelFor};
use super::text::{esc, percent};
use super::Data;
use crate::report::load::Profiles;

/// At most this many values of one key get a flame graph (the heaviest);
/// the page says how many were left out.
pub(super) const MAX_VALUE_GRAPHS: usize = 50;

pub(super) fn write(h: &mut String, data: &Data, flames: &mut Flames<'_>) {
    h.push_str("<section id=\"labels\"><h2>Span labels</h2>\n");
    if data.labels.is_empty() {
        h.push_str(
            "<p class=\"empty\">No span labels in these profiles. List span fields in \
             <code>PYROSCOPE_SPAN_LABELS</code> (e.g. <code>vehicle</code>) to get a flame \
             graph per value here.</p>\n",
        );
    }
    for (k, (key, values)) in data.labels.iter().enumerate() {
        let mut values: Vec<(&String, &Profiles)> = values.iter().collect();
        values.sort_by(|a, b| {
            (b.1.cpu.samples, b.1.wall.total, b.1.alloc.total)
                .cmp(&(a.1.cpu.samples, a.1.wall.total, a.1.alloc.total))
                .then_with(|| a.0.cmp(b.0))
        });
        let _ = writeln!(
            h,
            "<div class=\"label-key\" data-label-key=\"{key_attr}\"><h3>{key}</h3>\
             <p class=\"dim\">{n} values · one flame graph per value, from the samples of every \
             service that carry <code>{key}</code></p>",
            key_attr = esc(key),
            key = esc(key),
            n = values.len(),
        );
        for (v, (value, folded)) in values.iter().take(MAX_VALUE_GRAPHS).enumerate() {
            let label = format!("{key}={value}");
            let _ = write!(
                h,
                "<div class=\"service label-value\" data-label=\"{attr}\">\
                 <div class=\"service-head\"><b>{shown}</b> \
                 <span class=\"dim\">{totals} · {pct} of all CPU samples</span> ",
                attr = esc(&label),
                shown = esc(&label),
                totals = esc(&totals(folded)),
                pct = percent(folded.cpu.samples, data.total_samples),
            );
            let panel = format!("lbl-{k}-{v}");
            let title = format!("{label}: all samples");
            let target = PanelFor {
                kind: "label",
                key: &label,
                panel: &panel,
            };
            flames.push_panel(h, &target, folded, &title, "");
            h.push_str("</div>\n");
        }
        if values.len() > MAX_VALUE_GRAPHS {
            let _ = writeln!(
                h,
                "<p class=\"note\">Showing the {MAX_VALUE_GRAPHS} heaviest of {} values of {}.</p>",
                values.len(),
                esc(key)
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</section>\n");
}
