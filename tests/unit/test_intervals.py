"""CARP's timer arithmetic (sidecar.core.intervals), which the machine runs on and check-config
prints: ucarp's figures (docs/protocol.md §5) and VRRPv3's dead timer at advbase 0."""

from __future__ import annotations

import pytest

from sidecar.core.intervals import (
    advert_interval_us,
    handover_delay_us,
    master_down_interval_us,
)
from sidecar.core.machine import Machine, Params


@pytest.mark.parametrize(("advbase", "advskew", "advert"), [
    (1, 0, 1_000_000), (1, 100, 1_390_625), (0, 1, 3_906), (0, 2, 7_812), (255, 255, 255_996_093),
])
def test_advert_interval_is_advbase_plus_skew_over_256(advbase: int, advskew: int,
                                                       advert: int) -> None:
    assert advert_interval_us(advbase, advskew) == advert


def test_master_down_follows_ucarp_or_the_vrrp3_dead_timer() -> None:
    assert master_down_interval_us(1, 20, 3, False) == 3_078_125  # 1 x 3 + 20/256
    assert master_down_interval_us(0, 2, 3, True) == 3 * 7_812 + 7_812  # ours, none heard yet
    assert master_down_interval_us(0, 2, 3, True, master_interval_us=3_906) == 3 * 3_906 + 7_812
    assert handover_delay_us(100) == 48_828 and handover_delay_us(255) <= 125_000


@pytest.mark.parametrize(("advbase", "advskew"),  # (0, 0) is no interval: refused
                         [(0, 1), (0, 2), (0, 254), (1, 0), (1, 100), (3, 0), (3, 254)])
def test_the_machine_uses_the_same_figures(advbase: int, advskew: int) -> None:
    vrrp3 = advbase == 0
    m = Machine(Params(advbase=advbase, advskew=advskew, deadratio=4, vrrp3_dead_timer=vrrp3),
                rng=lambda: 0)
    assert m.advert_interval_us == advert_interval_us(advbase, advskew)
    assert m.master_down_interval_us == master_down_interval_us(advbase, advskew, 4, vrrp3)
