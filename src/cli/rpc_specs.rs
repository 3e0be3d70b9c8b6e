//! rpc.py-compatible command lines: one line per method, in a small grammar.
//!
//! Each spec is a space-separated list of arguments. `-b/--name=name:str` is an option (short
//! and long form, JSON key, type); `total_size:mb` is a positional; a trailing `?` makes a
//! positional optional. Types: `str`, `int`, `float`, `bool` (an option taking true/false),
//! `flag` (store-true option), `list` (comma-separated strings), `json` (a JSON value), and
//! `mb` (megabytes turned into `num_blocks` with the `block_size` argument, as rpc.py does).

pub const SPECS: &[(&str, &str)] = &[
    // framework
    ("rpc_get_methods", "-c/--current=current:flag -i/--include-aliases=include_aliases:flag"),
    ("spdk_get_version", ""),
    ("framework_get_reactors", ""),
    ("framework_get_subsystems", ""),
    ("framework_get_config", "name:str"),
    ("framework_start_init", ""),
    ("framework_wait_init", ""),
    ("spdk_kill_instance", "sig_name:str"),
    ("log_set_level", "level:str"),
    ("log_get_level", ""),
    ("log_set_print_level", "level:str"),
    ("log_get_print_level", ""),
    ("save_config", ""),
    // bdev
    ("bdev_malloc_create", "-b/--name=name:str -u/--uuid=uuid:str total_size:mb block_size:int"),
    ("bdev_malloc_delete", "name:str"),
    ("bdev_null_create", "-u/--uuid=uuid:str name:str total_size:mb block_size:int"),
    ("bdev_null_delete", "name:str"),
    ("bdev_uring_create", "-u/--uuid=uuid:str filename:str name:str block_size:int?"),
    ("bdev_uring_delete", "name:str"),
    ("bdev_get_bdevs", "-b/--name=name:str -t/--timeout-ms=timeout:int"),
    ("bdev_get_iostat", "-b/--name=name:str -c/--per-channel=per_channel:flag --reset-mode=reset_mode:str --names=names:list"),
    // nvmf (issue: NVMe-oF/TCP) — add lines here
    // iscsi (issue: iSCSI) — add lines here
    // reservation (issue: persistent reservations) — add lines here
    // layout (issue: layout backend) — add lines here
    ("layout_volume_create", "-n/--name=name:str -b/--bdev-name=bdev_name:str -m/--metadata-path=metadata_path:str --metadata-bdev=metadata_bdev:str -g/--guard=guard:str -t/--recall-timeout-ms=recall_timeout_ms:int --block-size=block_size:int --mds-identities=mds_identities:list"),
    ("layout_volume_delete", "name:str"),
    ("layout_volume_list", "-n/--name=name:str"),
    ("layout_volume_get_device", "name:str"),
    ("layout_volume_set_guard", "name:str guard:str"),
    ("client_register", "volume:str client:str pr_key:str -i/--identities=identities:list"),
    ("client_fence", "volume:str client:str"),
    ("client_unfence", "volume:str client:str"),
    ("client_list", "volume:str"),
    ("layout_file_create", "volume:str file:json"),
    ("layout_file_remove", "volume:str file:json"),
    ("layout_file_truncate", "volume:str file:json size:int"),
    ("layout_file_stat", "volume:str file:json"),
    ("layout_file_map", "volume:str file:json -o/--offset=offset:int -l/--length=length:int"),
    ("layout_file_reflink", "volume:str source:json destination:json"),
    ("layout_get", "-m/--min-length=min_length:int volume:str file:json client:str offset:int length:int iomode:str"),
    ("layout_commit", "-v/--volume=volume:str -s/--new-size=new_size:int grant:int ranges:json"),
    ("layout_return", "-v/--volume=volume:str -r/--ranges=ranges:json grant:int"),
    ("layout_recall_subscribe", ""),
];
