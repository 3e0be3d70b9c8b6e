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
    ("reservation_get", "bdev_name:str"),
    ("reservation_clear", "bdev_name:str"),
    // layout (issue: layout backend) — add lines here
];
