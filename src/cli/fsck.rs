//! `palisade fsck --metadata PATH [--bdev FILE] [--repair] [--json]`: offline check of a layout
//! volume's metadata: a `metadata_path` file, or the device or image file behind a `metadata_bdev`
//! (told apart by the header). `palisade fsck --cluster URL --bdev-uuid UUID [--prefix P]`
//! checks a `metadata_cluster` volume's state in etcd instead (read-only; nodes may stay up). Exit code 0 only when the metadata is consistent (after repair, if asked);
//! 1 when problems remain; 2 when the metadata cannot be read at all.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FsckArgs {
    /// The layout volume's metadata: the metadata_path file, or the device or image file backing
    /// the metadata_bdev (the format is detected from its header).
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    pub metadata: Option<PathBuf>,
    /// etcd endpoints (comma-separated) of a cluster: check the layout state of `--bdev-uuid` there.
    #[arg(long, requires = "bdev_uuid")]
    pub cluster: Option<String>,
    /// With --cluster: the data bdev's UUID (the layout state's key).
    #[arg(long)]
    pub bdev_uuid: Option<uuid::Uuid>,
    /// With --cluster: the cluster's key prefix.
    #[arg(long, default_value = "/palisade")]
    pub prefix: String,
    /// The data device (file or block device) to check the extents against.
    #[arg(long)]
    pub bdev: Option<PathBuf>,
    /// Truncate a damaged journal at the damage and rebuild the free space.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: FsckArgs) -> i32 {
    let (what, r) = match (&a.cluster, &a.metadata) {
        (Some(eps), _) => {
            let eps: Vec<String> = eps.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            let uuid = a.bdev_uuid.expect("clap requires it");
            if a.repair {
                eprintln!("palisade fsck: --repair is not available for a cluster's layout state");
                return 2;
            }
            (format!("etcd {}", eps.join(",")), crate::layout::fsck::fsck_etcd(&eps, &a.prefix, &uuid))
        }
        (None, Some(m)) => (m.display().to_string(), crate::layout::fsck::fsck(m, a.bdev.as_deref(), a.repair)),
        (None, None) => unreachable!("clap requires one"),
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade fsck: {what}: {e}");
            return 2;
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("report serializes"));
    } else {
        let s = &r.summary;
        println!("layout volume {} ({} blocks of {} bytes)", s.volume, s.num_blocks, s.block_size);
        println!(
            "  files {}, clients {} ({} fenced), grants {}",
            s.files, s.clients, s.fenced_clients, s.grants
        );
        println!(
            "  blocks: committed {} (shared {}), uncommitted {}, free {}",
            s.committed_blocks, s.shared_blocks, s.uncommitted_blocks, s.free_blocks
        );
        if let Some((g, half)) = s.bdev_header {
            println!("  metadata: bdev layout, header generation {g}, half {half}");
        }
        println!("  journal: {} transactions replayed", s.transactions_replayed);
        if let Some(t) = &s.torn_tail {
            println!("  {t}");
        }
        for p in &r.problems {
            println!("  PROBLEM: {p}");
        }
        if r.repaired {
            println!("  repaired: checkpoint rewritten");
        }
        println!("{}", if r.consistent { "consistent" } else { "INCONSISTENT" });
    }
    if r.consistent {
        0
    } else {
        1
    }
}
