"""tools/mutation.py without mutmut: which functions it mutates (the math and update functions of each
script, found by the '# The equations' section plus its named methods) and how a survivor is matched
to its equivalence reason. The mutation run itself needs mutmut (`pip install -e ".[mutation]"`)."""

from tools import mutation


def test_the_selection_is_every_scripts_math_and_update_functions():
    selection = mutation.select(mutation.SCRIPTS, None)
    chosen = {script: set(functions.values()) for script, functions in selection.items()}
    assert {"td_target", "critic_loss", "actor_loss", "temperature_loss", "update_target", "backup_target_q",
            "SAC.critic_step", "SAC.target_update", "SAC.actor_step", "SAC.temperature_step"} <= chosen["sac_continuous.py"]
    assert {"gaussian_w2_squared", "jko_actor_loss", "q_weight", "POSAC.sample_all",
            "POSAC.actor_step"} <= chosen["posac_jko.py"]
    assert {"gmm_log_prob", "kl_temperature", "boltzmann_weights", "density_matching_loss", "GMMAgent.propose",
            "GMMAgent.actor_step", "SquaredMahalanobis.backward"} <= chosen["gmm_density_matching.py"]
    assert not any("ReplayBuffer" in q or q.startswith("Run.") for names in chosen.values() for q in names)
    only = mutation.select(["posac_jko.py"], ["jko_*", "POSAC.critic_step"])
    assert set(only["posac_jko.py"].values()) == {"jko_actor_loss", "POSAC.critic_step"}


def test_a_survivor_is_explained_only_by_a_matching_reason():
    diff = ["-    return x.sum(-1)", "+    return x.sum(+1)"]
    assert mutation.equivalence_reason("density_matching_loss", diff) == mutation.DIM
    assert mutation.equivalence_reason("td_target", diff) is None  # no reason names td_target
    assert mutation.equivalence_reason("GMMAgent.critic_step", ["+    opt.zero_grad(set_to_none=False)"]) \
        == mutation.ZERO_GRAD
    for pattern, fragment, reason in mutation.EQUIVALENT:
        assert fragment and reason  # an empty fragment would explain every survivor
