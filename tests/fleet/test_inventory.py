"""Inventory loading: precedence, ~/.ssh/config resolution, --limit, and one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ftte_cli.config.inventory import Inventory, load_inventory
from ftte_cli.config.sshconfig import host_matches, load_ssh_config
from ftte_cli.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("home")  # a private HOME: tests/conftest.py


def inv_file(tmp_path: Path, text: str, name: str = "inv.yaml") -> Path:
    path = tmp_path / "inv" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Inventory:
    return load_inventory(inv_file(tmp_path, text))


PRECEDENCE = """
all:
  vars: {ftte_workdir: from_all, ansible_user: all_user, ftte_device_class: all, ftte_data: all}
  hosts:
    solo:
  children:
    outer:
      vars: {ftte_device_class: outer, ftte_data: outer, ansible_user: outer_user}
      children:
        inner:
          vars: {ftte_device_class: inner, ftte_mem_cap_mb: 100}
          hosts:
            a: {ftte_mem_cap_mb: 50}
            b:
    zeta:
      vars: {ftte_data: zeta}
      hosts:
        b:
    alpha:
      vars: {ftte_data: alpha}
      hosts:
        b: {ansible_port: "2200"}
"""


def test_precedence_host_beats_child_beats_parent_beats_all(tmp_path: Path) -> None:
    inv = load(tmp_path, PRECEDENCE)
    a, b, solo = inv.devices["a"], inv.devices["b"], inv.devices["solo"]
    assert (a.mem_cap_mb, a.device_class, a.user, a.workdir) == (50, "inner", "outer_user",
                                                                 "from_all")
    assert b.mem_cap_mb == 100 and b.device_class == "inner"
    # b sits in inner (depth 2), alpha and zeta (depth 1): inner is applied last; between the
    # depth-1 groups name order decides (zeta after alpha), as Ansible does.
    assert b.data == "zeta"
    assert b.port == 2200  # "2200" from a string, as INI inventories give it
    assert b.groups == ("alpha", "outer", "zeta", "inner")
    assert (solo.device_class, solo.user, solo.groups) == ("all", "all_user", ())
    assert list(inv.devices) == ["solo", "a", "b"]  # file order
    assert inv.groups["ungrouped"].hosts == ("solo",)


def test_limit_selects_groups_hosts_and_lists(tmp_path: Path) -> None:
    inv = load(tmp_path, PRECEDENCE)
    names = lambda lim: [d.name for d in inv.select(lim)]  # noqa: E731
    assert names(None) == ["solo", "a", "b"]
    assert names("outer") == ["a", "b"]
    assert names("inner") == ["a", "b"]
    assert names("alpha") == ["b"]
    assert names("solo, alpha,") == ["solo", "b"]
    assert names("ungrouped") == ["solo"]
    assert names("all") == ["solo", "a", "b"]
    with pytest.raises(ConfigError, match=r"inv\.yaml: --limit: no host or group named 'nobody'"):
        inv.select("a,nobody")


def test_defaults_and_relative_paths_resolve_against_the_inventory_folder(tmp_path: Path) -> None:
    inv = load(tmp_path, """
    all:
      hosts:
        pi:
          ansible_host: 10.0.0.2
          ansible_ssh_private_key_file: keys/id_pi
          ftte_known_hosts: kh
        me:
          ansible_connection: local
    """)
    pi, me = inv.devices["pi"], inv.devices["me"]
    assert pi.key_file == tmp_path / "inv" / "keys" / "id_pi"
    assert pi.known_hosts == tmp_path / "inv" / "kh"
    assert (pi.host, pi.port, pi.user, pi.python, pi.workdir) == ("10.0.0.2", 22, None,
                                                                  "python3", "~/.ftte")
    assert me.connection == "local" and me.host == "me"


def test_top_level_groups_are_children_of_all(tmp_path: Path) -> None:
    inv = load(tmp_path, """
    pis:
      hosts:
        p1:
    phones:
      hosts:
        ph1: {ansible_port: 8022}
    """)
    assert inv.groups["all"].children == ("ungrouped", "pis", "phones")
    assert [d.name for d in inv.select("phones")] == ["ph1"]


SSH_CONFIG = """
# first obtained value wins, so specific blocks come first; an Include placed after a Host line
# would belong to that block, so it goes at the top
Include conf.d/*.conf

Host jetson-* !jetson-old
    HostName %h.lab.example
    User nvidia
    IdentityFile ~/.ssh/id_missing
    IdentityFile ~/.ssh/id_jetson

Host pi?
    Port 2222
    ProxyJump gate

Match exec "true"
    User never

Host *
    User fallback
    Port 2022
"""


def write_ssh_config(home: Path) -> None:
    ssh = home / ".ssh"
    (ssh / "config").write_text(SSH_CONFIG)
    (ssh / "conf.d").mkdir()
    (ssh / "conf.d" / "10-gate.conf").write_text(
        "Host gate\n  HostName 192.0.2.1\n  User jumper\n  Port 2200\n"
    )
    (ssh / "conf.d" / "20-pi.conf").write_text("Host pi1\n  HostName 10.1.1.1\n  User late\n")
    (ssh / "id_jetson").write_text("not read here")


def test_ssh_config_patterns_include_and_first_value_wins(home: Path) -> None:
    write_ssh_config(home)
    cfg = load_ssh_config()
    j = cfg.lookup("jetson-2")
    assert (j.hostname, j.user, j.port) == ("jetson-2.lab.example", "nvidia", 2022)
    assert j.identity_files == (home / ".ssh/id_missing", home / ".ssh/id_jetson")
    old = cfg.lookup("jetson-old")  # negated: only Host * applies
    assert (old.hostname, old.user, old.port) == (None, "fallback", 2022)
    pi = cfg.lookup("pi1")  # Port from "pi?", HostName from the included file, User from it too
    assert (pi.hostname, pi.port, pi.user, pi.proxy_jump) == ("10.1.1.1", 2222, "late", "gate")
    assert cfg.lookup("pi10").port == 2022  # ? is exactly one character
    assert cfg.lookup("gate").user == "jumper"  # the Match block is never applied


def test_inventory_vars_beat_ssh_config(home: Path, tmp_path: Path) -> None:
    write_ssh_config(home)
    inv = load(tmp_path, """
    all:
      hosts:
        jetson-2:
        jetson-3: {ansible_user: root, ansible_port: 22, ansible_ssh_private_key_file: /k}
        pi1:
        lab-pi: {ansible_host: pi1}
        raw: {ansible_host: 192.0.2.9}
    """)
    j2, j3, pi1, lab, raw = (inv.devices[n] for n in ("jetson-2", "jetson-3", "pi1", "lab-pi",
                                                      "raw"))
    assert (j2.host, j2.user, j2.port) == ("jetson-2.lab.example", "nvidia", 2022)
    assert j2.key_file == home / ".ssh/id_jetson"  # the first IdentityFile that exists
    assert (j3.host, j3.user, j3.port, j3.key_file) == ("jetson-3.lab.example", "root", 22,
                                                        Path("/k"))
    # ProxyJump "gate" is itself an ssh alias: resolved to user@HostName:Port
    assert pi1.proxy_jump == "jumper@192.0.2.1:2200"
    assert (lab.host, lab.port) == ("10.1.1.1", 2222)  # ansible_host is what ssh config sees
    assert (raw.host, raw.user, raw.port) == ("192.0.2.9", "fallback", 2022)


def test_host_patterns() -> None:
    assert host_matches("pi4", ("pi*",))
    assert not host_matches("pi4", ("pi*", "!pi4"))
    assert not host_matches("x", ("!y",))  # only negations never match
    assert host_matches("PI4.LAB", ("pi?.lab",))  # case-insensitive, dot literal
    assert not host_matches("pi4xlab", ("pi?.lab",))
    assert host_matches("b", ("a,b",))


def test_proxy_jump_via_inventory_host_and_two_hops_refused(tmp_path: Path) -> None:
    inv = load(tmp_path, """
    all:
      hosts:
        bastion: {ansible_host: 203.0.113.5, ansible_user: ops, ansible_port: 2201}
        inside: {ansible_host: 10.0.0.9, ftte_proxy_jump: bastion}
    """)
    assert inv.devices["inside"].proxy_jump == "ops@203.0.113.5:2201"
    with pytest.raises(ConfigError, match=r"host deep: ftte_proxy_jump: .*one jump host"):
        load(tmp_path, """
        all:
          hosts:
            deep: {ftte_proxy_jump: "a,b"}
        """)


def test_lab_example_loads() -> None:
    inv = load_inventory(REPO / "inventory" / "lab.yaml")
    assert {"pis", "jetsons", "phones"} <= set(inv.groups)
    phones = inv.select("phones")
    assert phones and all(d.port == 8022 and d.user.startswith("u0_a") for d in phones)  # type: ignore[union-attr]
    assert all(d.device_class for d in inv.devices.values())
    assert inv.devices["localhost"].connection == "local"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("all:\n  hosts:\n    a: {x: [1\n", r"inv\.yaml: invalid YAML \(line \d+, column \d+\)"),
        ("all:\n  hosts:\n    a: {ansible_connection: telnet}\n",
         r"inv\.yaml: host a: ansible_connection: unknown connection 'telnet'"),
        ("all:\n  children:\n    pis:\n      children:\n        pi_zeroes:\n"
         "    pi_zeros:\n      hosts: {z: }\n",
         r"inv\.yaml: group pis: children: pi_zeroes: group is not defined anywhere"),
        ("all:\n  children:\n    a:\n      hosts: {h: }\n      children:\n        b:\n"
         "          children:\n            a:\n",
         r"inv\.yaml: group a: children: cycle a -> b -> a"),
        ("all:\n  hosts:\n    a: {ansible_port: twenty}\n",
         r"inv\.yaml: host a: ansible_port: expected an integer, got 'twenty'"),
        ("all:\n  hosts:\n    a: {ansible_port: 70000}\n",
         r"inv\.yaml: host a: ansible_port: 70000 is out of range"),
        ("all:\n  children:\n    g:\n      vars: {ftte_mem_cap_mb: true}\n      hosts: {a: }\n",
         r"inv\.yaml: group g: vars: ftte_mem_cap_mb: expected an integer, got True"),
        ("all:\n  hosts:\n    a: {ftte_memcap: 3}\n",
         r"inv\.yaml: host a: ftte_memcap: unknown ftte key"),
        ("all:\n  hosts:\n    a: {ansible_prot: 22}\n",
         r"inv\.yaml: host a: ansible_prot: not supported by ftte"),
        ("all:\n  hosts:\n    a: {ansible_password: hunter2}\n",
         r"inv\.yaml: host a: ansible_password: plain-text passwords are refused; .*ssh-agent.*"
         r"ftte_password_env"),
        ("all:\n  vars: {ansible_ssh_pass: x}\n  hosts: {a: }\n",
         r"inv\.yaml: group all: vars: ansible_ssh_pass: plain-text passwords are refused"),
        ("all:\n  hosts:\n    a: {ansible_become_pass: x}\n", r"ansible_become_pass: plain-text"),
        ("all:\n  hosts:\n    a: {ftte_password_env: 'not a name'}\n",
         r"host a: ftte_password_env: expected an environment variable NAME"),
        ("all:\n  hosts:\n    a: {ansible_user: '{{ lookup(\"env\", \"U\") }}'}\n",
         r"host a: ansible_user: Jinja templates are not evaluated"),
        ("all:\n  hosts:\n    - a\n    - b\n",
         r"group all: hosts: expected a mapping of host names"),
        ("all:\n  children:\n    g: [a]\n",
         r"group g: expected a mapping with hosts/vars/children"),
        ("all:\n  hostz: {a: }\n", r"group all: hostz: unknown key"),
        ("all:\n  hosts:\n    a: {ansible_host: 5}\n",
         r"host a: ansible_host: expected a non-empty string, got 5"),
        ("", r"inv\.yaml: empty inventory"),
        ("all:\n  children:\n    g: {}\n", r"inv\.yaml: no hosts defined"),
    ],
)
def test_errors_are_one_line_and_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_inventory(inv_file(tmp_path, text))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "inv" / "inv.yaml"))
    assert info.value.exit_code == ExitCode.USAGE


def test_harmless_ansible_keys_are_accepted_and_kept(tmp_path: Path) -> None:
    inv = load(tmp_path, """
    all:
      vars: {ansible_become: true, ansible_ssh_common_args: "-o Foo=bar", site: lab1}
      hosts:
        a: {ansible_ssh_host: 10.0.0.3, ansible_ssh_user: pi}
    """)
    a = inv.devices["a"]
    assert (a.host, a.user) == ("10.0.0.3", "pi")  # old aliases understood
    assert inv.hostvars["a"]["site"] == "lab1" and inv.hostvars["a"]["ansible_become"] is True


def test_missing_file_and_bad_ssh_config_name_the_file(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: file not found"):
        load_inventory(tmp_path / "nowhere.yaml")
    (home / ".ssh" / "config").write_text("Host x\n  Port\n")
    with pytest.raises(ConfigError, match=r"\.ssh/config:2: .*Port"):
        load(tmp_path, "all:\n  hosts: {x: }\n")
    (home / ".ssh" / "config").write_text("Host x\n  Port abc\n")
    with pytest.raises(ConfigError, match=r"\.ssh/config: Host x: Port: bad port 'abc'"):
        load(tmp_path, "all:\n  hosts: {x: }\n")


def test_include_inside_a_host_block_is_conditional(home: Path) -> None:
    ssh = home / ".ssh"
    (ssh / "config").write_text("Host special\n  Include special.conf\nHost *\n  Port 1\n")
    (ssh / "special.conf").write_text("User inc_user\nHost other\n  Port 9\n")
    cfg = load_ssh_config()
    special = cfg.lookup("special")
    assert (special.user, special.port) == ("inc_user", 1)
    other = cfg.lookup("other")  # the included file sits in a block `other` does not match
    assert (other.user, other.port) == (None, 1)


def test_cli_overrides_beat_every_inventory_level(tmp_path: Path) -> None:
    path = inv_file(tmp_path, PRECEDENCE)
    inv = load_inventory(path, overrides={"ansible_user": "cli", "ftte_mem_cap_mb": 7})
    assert {(d.user, d.mem_cap_mb) for d in inv.devices.values()} == {("cli", 7)}
    with pytest.raises(ConfigError, match=r"^command line: ansible_port: expected an integer"):
        load_inventory(path, overrides={"ansible_port": "x"})
