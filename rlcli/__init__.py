"""rlcli: a policy-gradient experiment runner on JAX with a Hydra command line."""

__version__ = "0.1.0"
