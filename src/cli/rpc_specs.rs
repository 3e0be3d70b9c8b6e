//! rpc.py-compatible command lines: one line per method, in a small grammar.
//!
//! Each spec is a space-separated list of arguments. `-b/--name=name:str` is an option (short
//! and long form, JSON key, type); `total_size:mb` is a positional; a trailing `?` makes a
//! positional optional. Types: `str`, `int`, `float`, `bool` (an option taking true/false),
//! `flag` (store-true option), `list` (comma-separated strings), `json` (a JSON value), and
//! `mb` (megabytes turned into `num_blocks` with the `block_size` argument, as rpc.py does),
//! `noflag` (store-false option, argparse's --no-X). A dotted key (`listen_address.traddr`) puts
//! the value in a nested object, as rpc.py's `group_as` does.

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
    ("nvmf_create_transport", "-t/--trtype=trtype:str -g/--tgt-name=tgt_name:str -q/--max-queue-depth=max_queue_depth:int -m/--max-io-qpairs-per-ctrlr=max_io_qpairs_per_ctrlr:int -c/--in-capsule-data-size=in_capsule_data_size:int -i/--max-io-size=max_io_size:int -u/--io-unit-size=io_unit_size:int -a/--max-aq-depth=max_aq_depth:int -n/--num-shared-buffers=num_shared_buffers:int -b/--buf-cache-size=buf_cache_size:int -z/--zcopy=zcopy:flag -o/--c2h-success=c2h_success:bool -f/--dif-insert-or-strip=dif_insert_or_strip:flag -y/--sock-priority=sock_priority:int -x/--abort-timeout-sec=abort_timeout_sec:int"),
    ("nvmf_get_transports", "--trtype=trtype:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_create_subsystem", "nqn:str -t/--tgt-name=tgt_name:str -s/--serial-number=serial_number:str -d/--model-number=model_number:str -a/--allow-any-host=allow_any_host:flag -m/--max-namespaces=max_namespaces:int -r/--ana-reporting=ana_reporting:flag -i/--min-cntlid=min_cntlid:int -I/--max-cntlid=max_cntlid:int"),
    ("nvmf_delete_subsystem", "nqn:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_add_listener", "nqn:str -t/--trtype=listen_address.trtype:str -a/--traddr=listen_address.traddr:str -f/--adrfam=listen_address.adrfam:str -s/--trsvcid=listen_address.trsvcid:str -p/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_remove_listener", "nqn:str -t/--trtype=listen_address.trtype:str -a/--traddr=listen_address.traddr:str -f/--adrfam=listen_address.adrfam:str -s/--trsvcid=listen_address.trsvcid:str -p/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_add_ns", "nqn:str namespace.bdev_name:str -t/--tgt-name=tgt_name:str -n/--nsid=namespace.nsid:int -g/--nguid=namespace.nguid:str -e/--eui64=namespace.eui64:str -u/--uuid=namespace.uuid:str"),
    ("nvmf_subsystem_remove_ns", "nqn:str nsid:int -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_add_host", "nqn:str host:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_remove_host", "nqn:str host:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_allow_any_host", "nqn:str --allow-any-host=allow_any_host:flag --no-allow-any-host=allow_any_host:noflag -t/--tgt-name=tgt_name:str"),
    ("nvmf_get_subsystems", "nqn:str? -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_get_controllers", "nqn:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_get_qpairs", "nqn:str -t/--tgt-name=tgt_name:str"),
    ("nvmf_subsystem_get_listeners", "nqn:str -t/--tgt-name=tgt_name:str"),
    // iscsi (issue: iSCSI) — add lines here
    // rpc.py takes portals / luns / pg_ig_maps as space-separated "a:b" words; here they are JSON
    // (e.g. '[{"host":"127.0.0.1","port":"3260"}]'), or use --json for the whole params.
    ("iscsi_set_options", "-f/--auth-file=auth_file:str -b/--node-base=node_base:str -o/--nop-timeout=nop_timeout:int -n/--nop-in-interval=nop_in_interval:int -d/--disable-chap=disable_chap:flag -r/--require-chap=require_chap:flag -m/--mutual-chap=mutual_chap:flag -g/--chap-group=chap_group:int -a/--max-sessions=max_sessions:int -q/--max-queue-depth=max_queue_depth:int -c/--max-connections-per-session=max_connections_per_session:int -w/--default-time2wait=default_time2wait:int -v/--default-time2retain=default_time2retain:int -s/--first-burst-length=first_burst_length:int -i/--immediate-data=immediate_data:flag -l/--error-recovery-level=error_recovery_level:int -p/--allow-duplicated-isid=allow_duplicated_isid:flag -x/--max-large-datain-per-connection=max_large_datain_per_connection:int -k/--max-r2t-per-connection=max_r2t_per_connection:int -u/--pdu-pool-size=pdu_pool_size:int -j/--immediate-data-pool-size=immediate_data_pool_size:int -z/--data-out-pool-size=data_out_pool_size:int"),
    ("iscsi_get_options", ""),
    ("iscsi_set_discovery_auth", "-d/--disable-chap=disable_chap:flag -r/--require-chap=require_chap:flag -m/--mutual-chap=mutual_chap:flag -g/--chap-group=chap_group:int"),
    ("iscsi_create_auth_group", "tag:int -c/--secrets=secrets:json"),
    ("iscsi_delete_auth_group", "tag:int"),
    ("iscsi_get_auth_groups", ""),
    ("iscsi_create_portal_group", "tag:int portals:json -p/--private=private:flag -w/--wait=wait:flag"),
    ("iscsi_start_portal_group", "tag:int"),
    ("iscsi_delete_portal_group", "tag:int"),
    ("iscsi_get_portal_groups", ""),
    ("iscsi_create_initiator_group", "tag:int initiators:list netmasks:list"),
    ("iscsi_delete_initiator_group", "tag:int"),
    ("iscsi_get_initiator_groups", ""),
    ("iscsi_create_target_node", "name:str alias_name:str luns:json pg_ig_maps:json queue_depth:int -g/--chap-group=chap_group:int -d/--disable-chap=disable_chap:flag -r/--require-chap=require_chap:flag -m/--mutual-chap=mutual_chap:flag -H/--header-digest=header_digest:flag -D/--data-digest=data_digest:flag"),
    ("iscsi_target_node_add_lun", "name:str bdev_name:str -i/--lun-id=lun_id:int"),
    ("iscsi_delete_target_node", "name:str"),
    ("iscsi_get_target_nodes", ""),
    ("iscsi_get_connections", ""),
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
