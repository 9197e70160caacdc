"""benchmark/diagnostics/time_parts.py: the timers see every part of a real training loop and leave the
script's classes as they were; the GMM actor update's parts are all timed."""

import gymnasium as gym

import gmm_density_matching as gmm
import sac_continuous as sac
from benchmark.diagnostics.time_parts import (
    BFLOAT16_PASS,
    Args,
    time_gmm_actor_parts,
    time_training_loop,
)


def test_training_loop_parts_are_timed_and_the_timers_removed():
    originals = (sac.SAC.critic_step, sac.SAC.actor_step, sac.ReplayBuffer.sample, sac.Actor.act,
                 gym.vector.SyncVectorEnv.step)
    args = Args(script="sac_continuous", env_id="Pendulum-v1", total_timesteps=150, learning_starts=100)
    result, timers = time_training_loop(args, sac)
    assert result["global_step"] == 150
    updates = 150 - 100
    assert timers.calls["critic step"] == updates and timers.calls["actor step"] == updates
    assert timers.calls["target update"] == updates and timers.calls["temperature step"] == updates
    assert timers.calls["replay add"] == 150 and timers.calls["env step"] == 150
    assert timers.calls["actor act"] >= updates  # acting after the random steps (and the final evaluation)
    assert all(seconds > 0 for seconds in timers.seconds.values())
    assert (sac.SAC.critic_step, sac.SAC.actor_step, sac.ReplayBuffer.sample, sac.Actor.act,
            gym.vector.SyncVectorEnv.step) == originals
    assert timers.table().count("\n") == 1 + len(timers.seconds)


def test_gmm_actor_parts_cover_the_update():
    parts = time_gmm_actor_parts(Args(script="gmm_density_matching", env_id="Pendulum-v1", part_updates=2), gmm)
    assert list(parts) == ["critic step", "target update", "distribution params", "proposals", "M-sample critic pass", BFLOAT16_PASS,
                           "KL temperature", "Boltzmann weights", "log pi and loss", "backward and Adam"]
    assert all(ms > 0 for ms in parts.values())
