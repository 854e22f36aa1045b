"""The typed trial records: the p rule, Optuna params, configs, member ids."""

from __future__ import annotations

import pickle

import pytest

from mislas.config import paper_config
from study.records import Stage2Setting, TrialMember, TrialSpec

EXP = Stage2Setting(eps_1=0.4, eps_k=0.1, form="exp", p=2.0, dw_ratio=0.05, shift_bn=True, las_target="paper")


def test_p_belongs_to_the_exp_form_only() -> None:
    assert Stage2Setting(0.3, 0.0, "linear", 2.0, 0.5, False, "reference").p is None
    assert EXP.p == 2.0 and "p" in EXP.params()
    assert "p" not in Stage2Setting(0.3, 0.0, "concave", None, 0.5, False, "paper").params()


def test_optuna_params_round_trip_and_apply_to_a_config() -> None:
    assert Stage2Setting.from_params(EXP.params()) == EXP
    fixed_extra = {**EXP.params(), "unrelated": 1}
    assert Stage2Setting.from_params(fixed_extra) == EXP
    cfg = EXP.apply(paper_config("places_lt"))
    s2 = cfg.stage2
    assert (s2.eps_1, s2.eps_k, s2.form, s2.p, s2.dw_ratio, s2.shift_bn, s2.las_target) == (
        0.4, 0.1, "exp", 2.0, 0.05, True, "paper")
    assert Stage2Setting.from_config(cfg) == EXP
    assert EXP.same(Stage2Setting.from_params({**EXP.params(), "eps_1": 0.4 + 1e-15}))
    assert not EXP.same(Stage2Setting.from_params({**EXP.params(), "eps_1": 0.41}))


def test_trial_spec_members_ids_and_configs() -> None:
    single = TrialSpec(dataset="places_lt", method="mislas", mixup=True, seed=3, members=(TrialMember(EXP, True, 0),))
    assert single.member_ids("abc") == ["abc"] and not single.grouped and single.is_paper_setting
    group = TrialSpec(dataset="places_lt", method="mislas", mixup=True, seed=3,
                      members=(TrialMember(EXP), TrialMember(Stage2Setting.from_params({**EXP.params(), "eps_1": 0.2}))))
    assert group.member_ids("abc") == ["abc-g0", "abc-g1"]
    base = paper_config("places_lt")
    cfg = group.run_config(base, 1)
    assert (cfg.seed, cfg.stage1.mixup, cfg.stage2.method, cfg.stage2.eps_1) == (3, True, "mislas", 0.2)
    baseline = TrialSpec(dataset="places_lt", method="crt", mixup=False, seed=0)
    cfg = baseline.run_config(base, 0)
    assert (cfg.stage1.mixup, cfg.stage2.method, cfg.stage2.eps_1) == (False, "crt", base.stage2.eps_1)
    assert pickle.loads(pickle.dumps(group)) == group  # Tune pickles trial configs


def test_a_mislas_trial_needs_settings_and_a_baseline_none() -> None:
    with pytest.raises(ValueError, match="MiSLAS members carry a setting"):
        TrialSpec(dataset="places_lt", method="mislas", mixup=True, seed=0)
    with pytest.raises(ValueError, match="MiSLAS members carry a setting"):
        TrialSpec(dataset="places_lt", method="ce", mixup=True, seed=0, members=(TrialMember(EXP),))
