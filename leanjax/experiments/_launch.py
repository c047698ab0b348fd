"""Command line of every experiment: `python -m leanjax.experiments.<name> [flags]`.

    --config PATH[:ARG]   a config file defining get_config(arg) (default: configs/<name>/default.py)
    --config.KEY=VALUE    override a (dotted) key; the value is parsed as the key's existing type
    --workdir DIR         where checkpoints, logs, plots and summary.json go (default runs/<name>/<time>)
    --audit               compile and report cost (FLOPs, memory, time, $) instead of training: the steps
                          the experiment's `build(config)` gives (see leanjax.experiments._audit)

A `:tiny` config variant checks the wiring at tiny shapes, so its time is XLA compilation: it compiles with
LLVM at -O0 (`XLA_FLAGS=--xla_backend_optimization_level=0`, 3-6x faster compiles of CPU programs; unless
XLA_FLAGS already sets a level). Its step times and throughput ratios are then not meaningful.

Unknown keys, values of the wrong type, values outside a key's choices and missing files are errors that
name the key and suggest the closest valid ones: one line, no traceback. A config file declares the choices
of its keys in a module-level `CHOICES = {"task": ("cnn", "lm"), ...}` (dotted keys; a tuple-valued key
checks each element); `optimizer` and `schedule` keys are checked wherever they appear. An experiment that
finds a bad value later raises `ConfigError`, which reads the same.

The experiment's `run(config, workdir) -> (metrics, headline)` does the work; this module times it and
writes summary.json. `config_optimizer(config)` is the optimizer that a config's `optimizer` /
`learning_rate` / `warmup_steps` / `weight_decay` / `num_steps` / `schedule` / `clip_norm` keys describe.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections

from leanjax.data.source import DatasetNotFoundError
from leanjax.optim import make_optimizer
from leanjax.train.checkpoint import IncompatibleCheckpointError
from leanjax.train.loop import NonFiniteLossError
from leanjax.train.summary import write_summary

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_audit(run: Callable) -> Callable | None:
    """`--audit` for an experiment whose module defines `build(config)` (see leanjax.experiments._audit)."""
    build = getattr(sys.modules.get(run.__module__), "build", None)
    if build is None:
        return None

    def audit(config, workdir):
        from leanjax.experiments._audit import audit_experiment

        return audit_experiment(build, config, workdir)

    return audit


class ConfigError(ValueError):
    """A bad config key or value: printed as one line (`error: ...`), exit status 2 before the run, 1 during."""


# Checked wherever a config has these keys (the names `leanjax.optim.make_optimizer` accepts).
COMMON_CHOICES = {"optimizer": ("adamw", "adam", "adafactor", "sgd"), "schedule": ("cosine", "linear", "constant")}


# Errors whose message is the whole story (missing asset/dataset: FileNotFoundError subclasses).
_USER_ERRORS = (ConfigError, FileNotFoundError, DatasetNotFoundError, IncompatibleCheckpointError,
                NonFiniteLossError)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/default.py[:arg]` and call its `get_config(arg)`."""
    return _load(spec)[0]


def _load(spec: str) -> tuple[ml_collections.ConfigDict, dict]:
    """`(get_config(arg), the file's CHOICES)` of `path/to/default.py[:arg]`."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file() and (REPO_ROOT / path).is_file():
        file = REPO_ROOT / path
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    if str(REPO_ROOT) not in sys.path:  # config files share `configs/common.py` (`from configs import common`)
        sys.path.append(str(REPO_ROOT))
    module_spec = importlib.util.spec_from_file_location(f"_leanjax_config_{file.parent.name}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None) if arg else module.get_config()
    except ValueError as e:  # an unknown `:variant`
        raise ConfigError(f"{path}: {e}") from None
    return config, dict(getattr(module, "CHOICES", {}))


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, prefix + k + ".")
    return out


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{key} expects a bool (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config.{key} expects an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config.{key} expects a float, got {text!r}") from None
    if isinstance(current, str) or current is None:
        return text
    try:  # tuples, lists, dicts: a Python literal
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"config.{key} expects a {type(current).__name__} literal, got {text!r}") from None
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if not isinstance(value, type(current)):
        raise ConfigError(f"config.{key} expects a {type(current).__name__}, got {text!r}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    valid = _keys(config)
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close else \
            f"; valid keys: {', '.join(sorted(valid))}"
        raise ConfigError(f"unknown config key config.{key}{hint}")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config.{key} is a group of keys ({', '.join(current.keys())}); set one of them")
    try:
        node[leaf] = _parse_value(text, current, key)
    except TypeError as e:  # ml_collections' own type check
        raise ConfigError(f"config.{key}: {e}") from None


_OPTIMIZER_KEYS = ("learning_rate", "num_steps", "warmup_steps", "weight_decay", "schedule", "clip_norm")


def check_choices(config: ml_collections.ConfigDict, choices: dict[str, tuple]) -> None:
    """Raise `ConfigError` naming the key when a value is not one of its choices.

    Args:
      config: the config, after overrides.
      choices: dotted key -> allowed values (a tuple/list value must hold allowed values only); keys named
        in `COMMON_CHOICES` are checked at any depth.
    """
    keys = _keys(config)
    checks = dict(choices)
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        if leaf in COMMON_CHOICES and key not in checks:
            checks[key] = COMMON_CHOICES[leaf]
    for key, allowed in checks.items():
        if key not in keys:
            raise ConfigError(f"CHOICES names config.{key}, which this config does not have")
        node = config
        for part in key.split("."):
            node = node[part]
        values = node if isinstance(node, (tuple, list)) else (node,)
        for value in values:
            if value not in allowed:
                close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(map(repr, allowed))}{hint}")


def config_optimizer(config: ml_collections.ConfigDict, *, inject_learning_rate: bool = False, **overrides):
    """The one way an experiment builds its optimizer: `leanjax.optim.make_optimizer` from the config.

    Args:
      config: a config (or sub-config) with `optimizer` (default 'adamw') and those of `learning_rate`,
        `num_steps` (the schedule's total), `warmup_steps`, `weight_decay`, `schedule`, `clip_norm` it has;
        the others keep `make_optimizer`'s defaults.
      inject_learning_rate: build the schedule with a unit peak and hold the peak rate in the optimizer
        state (`learning_rate_scale`, set to the config's rate), so runs at different rates share one
        compiled step and change it with `leanjax.optim.set_hyperparams(state, learning_rate_scale=...)`.
      **overrides: values that replace the config's, for the keys above (e.g. a second arm's
        `learning_rate=config.student_learning_rate`, `num_steps=config.student_steps`).

    Returns:
      An `optax.GradientTransformation` with injected hyperparameters.
    """
    unknown = sorted(set(overrides) - set(_OPTIMIZER_KEYS))
    if unknown:
        raise TypeError(f"config_optimizer: unknown option(s) {unknown}; use {list(_OPTIMIZER_KEYS)}")
    values = {k: config[k] for k in _OPTIMIZER_KEYS if k in config}
    values.update({k: v for k, v in overrides.items() if v is not None})
    options = {k: v for k, v in values.items() if k != "num_steps"}
    if values.get("num_steps"):
        options["total_steps"] = values["num_steps"]
    return make_optimizer(config.get("optimizer", "adamw"), inject_learning_rate=inject_learning_rate, **options)


FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def use_fast_compile(environ=os.environ) -> bool:
    """Append `FAST_COMPILE_FLAG` to `environ["XLA_FLAGS"]` unless a level is set there already; True if
    appended. Takes effect only before JAX creates its CPU backend (the first array or compile)."""
    flags = environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()
    return True


def parse_args(name: str, argv: list[str]) -> tuple[ml_collections.ConfigDict, str, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog=f"python -m leanjax.experiments.{name}",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=f"configs/{name}/default.py")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--audit", action="store_true", help="compile and report cost; no training")
    parser.add_argument("--mode", default="train", help="train, or a mode the experiment defines")
    args, rest = parser.parse_known_args(argv)
    config, choices = _load(args.config)
    for item in rest:
        if not item.startswith("--config."):
            raise ConfigError(f"unrecognised argument {item!r}; overrides look like --config.key=value")
        key, eq, value = item[len("--config."):].partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} has no value: use --config.{key}=VALUE")
        apply_override(config, key, value)
    check_choices(config, choices)
    workdir = args.workdir or str(REPO_ROOT / "runs" / name / time.strftime("%Y%m%d-%H%M%S"))
    return config, workdir, args


def main(name: str, run: Callable[..., tuple[dict, dict]], argv: list[str] | None = None,
         audit: Callable[..., tuple[dict, dict]] | None = None) -> int:
    """Parse flags, run the experiment, write summary.json; return the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, workdir, args = parse_args(name, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(workdir, exist_ok=True)
    if args.config.partition(":")[2] == "tiny" and use_fast_compile():
        print(f"[{name}] :tiny compiles with XLA_FLAGS={FAST_COMPILE_FLAG} (compile-bound; its timings are "
              "not meaningful)", flush=True)
    from leanjax.parallel.multihost import initialize

    initialize()  # joins a TPU pod / SLURM / explicit cluster when launched in one; no-op otherwise
    config.lock()
    fn = run
    if args.audit:
        fn = audit or _default_audit(run)
        if fn is None:
            print(f"error: experiment {name} has no --audit mode (no audit= and no build(config))",
                  file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        metrics, headline = fn(config, workdir, mode=args.mode) if args.mode != "train" else fn(config, workdir)
    except _USER_ERRORS as e:  # a message for the user, not a traceback from deep inside
        print(f"error: {e}", file=sys.stderr)
        return 1
    if metrics.get("preempted"):
        print(f"preempted: checkpoint saved in {workdir}; rerun the same command to resume")
        return 0
    # A side job on the run's workdir (an audit, an eval sidecar) must not overwrite the run's own summary.
    mode = "audit" if args.audit else args.mode
    filename = "summary.json" if mode == "train" else f"summary.{mode}.json"
    from leanjax.parallel.multihost import process_dir

    path = write_summary(process_dir(workdir), experiment=name, config=config, metrics=metrics, headline=headline,
                         wall_s=time.perf_counter() - t0, filename=filename)
    print(f"summary: {path}")
    for k, v in headline.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0
