//! The services section: one flame graph per service, from all of its
//! samples (with or without a span).

use std::fmt::Write as _;

use super::flame::{totals, Flames, PanelFor};
use super::text::esc;
use super::Data;

pub(super) fn write(h: &mut String, data: &Data, flames: &mut Flames<'_>) {
    h.push_str("<section id=\"services\"><h2>Services</h2>\n");
    if data.services.is_empty() {
        h.push_str("<p class=\"empty\">No profiles in this directory.</p>\n");
    }
    for (i, (service, folded)) in data.services.iter().enumerate() {
        let _ = write!(
            h,
            "<div class=\"service\"><div class=\"service-head\"><b>{name}</b> \
             <span class=\"dim\">{totals}</span> ",
            name = esc(service),
            totals = esc(&totals(folded)),
        );
        let panel = format!("svc-{i}");
        let title = format!("{service}: all samples");
        let target = PanelFor {
            kind: "service",
            key: service,
            panel: &panel,
        };
        flames.push_panel(h, &target, folded, &title, "");
        h.push_str("</div>\n");
    }
    h.push_str("</section>\n");
}
