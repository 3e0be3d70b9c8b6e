#!/usr/bin/env python3
"""List every RPC method SPDK's own client (PyPI `spdk`, the `spdk-rpc` command) knows.

Builds rpc.py's real argparse parser from the installed package and prints one line per method:
    method <TAB> module <TAB> first line of its help
The first line is `# spdk <version>`. Run it with the Python of the virtualenv that holds
`spdk-rpc`; spdk/tests/catalogue.rs compares this list with spdk/methods.tsv and with what a
running Palisade reports in rpc_get_methods.
"""
import sys

from spdk import version
from spdk.spdk_rpc import create_parser

parser, subparsers = create_parser()
print(f"# spdk {version.__version__}")
for name in sorted(subparsers.choices):
    p = subparsers.choices[name]
    module = "?"
    func = p.get_default("func")
    if func is not None:
        module = func.__module__.rsplit(".", 1)[-1]
    help_text = ""
    for action in subparsers._choices_actions:
        if action.dest == name:
            help_text = (action.help or "").strip().splitlines()[0] if action.help else ""
    help_text = " ".join(help_text.split()).replace("\t", " ")
    print(f"{name}\t{module}\t{help_text}")
sys.stdout.flush()
