"""Alert rules on synthetic metrics streams: each fires on a stream built to trigger it, once, and stays silent
on a healthy stream (issue 20)."""

import json

import pytest

from rl.alerts import ALERTS_FILE, DEFAULT_RULES, AlertCallback, AlertEngine, resolve_rules


def run(stream: list[dict], overrides=None) -> list:
    engine = AlertEngine(overrides)
    return [alert for record in stream for alert in engine.observe(record)]


def healthy(steps: int = 60) -> list[dict]:
    """Reward rising, monitor and held-out rewards rising too, diversity and entropy flat, KL smooth."""
    out = []
    for s in range(1, steps + 1):
        record = {"step": s, "reward": 0.5 + 0.005 * s, "monitor/clip/mean": 0.30 + 0.0005 * s,
                  "diversity/codes": 0.8 + 0.01 * (s % 3), "diversity/embedding": 0.2,
                  "entropy/visual_sampler": 4.0 - 0.001 * s, "kl": 0.02 + 0.0002 * s}
        if s % 10 == 0:
            record["heldout/color_region/mean"] = 0.7 + 0.001 * s
        out.append(record)
    return out


def test_a_healthy_stream_fires_nothing():
    assert run(healthy()) == []


def test_reward_divergence_fires_when_the_trained_reward_rises_and_a_monitor_reward_falls():
    stream = healthy()
    for r in stream:
        r["monitor/clip/mean"] = 0.30 - 0.001 * r["step"]  # falls 0.03 over 30 steps: ~10%
    alerts = run(stream)
    assert {a.rule for a in alerts} == {"reward_divergence"}
    first = alerts[0]
    assert first.metric == "monitor/clip/mean" and len([a for a in alerts if a.metric == first.metric]) == 1
    assert "reward rose" in first.message and "monitor/clip/mean fell" in first.message
    assert first.values["watched_change"] < -DEFAULT_RULES["reward_divergence"]["drop"]


def test_reward_divergence_watches_held_out_rewards_recorded_every_monitor_steps():
    stream = healthy()
    for r in stream:
        if "heldout/color_region/mean" in r:
            r["heldout/color_region/mean"] = 0.78 - 0.002 * r["step"]  # 0.76 at 10 -> 0.66 at 60
    alerts = run(stream)
    assert [a.metric for a in alerts] == ["heldout/color_region/mean"]


def test_reward_divergence_is_silent_when_the_trained_reward_does_not_rise():
    stream = healthy()
    for r in stream:
        r["reward"] = 0.5
        r["monitor/clip/mean"] = 0.30 - 0.001 * r["step"]
    assert run(stream) == []


def test_diversity_floor_fires_once_when_codes_diversity_falls_below_the_floor_and_rearms():
    stream = healthy(30)
    for r in stream[10:20]:
        r["diversity/codes"] = 0.01
    for r in stream[25:]:
        r["diversity/codes"] = 0.02
    alerts = [a for a in run(stream, {"diversity_drop": False}) if a.rule == "diversity_floor"]
    assert [(a.step, a.metric) for a in alerts] == [(11, "diversity/codes"), (26, "diversity/codes")]


def test_diversity_drop_fires_when_diversity_halves_from_its_start():
    stream = healthy(40)
    for r in stream[20:]:
        r["diversity/embedding"] = 0.05  # from 0.2: -75%
    alerts = run(stream)
    assert [(a.rule, a.metric) for a in alerts] == [("diversity_drop", "diversity/embedding")]
    assert alerts[0].step > 20


def test_entropy_collapse_fires_when_sampler_entropy_falls_by_more_than_half():
    stream = healthy(40)
    for r in stream:
        r["entropy/visual_sampler"] = 4.0 if r["step"] <= 20 else 0.5
    alerts = run(stream)
    assert [a.rule for a in alerts] == ["entropy_collapse"]


def test_kl_spike_fires_on_a_jump_and_not_on_steady_growth():
    stream = healthy(30)
    stream[24]["kl"] = 0.5  # about 20x the median
    alerts = run(stream)
    assert [(a.rule, a.step) for a in alerts] == [("kl_spike", 25)]
    assert alerts[0].values["value"] == 0.5


def test_recipe_overrides_change_parameters_switch_rules_off_and_unknown_names_are_refused():
    rules = resolve_rules({"kl_spike": {"factor": 2}, "diversity_floor": False, "entropy_collapse": True})
    assert rules["kl_spike"]["factor"] == 2.0 and "diversity_floor" not in rules
    assert resolve_rules("{kl_spike: {min_kl: 0.5}}")["kl_spike"]["min_kl"] == 0.5
    with pytest.raises(ValueError, match="unknown rule 'kl_spikes'"):
        resolve_rules({"kl_spikes": {}})
    with pytest.raises(ValueError, match="no parameter"):
        resolve_rules({"kl_spike": {"treshold": 1}})
    stream = healthy(30)
    stream[24]["kl"] = 0.5
    assert run(stream, {"kl_spike": False}) == []


class _State:
    def __init__(self, step):
        self.global_step, self.is_world_process_zero = step, True


class _Control:
    should_save = should_training_stop = False


def test_alert_callback_prints_one_line_appends_alerts_jsonl_and_asks_to_save_and_stop(tmp_path, capsys):
    callback = AlertCallback(tmp_path, {"diversity_floor": {"codes_floor": 0.5}}, stop_on_alert=True)
    control = _Control()
    callback.on_log(None, _State(1), control, logs={"diversity/codes": 0.9})
    assert not control.should_training_stop
    callback.on_log(None, _State(2), control, logs={"diversity/codes": 0.1})
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["simplear-rl grpo: alert: diversity_floor at step 2: diversity/codes 0.1 < floor 0.5"]
    (record,) = [json.loads(line) for line in (tmp_path / ALERTS_FILE).read_text().splitlines()]
    assert record["rule"] == "diversity_floor" and record["step"] == 2 and record["values"]["value"] == 0.1
    assert control.should_save and control.should_training_stop and callback.stopped_by.step == 2


def test_under_normalize_then_sum_divergence_watches_the_raw_weighted_sum_not_the_normalised_reward():
    """The normalised `reward` has mean ~0 at every step; a hacked reward shows in `reward_weighted_sum`."""
    from rl.alerts import reward_divergence

    records = [{"step": s, "reward": 0.0, "reward_weighted_sum": 1.0 + 0.1 * s, "monitor/clip/mean": 1.0 - 0.05 * s}
               for s in range(1, 11)]
    alerts = reward_divergence(records, 10, {"window": 10, "rise": 0.02, "drop": 0.05})
    assert len(alerts) == 1 and alerts[0].message.startswith("reward_weighted_sum rose")
