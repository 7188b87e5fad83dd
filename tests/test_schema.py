"""Every train key is declared once (rlcli.schema): the composed config holds exactly the declared
keys, validation checks each of them against its declaration, and the algorithms read them in
their declared types."""

import copy

import pytest
from omegaconf import OmegaConf

from conftest import compose

BAD = "not-a-value!"  # a value no rule of a number, flag, choice or count accepts


def _compositions():
    """Each algorithm alone, and with every option of the env, estimator, network and logger groups: the
    i-th composition of an algorithm takes the i-th option of each group (a shorter group's
    options repeat), so every (algorithm, option) pair is composed once with the fewest
    compositions (Hydra's compose takes about 0.15 s)."""
    from rlcli import schema

    groups = [[f"{group}={name}" for name in schema.choices(group)]
              for group in ("env", "estimator", "network", "logger")]
    rows = max(len(options) for options in groups)
    together = [[options[i % len(options)] for options in groups] for i in range(rows)]
    return [[f"algo={a}", *extra] for a in schema.choices("algo") for extra in [[], *together]]


@pytest.mark.extended
def test_every_composed_key_is_declared_and_every_declared_key_composed():
    """For each algorithm with every option of the other groups (`_compositions`), the
    composed config's leaf keys are the declared keys of that composition (rlcli.schema.keys_of),
    except a value that an algorithm or a tuned file gives a key of an option not chosen
    (reinforce's estimator.baseline=value, or the tuned lambda of ppo on CartPole, with
    estimator=td, which does not read them)."""
    from rlcli import algos, schema
    from rlcli.paths import config_dir
    from rlcli.rules import flat_keys

    for overrides in _compositions():
        cfg = compose(overrides)
        declared = set(schema.keys_of(cfg))
        composed = set(flat_keys(cfg))
        given = set(getattr(algos.module(cfg.algo.name), "SETS", {}))
        tuned = config_dir() / "tuned" / f"{cfg.algo.name}_{cfg.env.id}.yaml"
        if tuned.is_file():
            given |= set(flat_keys(OmegaConf.load(tuned)))
        assert composed - declared <= given, (overrides, composed - declared)
        assert declared <= composed, (overrides, declared - composed)


def test_declared_defaults_are_what_a_plain_composition_holds():
    """Where no tuned file and no algorithm default applies, each key holds its declared default
    (env=MountainCar-v0 has no tuned file for any algorithm)."""
    from rlcli import algos, envs, schema
    from rlcli.rules import get

    for name in algos.names():
        cfg = compose([f"algo={name}", "env=MountainCar-v0"])
        sets = getattr(algos.module(name), "SETS", {})
        for key, declared in {**schema.keys_of(cfg), **envs.CHOICES["MountainCar-v0"].keys}.items():
            if key in sets or key.endswith(".name"):
                continue
            value = get(cfg, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            expected = 1_000_000 if key == "total_steps" else declared.default  # ${env.total_steps}
            assert value == expected, (name, key, value, expected)
        for key, value in sets.items():
            got = get(cfg, key)
            assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, (name, key)


@pytest.mark.parametrize("algo", ["a2c", "ppo", "sac", "trpo", "reinforce", "q_ac", "is_pg", "a3c"])
def test_validation_checks_every_declared_key(algo):
    """Set any one declared key to a value its rule refuses: validate raises the one-line
    error that names that key and the value (a key whose rule takes any text is skipped)."""
    from rlcli import config, schema
    from rlcli.config import ConfigError

    base = compose([f"algo={algo}", "env=CartPole-v1" if algo != "sac" else "env=Pendulum-v1"])
    texts = []
    for key, declared in schema.keys_of(base).items():
        if declared.rule.ok(BAD):
            texts.append(key)
            continue
        cfg = copy.deepcopy(base)  # as `{key}='{BAD}'` on the command line sets it, without composing again
        OmegaConf.update(cfg, key, BAD)
        with pytest.raises(ConfigError) as err:
            config.validate(cfg)
        message = str(err.value)
        assert message.startswith(f"{key}='{BAD}'") and "\n" not in message, (key, message)
    assert texts == ["compile_cache", "env.id"]  # a directory, an id: checked where they are used


def test_typed_values_take_their_declared_types():
    """An integer-valued number for an integer key becomes an int, an int for a number a float,
    a list of integer-valued numbers a list of ints; null stays null."""
    from rlcli import config

    cfg = compose(["algo=ppo", "num_envs=4.0", "total_steps=1e4", "algo.learning_rate=1", "algo.ent_coef=0",
                   "network.hidden_sizes=[32.0,16]", "algo.target_kl=1", "estimator.lambda=1"])
    config.validate(cfg)
    typed = config.typed(cfg)
    assert (typed.num_envs, type(typed.num_envs)) == (4, int)
    assert (typed.total_steps, type(typed.total_steps)) == (10_000, int)
    assert (typed.algo.learning_rate, type(typed.algo.learning_rate)) == (1.0, float)
    assert type(typed.algo.ent_coef) is float and type(typed.algo.target_kl) is float
    assert type(typed.estimator["lambda"]) is float
    assert list(typed.network.hidden_sizes) == [32, 16] and all(type(h) is int for h in typed.network.hidden_sizes)
    assert typed.eval_interval is None and typed.algo.anneal_lr is True
    sac = compose(["algo=sac", "env=Pendulum-v1", "algo.ent_coef=1", "algo.target_entropy=-2"])
    config.validate(sac)
    typed_sac = config.typed(sac)
    assert typed_sac.algo.ent_coef == 1.0 and type(typed_sac.algo.ent_coef) is float
    assert type(typed_sac.algo.target_entropy) is float and config.typed(compose(["algo=sac"])).algo.ent_coef == "auto"


def test_with_defaults_refuses_a_missing_or_unknown_default():
    from rlcli.algos import OPTIMIZER_KEYS
    from rlcli.rules import with_defaults

    with pytest.raises(TypeError, match="algo.learning_rate needs a default"):
        with_defaults(OPTIMIZER_KEYS)
    with pytest.raises(TypeError, match="not among the keys: learning_rat"):
        with_defaults(OPTIMIZER_KEYS, learning_rate=1e-3, learning_rat=1e-3)
    keys = with_defaults(OPTIMIZER_KEYS, learning_rate=(1e-3, "the help"))
    assert keys["algo.learning_rate"].default == 1e-3 and keys["algo.learning_rate"].help == "the help"
    assert keys["algo.eps"] == OPTIMIZER_KEYS["algo.eps"]


def test_a_run_saved_before_a_key_existed_gets_its_default():
    """A saved config without keys declared later (estimator.bootstrap_truncation, an algo key,
    a network key) is completed with their declared defaults and validates; the run's own
    values stay."""
    from rlcli import config, schema

    data = OmegaConf.to_container(compose(["algo=reinforce", "algo.learning_rate=0.005"]), resolve=True)
    del data["estimator"]["bootstrap_truncation"], data["algo"]["anneal_lr"], data["network"]["log_std_init"]
    old = OmegaConf.create(data)
    with pytest.raises(config.ConfigError, match="is missing"):
        config.validate(old)
    added = schema.complete(old)
    assert sorted(added) == ["algo.anneal_lr", "estimator.bootstrap_truncation", "network.log_std_init"]
    assert old.estimator.bootstrap_truncation is False and old.algo.anneal_lr is False
    assert old.algo.learning_rate == 0.005
    config.validate(old)
