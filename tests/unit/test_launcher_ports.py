"""devstack/ports.py: every launcher port alike (issue 27, item 5). The e2e side is in tests/integration."""

from __future__ import annotations

import pytest

from devstack.ports import LAUNCHER_PORTS, PortBusy, assign_ports

DEFAULTS = {p.variable: p.default for p in LAUNCHER_PORTS}


def test_free_defaults_are_kept_and_nothing_is_said() -> None:
    env: dict[str, str] = {}
    assert assign_ports(env, busy=lambda port: False) == []
    assert env == {name: str(port) for name, port in DEFAULTS.items()}


@pytest.mark.parametrize("variable", sorted(DEFAULTS))
def test_a_busy_default_is_replaced_by_a_free_port_and_said(variable: str) -> None:
    env: dict[str, str] = {}
    notes = assign_ports(env, busy=lambda port: port == DEFAULTS[variable])
    chosen = int(env[variable])
    assert chosen != DEFAULTS[variable] and 1024 < chosen <= 65535
    assert notes == [next(f"{variable}: the default {DEFAULTS[variable]} is in use; {p.what} uses {chosen}"
                          for p in LAUNCHER_PORTS if p.variable == variable)]
    assert {k: v for k, v in env.items() if k != variable} == {
        name: str(port) for name, port in DEFAULTS.items() if name != variable}


@pytest.mark.parametrize("variable", sorted(DEFAULTS))
def test_a_busy_port_that_was_asked_for_is_refused_by_its_name(variable: str) -> None:
    env = {variable: "6123"}
    with pytest.raises(PortBusy, match=rf"^{variable}=6123: the port is already in use"):
        assign_ports(env, busy=lambda port: port == 6123)


def test_a_port_that_was_asked_for_and_is_free_is_kept() -> None:
    env = {"FLOWER_PORT": "6123"}
    assign_ports(env, busy=lambda port: False)
    assert env["FLOWER_PORT"] == "6123"


@pytest.mark.parametrize("value", ["http", "0", "70000", "-1"])
def test_a_port_that_is_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(PortBusy, match=rf"^PORT={value} is not a port number"):
        assign_ports({"PORT": value}, busy=lambda port: False)


def test_metrics_turned_off_and_unused_ports_are_left_alone() -> None:
    env = {"WORKER_METRICS_PORT": "0", "WEB_BIND": "127.0.0.1:7000", "PAYOUT_PROVIDER_URL": "http://p.example"}
    assign_ports(env, busy=lambda port: True)  # everything busy: only the ports in use are looked at
    assert env["WORKER_METRICS_PORT"] == "0" and "PORT" not in env and "PROVIDER_SIM_PORT" not in env
    assert int(env["FLOWER_PORT"]) != 5555
