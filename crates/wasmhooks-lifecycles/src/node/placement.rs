//! Planning a placement group: resource bundles (e.g. `{CPU: 1, GPU: 1}`
//! per tensor-parallel rank) placed onto a node inventory with Ray's four
//! strategies. An infeasible request is an error that says what did not
//! fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Resources by name (`CPU`, `GPU`, `memory_gb`, or any custom one).
pub type Resources = BTreeMap<String, f64>;

/// How bundles spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// As few nodes as possible, but more if needed.
    #[default]
    Pack,
    /// As many nodes as possible, but sharing if needed.
    Spread,
    /// All on one node, or fail.
    StrictPack,
    /// Each on its own node, or fail.
    StrictSpread,
}

/// A node and what it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// What it offers.
    pub resources: Resources,
}

/// What to place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// One entry per bundle.
    pub bundles: Vec<Resources>,
    /// How to spread them.
    pub strategy: Strategy,
}

/// Where each bundle went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The strategy used.
    pub strategy: Strategy,
    /// Each bundle with its node, in request order.
    pub bundles: Vec<Placed>,
}

/// One placed bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    /// What it asked for.
    pub resources: Resources,
    /// The node it is on.
    pub node: String,
}

/// Places the request's bundles onto `nodes`.
pub fn plan(request: &Request, nodes: &[Node]) -> Result<Plan, String> {
    if request.bundles.is_empty() {
        return Err("the placement group has no bundles".into());
    }
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.resources.clone()).collect();
    let mut placed = vec![usize::MAX; request.bundles.len()];
    let fits = |free: &Resources, want: &Resources| {
        want.iter()
            .all(|(k, v)| *v <= 0.0 || free.get(k).copied().unwrap_or(0.0) + 1e-9 >= *v)
    };
    let take = |free: &mut Resources, want: &Resources| {
        for (k, v) in want {
            *free.entry(k.clone()).or_default() -= v;
        }
    };
    match request.strategy {
        Strategy::StrictPack => {
            let total = sum(&request.bundles);
            let node = (0..nodes.len())
                .find(|&n| fits(&free[n], &total))
                .ok_or_else(|| {
                    format!("STRICT_PACK: no node has {} for all bundles", show(&total))
                })?;
            placed.fill(node);
        }
        Strategy::StrictSpread => {
            if request.bundles.len() > nodes.len() {
                return Err(format!(
                    "STRICT_SPREAD: {} bundles need as many nodes, there are {}",
                    request.bundles.len(),
                    nodes.len()
                ));
            }
            let mut used = vec![false; nodes.len()];
            for (b, want) in request.bundles.iter().enumerate() {
                let node = (0..nodes.len())
                    .find(|&n| !used[n] && fits(&free[n], want))
                    .ok_or_else(|| {
                        format!(
                            "STRICT_SPREAD: no unused node has {} for bundle {b}",
                            show(want)
                        )
                    })?;
                used[node] = true;
                take(&mut free[node], want);
                placed[b] = node;
            }
        }
        Strategy::Pack | Strategy::Spread => {
            let mut next = 0;
            for (b, want) in request.bundles.iter().enumerate() {
                // PACK fills the first node that fits; SPREAD starts each
                // bundle at the next node round-robin.
                let start = if request.strategy == Strategy::Spread {
                    next
                } else {
                    0
                };
                let node = (0..nodes.len())
                    .map(|i| (start + i) % nodes.len())
                    .find(|&n| fits(&free[n], want))
                    .ok_or_else(|| {
                        format!(
                            "{:?}: no node has {} left for bundle {b}",
                            request.strategy,
                            show(want)
                        )
                    })?;
                take(&mut free[node], want);
                placed[b] = node;
                next = node + 1;
            }
        }
    }
    Ok(Plan {
        strategy: request.strategy,
        bundles: request
            .bundles
            .iter()
            .zip(placed)
            .map(|(r, n)| Placed {
                resources: r.clone(),
                node: nodes[n].name.clone(),
            })
            .collect(),
    })
}

/// This machine as a node: its CPUs and memory (no GPUs are detected).
pub fn this_machine() -> Node {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kib / (1024.0 * 1024.0)).floor())
        })
        .unwrap_or(0.0);
    let name = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    Node {
        name,
        resources: [
            ("CPU".to_owned(), cpus),
            ("GPU".to_owned(), 0.0),
            ("memory_gb".to_owned(), memory_gb),
        ]
        .into_iter()
        .collect(),
    }
}

fn sum(bundles: &[Resources]) -> Resources {
    let mut total = Resources::new();
    for b in bundles {
        for (k, v) in b {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    total
}

fn show(r: &Resources) -> String {
    let parts: Vec<String> = r.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: f64, gpu: f64) -> Resources {
        [("CPU".to_owned(), cpu), ("GPU".to_owned(), gpu)]
            .into_iter()
            .collect()
    }

    fn nodes() -> Vec<Node> {
        (0..3)
            .map(|i| Node {
                name: format!("n{i}"),
                resources: res(4.0, 2.0),
            })
            .collect()
    }

    fn on(plan: &Plan) -> Vec<&str> {
        plan.bundles.iter().map(|b| b.node.as_str()).collect()
    }

    fn request(n: usize, strategy: Strategy) -> Request {
        Request {
            bundles: vec![res(1.0, 1.0); n],
            strategy,
        }
    }

    #[test]
    fn each_strategy_places_as_it_says() {
        let nodes = nodes();
        assert_eq!(
            on(&plan(&request(3, Strategy::Pack), &nodes).unwrap()),
            ["n0", "n0", "n1"]
        );
        assert_eq!(
            on(&plan(&request(3, Strategy::Spread), &nodes).unwrap()),
            ["n0", "n1", "n2"]
        );
        assert_eq!(
            on(&plan(&request(4, Strategy::Spread), &nodes).unwrap()),
            ["n0", "n1", "n2", "n0"]
        );
        assert_eq!(
            on(&plan(&request(2, Strategy::StrictPack), &nodes).unwrap()),
            ["n0", "n0"]
        );
        assert_eq!(
            on(&plan(&request(3, Strategy::StrictSpread), &nodes).unwrap()),
            ["n0", "n1", "n2"]
        );
    }

    #[test]
    fn infeasible_requests_say_why() {
        let nodes = nodes();
        let err = plan(&request(3, Strategy::StrictPack), &nodes).unwrap_err();
        assert!(
            err.contains("STRICT_PACK") && err.contains("GPU: 3"),
            "{err}"
        );
        let err = plan(&request(4, Strategy::StrictSpread), &nodes).unwrap_err();
        assert!(err.contains("4 bundles"), "{err}");
        let err = plan(&request(7, Strategy::Pack), &nodes).unwrap_err();
        assert!(err.contains("bundle 6"), "{err}");
        assert!(plan(&request(0, Strategy::Pack), &nodes).is_err());
    }

    #[test]
    fn this_machine_has_cpus() {
        assert!(this_machine().resources["CPU"] >= 1.0);
    }
}
