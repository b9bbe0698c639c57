"""Every ``memgeo`` command's --help: each option states its default (or is required / an on-off flag),
each command shows an example, and the stated defaults are the config classes' real defaults."""

from __future__ import annotations

import importlib
import re

import pytest
import typer
from typer.testing import CliRunner

from memgeo.cli import app

COMMAND = typer.main.get_command(app)
NAMES = sorted(COMMAND.commands)
DEFAULT = re.compile(r"\[default: ([^\]]*)\]")

# command -> (module, config class, option name -> dotted config field where the names differ)
CONFIGS = {
    "collapse": ("memgeo.workflows.collapse", "CollapseConfig", {}),
    "train": ("memgeo.workflows.commands", "TrainRunConfig",
              {"steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr",
               "checkpoint_every": "train.checkpoint_every", "seed": "train.seed"}),
    "sample": ("memgeo.workflows.commands", "SampleRunConfig", {}),
    "sharpness": ("memgeo.workflows.commands", "SharpnessRunConfig", {}),
    "audit": ("memgeo.workflows.lid_runs", "AuditConfig", {}),
    "mitigate": ("memgeo.workflows.mitigate", "MitigateConfig", {"method": "methods"}),
    "detect": ("memgeo.workflows.detect", "DetectConfig",
               {"steps": "sampling.steps", "guidance": "sampling.guidance", "batch": "batch_prompts",
                "attribution": "attribution_score"}),
    "demo": ("memgeo.workflows.demo", "DemoConfig", {"steps": "train.steps", "toy": "toy.enabled"}),
    "copies": ("memgeo.workflows.copies", "CopiesConfig", {}),
    "kfold": ("memgeo.workflows.kfold_runs", "KFoldConfig", {}),
    "families": ("memgeo.workflows.families_demo", "FamiliesDemoConfig", {}),
}


def _help(name: str) -> str:
    res = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def _options(name: str) -> list:
    """The command's options (typer vendors its own click, so no isinstance check against ``click``)."""
    opts = [p for p in COMMAND.commands[name].params if p.param_type_name == "option" and p.name != "help"]
    assert opts or name == "none", f"{name} has no options?"
    return opts


def _help_text(name: str, opt) -> str:
    ctx = COMMAND.context_class(COMMAND.commands[name], info_name=name)
    record = opt.get_help_record(ctx)
    return "" if record is None else " ".join(record[1].split())


def test_every_command_is_listed():
    assert {"demo", "train", "sample", "sharpness", "lid", "audit", "detect", "mitigate", "collapse"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_an_example_of_this_command(name):
    text = _help(name)
    examples = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("Example:")]
    assert examples, f"`memgeo {name} --help` shows no example"
    assert examples[0].startswith(f"Example: memgeo {name} "), examples[0]


@pytest.mark.parametrize("name", NAMES)
def test_every_option_shows_its_default(name):
    text = " ".join(_help(name).split())
    missing = []
    for opt in _options(name):
        flag_off = opt.is_flag and not opt.secondary_opts and opt.default is False  # --json: off unless given
        if opt.required or flag_off:
            continue
        shown = _help_text(name, opt)
        if not DEFAULT.search(shown):
            missing.append(opt.opts[0])
        else:  # and the rendered page carries the same text (nothing swallowed as markup)
            assert DEFAULT.search(shown).group(0) in text, (name, opt.opts[0])
    assert not missing, f"memgeo {name}: no default shown for {missing}"


def _field_default(cls, dotted: str):
    obj, parts = cls, dotted.split(".")
    for part in parts[:-1]:
        obj = obj.model_fields[part].default
    fields = obj.model_fields if isinstance(obj, type) else type(obj).model_fields
    if isinstance(obj, type):
        return fields[parts[-1]].get_default(call_default_factory=True)
    return getattr(obj, parts[-1])


def _literal(text: str) -> str | None:
    """The literal part of a stated default ('1; asthana2026: 2' -> '1'), None for a description."""
    head = text.split(";")[0].split(" (")[0].strip()
    return None if " " in head else head


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stated_defaults_are_the_config_defaults(name):
    """An option's default (typer's own, or the one its help states for a None that defers to the config)
    is the config class's default: the help cannot drift from what a run uses."""
    module, cls_name, renames = CONFIGS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    checked = 0
    for opt in _options(name):
        field = renames.get(opt.name, opt.name)
        try:
            value = _field_default(cls, field)
        except KeyError:
            continue  # an option without a config field of that name (e.g. --config, --json)
        if opt.default is not None:
            shown = opt.default
        else:
            found = DEFAULT.search(_help_text(name, opt))
            shown = None if found is None else _literal(found.group(1))
        if value is None or shown is None:
            continue
        checked += 1
        where = (name, opt.opts[0], shown, value)
        if isinstance(value, bool):
            flag = opt.opts[0].removeprefix("--")
            assert shown in ((flag, True) if value else (f"no-{flag}", False)), where
        elif isinstance(value, (int, float)):
            assert float(shown) == pytest.approx(float(value)), where
        elif isinstance(value, tuple):
            assert shown == ",".join(map(str, value)), where
        else:
            assert str(shown) == str(value), where
    assert checked >= 1, f"{name}: no stated default could be compared"


def test_train_on_unlabelled_data_suggests_a_flag_that_exists(run_cli, tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((8, 2), dtype=np.float32))
    code, _, err = run_cli("train", "--data", f"npy:{tmp_path / 'x.npy'}", "--steps", "2", "--out", tmp_path / "m")
    assert code == 2 and "labels" in err
    suggested = set(re.findall(r"--[a-z][a-z-]+", err))
    assert suggested, err
    declared = {o for p in COMMAND.commands["train"].params for o in (*p.opts, *p.secondary_opts)}
    assert suggested <= declared, suggested - declared
