//! SLURM's environment, and its host list syntax.

use super::{ClusterEnvironment, env_number, required_number};
use crate::{Error, Result};

/// The environment SLURM's `srun` sets: `SLURM_PROCID`, `SLURM_NTASKS`,
/// `SLURM_LOCALID`, `SLURM_NODEID`, `SLURM_NNODES` and
/// `SLURM_JOB_NODELIST`, whose first host is the main address.
///
/// Detected, as in Lightning, when `SLURM_NTASKS` is set and the job is not
/// an interactive shell (`SLURM_JOB_NAME` of `bash` or `interactive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmEnvironment {
    world_size: usize,
    global_rank: usize,
    local_rank: usize,
    node_rank: usize,
    main_address: String,
    num_nodes: usize,
    main_port: u16,
}

impl SlurmEnvironment {
    const NAME: &'static str = "SLURM";

    /// Whether the process runs as a task of a SLURM job step.
    pub fn detect() -> bool {
        std::env::var_os("SLURM_NTASKS").is_some()
            && !matches!(
                std::env::var("SLURM_JOB_NAME").as_deref(),
                Ok("bash" | "interactive")
            )
    }

    /// Reads the variables, and the node list's first host and number of
    /// hosts (without expanding it).
    pub fn from_env() -> Result<Self> {
        let list = std::env::var("SLURM_JOB_NODELIST")
            .or_else(|_| std::env::var("SLURM_NODELIST"))
            .unwrap_or_else(|_| "127.0.0.1".into());
        let (num_nodes, main_address) = hostlist_summary(&list)?;
        // Lightning derives the port from the job id when MASTER_PORT is unset.
        let port = match env_number(Self::NAME, "MASTER_PORT")? {
            Some(port) => port,
            None => 10000 + env_number(Self::NAME, "SLURM_JOB_ID")?.unwrap_or(0) % 10000,
        };
        let env = SlurmEnvironment {
            world_size: required_number(Self::NAME, "SLURM_NTASKS")?,
            global_rank: required_number(Self::NAME, "SLURM_PROCID")?,
            local_rank: required_number(Self::NAME, "SLURM_LOCALID")?,
            node_rank: required_number(Self::NAME, "SLURM_NODEID")?,
            main_address,
            num_nodes,
            main_port: u16::try_from(port).unwrap_or(29500),
        };
        if let Some(n) = env_number(Self::NAME, "SLURM_NNODES")?
            && n != env.num_nodes
        {
            return Err(Error::ClusterEnvironment {
                environment: Self::NAME.into(),
                message: format!(
                    "SLURM_NNODES={n}, but SLURM_JOB_NODELIST={list:?} names {} node(s)",
                    env.num_nodes
                ),
            });
        }
        Ok(env)
    }
}

impl SlurmEnvironment {
    /// Where rank 0 can be reached for a rendezvous (the first host of the
    /// job; `MASTER_PORT`, or a port derived from the job id), as
    /// Lightning's `main_address` and `main_port`.
    pub fn main_address_and_port(&self) -> (String, u16) {
        (self.main_address.clone(), self.main_port)
    }
}

/// The id `scontrol requeue` takes for the SLURM job this process runs
/// in, as Lightning's `SLURMEnvironment`: `<array job id>_<task id>` for a
/// task of an array job, `SLURM_JOB_ID` otherwise; `None` outside a job
/// (or in an interactive one, `SLURM_JOB_NAME` of `bash` or
/// `interactive`, which cannot be requeued).
pub(crate) fn requeue_job_id() -> Option<String> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    if matches!(
        var("SLURM_JOB_NAME").as_deref(),
        Some("bash" | "interactive")
    ) {
        return None;
    }
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Some(format!("{}_{}", array.trim(), task.trim())),
        _ => var("SLURM_JOB_ID").map(|id| id.trim().to_owned()),
    }
}

impl ClusterEnvironment for SlurmEnvironment {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn global_rank(&self) -> usize {
        self.global_rank
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn node_rank(&self) -> usize {
        self.node_rank
    }
    fn num_nodes(&self) -> Option<usize> {
        Some(self.num_nodes)
    }
}

fn bad(list: &str, why: &str) -> Error {
    Error::ClusterEnvironment {
        environment: "SLURM".into(),
        message: format!("cannot read the host list {list:?}: {why}"),
    }
}

/// The most hosts a host list may name: far more than any cluster has, and
/// few enough to hold their names in memory.
const MAX_HOSTS: u64 = 1_000_000;

/// One part of a host name: text, or a bracket group of ranges.
enum Part<'a> {
    Text(&'a str),
    /// Inclusive ranges `(low, high, width)`, `width` the zero padding.
    Ranges(Vec<(u64, u64, usize)>),
}

/// A host list read into its names and their parts, without expanding it.
struct HostList<'a> {
    list: &'a str,
    names: Vec<Vec<Part<'a>>>,
}

impl<'a> HostList<'a> {
    fn parse(list: &'a str) -> Result<Self> {
        // Split on the commas outside brackets.
        let (mut depth, mut start) = (0usize, 0usize);
        let mut names = Vec::new();
        for (i, c) in list.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| bad(list, "unbalanced `]`"))?
                }
                ',' if depth == 0 => {
                    names.push(&list[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(bad(list, "unbalanced `[`"));
        }
        names.push(&list[start..]);
        let names = names
            .into_iter()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| parse_name(list, name))
            .collect::<Result<Vec<_>>>()?;
        if names.is_empty() {
            return Err(bad(list, "it names no host"));
        }
        let parsed = HostList { list, names };
        parsed.count()?;
        Ok(parsed)
    }

    /// The number of hosts, computed without expanding them; more than
    /// [`MAX_HOSTS`] is an error.
    fn count(&self) -> Result<u64> {
        let too_many = || {
            bad(
                self.list,
                &format!("it names more than {MAX_HOSTS} hosts, more than any cluster has"),
            )
        };
        let mut total = 0u64;
        for name in &self.names {
            let mut hosts = 1u64;
            for part in name {
                if let Part::Ranges(ranges) = part {
                    let group: u64 = ranges.iter().map(|(lo, hi, _)| hi - lo + 1).sum();
                    hosts = hosts.checked_mul(group).ok_or_else(too_many)?;
                }
                if hosts > MAX_HOSTS {
                    return Err(too_many());
                }
            }
            total += hosts;
            if total > MAX_HOSTS {
                return Err(too_many());
            }
        }
        Ok(total)
    }

    /// The first host, without expanding the others.
    fn first(&self) -> String {
        self.names[0]
            .iter()
            .map(|part| match part {
                Part::Text(text) => (*text).to_owned(),
                Part::Ranges(ranges) => {
                    let (lo, _, width) = ranges[0];
                    format!("{lo:0width$}")
                }
            })
            .collect()
    }

    fn expand(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for name in &self.names {
            let mut names = vec![String::new()];
            for part in name {
                names = match part {
                    Part::Text(text) => names.into_iter().map(|n| n + text).collect(),
                    Part::Ranges(ranges) => names
                        .iter()
                        .flat_map(|n| {
                            ranges.iter().flat_map(move |&(lo, hi, width)| {
                                (lo..=hi).map(move |i| format!("{n}{i:0width$}"))
                            })
                        })
                        .collect(),
                };
            }
            hosts.extend(names);
        }
        hosts
    }
}

/// Reads one name with zero or more bracket groups into its parts.
fn parse_name<'a>(list: &str, name: &'a str) -> Result<Vec<Part<'a>>> {
    let mut parts = Vec::new();
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|i| open + i)
            .ok_or_else(|| bad(list, "unbalanced `[`"))?;
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let mut ranges = Vec::new();
        for range in rest[open + 1..close].split(',').map(str::trim) {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| bad(list, &format!("`{s}` is not a number")))
            };
            let (lo, hi) = (parse(low)?, parse(high)?);
            if lo > hi {
                return Err(bad(list, &format!("the range {range} runs backwards")));
            }
            if hi - lo >= MAX_HOSTS {
                return Err(bad(
                    list,
                    &format!(
                        "the range {range} is implausibly large (more than {MAX_HOSTS} hosts)"
                    ),
                ));
            }
            ranges.push((lo, hi, low.len()));
        }
        parts.push(Part::Ranges(ranges));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// The number of hosts of a SLURM host list and its first host, computed
/// without expanding the list: what fabric needs of `SLURM_JOB_NODELIST`.
/// A list naming more than [`MAX_HOSTS`] hosts is an error.
pub(crate) fn hostlist_summary(list: &str) -> Result<(usize, String)> {
    let parsed = HostList::parse(list)?;
    // `count` is at most MAX_HOSTS, which fits any usize of 32 bits or more.
    Ok((parsed.count()? as usize, parsed.first()))
}

/// Expands a SLURM host list such as `node[01-04,07],gpu3` into its hosts
/// (`node01`, `node02`, `node03`, `node04`, `node07`, `gpu3`), keeping
/// zero padding; several bracket groups in one name multiply out. A list
/// naming more than a million hosts is an error, found before anything is
/// expanded.
///
/// ```
/// use fabric::environment::expand_hostlist;
///
/// assert_eq!(expand_hostlist("node[01-03,07]").unwrap(), ["node01", "node02", "node03", "node07"]);
/// assert_eq!(expand_hostlist("a1,b[2-3]").unwrap(), ["a1", "b2", "b3"]);
/// assert!(expand_hostlist("node[3-1]").is_err());
/// assert!(expand_hostlist("n[0-99999][0-99999]").is_err());
/// ```
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    Ok(HostList::parse(list)?.expand())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_huge_host_list_is_a_prompt_clear_error() {
        let start = Instant::now();
        for list in [
            "n[0-99999][0-99999]",
            "n[0-99999][0-99999][0-99999][0-99999][0-99999]",
            "a[0-999999],b[0-999999]",
        ] {
            let err = expand_hostlist(list).unwrap_err().to_string();
            assert!(err.contains("more than 1000000 hosts"), "{err}");
            let err = hostlist_summary(list).unwrap_err().to_string();
            assert!(err.contains("more than 1000000 hosts"), "{err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_count_and_first_host_match_the_expansion() {
        for list in [
            "node[01-04,07],gpu3",
            "a1,b[2-3]",
            "r[1-2]n[08-10]x",
            "n[0-999][0-999]",
            "h",
            "[5-6]",
        ] {
            let hosts = expand_hostlist(list).unwrap();
            let (count, first) = hostlist_summary(list).unwrap();
            assert_eq!(count, hosts.len(), "{list}");
            assert_eq!(first, hosts[0], "{list}");
        }
        assert_eq!(
            expand_hostlist("r[1-2]n[08-10]x").unwrap(),
            ["r1n08x", "r1n09x", "r1n10x", "r2n08x", "r2n09x", "r2n10x"]
        );
    }
}
