//! How client commands print: aligned tables for people, JSON for scripts.

use serde::Serialize;

use super::Format;
use crate::api::{ContainerSummary, NetworkView, StatsView};

pub fn json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable")
    );
}

/// Prints rows with columns padded to the widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn networks(list: &[NetworkView], format: Format) {
    if format == Format::Json {
        return json(&list);
    }
    let rows = list
        .iter()
        .map(|n| {
            vec![
                n.id[..12].to_owned(),
                n.name.clone(),
                n.driver.clone(),
                n.ipam
                    .config
                    .first()
                    .map(|c| c.subnet.clone())
                    .unwrap_or_default(),
                if n.internal {
                    "internal".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET", "FLAGS"], rows);
}

pub fn containers(list: &[ContainerSummary], quiet: bool, format: Format) {
    if format == Format::Json {
        return json(&list);
    }
    if quiet {
        for c in list {
            println!("{}", &c.id[..12]);
        }
        return;
    }
    let rows = list
        .iter()
        .map(|c| {
            vec![
                c.id[..12].to_owned(),
                format!("{:?}", c.command),
                c.status.clone(),
                c.networks.join(","),
                c.name.clone(),
            ]
        })
        .collect();
    table(
        &["CONTAINER ID", "COMMAND", "STATUS", "NETWORKS", "NAMES"],
        rows,
    );
}

/// Endpoints first, then the drops of every hook by reason.
pub fn stats(stats: &StatsView, format: Format) {
    if format == Format::Json {
        return json(stats);
    }
    let rows = stats
        .endpoints
        .iter()
        .map(|s| {
            let drops: Vec<String> = s
                .counters
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            vec![
                s.container.clone(),
                s.network.clone(),
                format!("{}/{}", s.interface, s.host_interface),
                s.counters.fast_packets.to_string(),
                s.counters.fast_bytes.to_string(),
                s.counters.passed_packets.to_string(),
                drops.join(","),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "NETWORK",
            "IFACE/HOST",
            "FAST PKTS",
            "FAST BYTES",
            "PASSED PKTS",
            "DROPS",
        ],
        rows,
    );
    println!();
    let rows = stats
        .drops
        .iter()
        .flat_map(|(hook, reasons)| {
            reasons
                .iter()
                .map(move |(reason, n)| vec![hook.clone(), reason.clone(), n.to_string()])
        })
        .collect();
    table(&["HOOK", "DROP REASON", "PACKETS"], rows);
}
