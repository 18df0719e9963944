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
    nodes: Vec<String>,
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

    /// Reads the variables and expands the node list.
    pub fn from_env() -> Result<Self> {
        let list = std::env::var("SLURM_JOB_NODELIST")
            .or_else(|_| std::env::var("SLURM_NODELIST"))
            .unwrap_or_else(|_| "127.0.0.1".into());
        let nodes = expand_hostlist(&list)?;
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
            nodes,
            main_port: u16::try_from(port).unwrap_or(29500),
        };
        if let Some(n) = env_number(Self::NAME, "SLURM_NNODES")?
            && n != env.nodes.len()
        {
            return Err(Error::ClusterEnvironment {
                environment: Self::NAME.into(),
                message: format!(
                    "SLURM_NNODES={n}, but SLURM_JOB_NODELIST={list:?} names {} node(s)",
                    env.nodes.len()
                ),
            });
        }
        Ok(env)
    }
}

impl SlurmEnvironment {
    /// Where rank 0 can be reached for a rendezvous (the first host of the job, `MASTER_PORT` or a port derived from the job id), as
    /// Lightning's `main_address` and `main_port`.
    pub fn main_address_and_port(&self) -> (String, u16) {
        (
            self.nodes
                .first()
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into()),
            self.main_port,
        )
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
        Some(self.nodes.len())
    }
}

fn bad(list: &str, why: &str) -> Error {
    Error::ClusterEnvironment {
        environment: "SLURM".into(),
        message: format!("cannot read the host list {list:?}: {why}"),
    }
}

/// Expands a SLURM host list such as `node[01-04,07],gpu3` into its hosts
/// (`node01`, `node02`, `node03`, `node04`, `node07`, `gpu3`), keeping
/// zero padding; several bracket groups in one name multiply out.
///
/// ```
/// use fabric::environment::expand_hostlist;
///
/// assert_eq!(expand_hostlist("node[01-03,07]").unwrap(), ["node01", "node02", "node03", "node07"]);
/// assert_eq!(expand_hostlist("a1,b[2-3]").unwrap(), ["a1", "b2", "b3"]);
/// assert!(expand_hostlist("node[3-1]").is_err());
/// ```
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    let mut hosts = Vec::new();
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
    for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
        hosts.extend(expand_name(list, name)?);
    }
    if hosts.is_empty() {
        return Err(bad(list, "it names no host"));
    }
    Ok(hosts)
}

/// Expands one name with zero or more bracket groups.
fn expand_name(list: &str, name: &str) -> Result<Vec<String>> {
    let Some(open) = name.find('[') else {
        return Ok(vec![name.to_owned()]);
    };
    let close = name[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| bad(list, "unbalanced `[`"))?;
    let (prefix, ranges, rest) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let tails = expand_name(list, rest)?;
    let mut out = Vec::new();
    for range in ranges.split(',').map(str::trim) {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        let width = low.len();
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(list, &format!("`{s}` is not a number")))
        };
        let (lo, hi) = (parse(low)?, parse(high)?);
        if lo > hi {
            return Err(bad(list, &format!("the range {range} runs backwards")));
        }
        if hi - lo > 100_000 {
            return Err(bad(
                list,
                &format!("the range {range} is implausibly large"),
            ));
        }
        for n in lo..=hi {
            for tail in &tails {
                out.push(format!("{prefix}{n:0width$}{tail}"));
            }
        }
    }
    Ok(out)
}
