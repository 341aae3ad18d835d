"""The one-way architecture: imports point datasets <- posenet <- spade <- augment <- cli at
every depth; one data-options group; one module per generator architecture."""
import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

import posesynth
from posesynth.config import config_from_dict, load_config, to_dict
from posesynth.datasets.formats import DataOptions

PKG = Path(posesynth.__file__).resolve().parent
ORDER = ["datasets", "posenet", "spade", "augment", "cli"]
TOP = {"cli": 4, "demo": 4, "__main__": 4}   # modules at the cli's level


def _layer(module: str) -> "int | None":
    """The layer of a posesynth module (``None`` outside posesynth; -1 for the shared base
    modules: errors, io, config, runs, checkpoint, ...)."""
    parts = module.split(".")
    if parts[0] != "posesynth" or len(parts) == 1:
        return None
    if parts[1] in ORDER:
        return ORDER.index(parts[1])
    return TOP.get(parts[1], -1)


def _imports(path: Path, module: str):
    """Every ``(line, imported module)`` of a file, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text())
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                if node.module:
                    yield node.lineno, ".".join(base + [node.module])
                else:
                    for a in node.names:
                        yield node.lineno, ".".join(base + [a.name])
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "posesynth" / "posenet" / "x.py"
    f.parent.mkdir(parents=True)
    f.write_text("def f():\n    from ..augment.mixing import BatchMixer\n    import posesynth.spade.load\n")
    assert [m for _, m in _imports(f, "posesynth.posenet.x")] == ["posesynth.augment.mixing", "posesynth.spade.load"]


def test_imports_point_one_way_at_any_depth():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        mod = _module(path)
        me = _layer(mod)
        for line, target in _imports(path, mod):
            them = _layer(target)
            if me is not None and them is not None and them > me:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} imports {target}")
    assert not bad, "imports against datasets <- posenet <- spade <- augment <- cli:\n" + "\n".join(bad)


def test_the_readme_code_layout_matches_the_tree():
    """Every module of the package is named in the README's code layout (or sits in a folder the
    layout describes as a whole, like motion/), and every file it names exists."""
    text = (PKG.parent / "README.md").read_text()
    block = text[text.index("## Code layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    import re

    named = set(re.findall(r"([A-Za-z_0-9]+\.py)", block))
    folders = set(re.findall(r"([A-Za-z_0-9]+)/ ", block))
    tree = {p.name for p in PKG.rglob("*.py")} | {"train_gan.py", "train_posenet.py"}
    missing = [str(p.relative_to(PKG.parent)) for p in sorted(PKG.rglob("*.py"))
               if p.name != "__init__.py" and p.name not in named and p.parent.name not in folders]
    assert not missing, f"README's code layout does not name {missing}"
    assert not named - tree, f"README's code layout names files that do not exist: {sorted(named - tree)}"


# ---- one data-options group ---------------------------------------------------------------------
def _configs():
    from posesynth.augment.experiment import ExperimentConfig
    from posesynth.augment.generate import GenerateConfig
    from posesynth.augment.render import QualityConfig
    from posesynth.augment.training import AugmentedPoseConfig
    from posesynth.posenet.trainer import PoseTrainConfig
    from posesynth.spade.trainer import GANConfig

    return [PoseTrainConfig, AugmentedPoseConfig, GANConfig, ExperimentConfig, GenerateConfig, QualityConfig]


@pytest.mark.parametrize("cls", _configs(), ids=lambda c: c.__name__)
def test_every_data_reading_config_embeds_the_one_data_options(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert "data_options" in names
    assert not names & {"image_dir", "on_error", "out_of_frame"}   # never copied field by field
    cfg = config_from_dict(cls, {"image_dir": "imgs", "on_error": "raise"})      # flat, as on the command line
    assert cfg.data_options == DataOptions(image_dir="imgs", on_error="raise")
    nested = config_from_dict(cls, {"data_options": {"out_of_frame": "clip"}, "on_error": "raise"})
    assert nested.data_options == DataOptions(on_error="raise", out_of_frame="clip")
    assert to_dict(nested)["data_options"] == {"image_dir": "", "on_error": "raise", "out_of_frame": "clip"}


def test_a_config_written_before_the_group_still_loads(tmp_path):
    """A run's config.yaml from before data options were grouped (flat keys) resumes."""
    from posesynth.posenet.trainer import PoseTrainConfig

    old = to_dict(PoseTrainConfig())
    old.pop("data_options")
    old.update(image_dir="x", on_error="skip", out_of_frame="clip")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = load_config(PoseTrainConfig, path, {"on_error": "raise"})
    assert cfg.data_options == DataOptions("x", "raise", "clip")


def test_given_options_are_the_command_lines_and_a_new_runs_yaml(tmp_path):
    """What counts as given: the options typed now, and a new run's --config keys (data options'
    own keys among them); a resumed run's --config is not read (its saved config rules)."""
    import argparse

    from posesynth.config import given_options
    from posesynth.errors import ConfigError

    (tmp_path / "c.yaml").write_text("mode: refine\ndata_options:\n  on_error: skip\n")
    args = argparse.Namespace(config=str(tmp_path / "c.yaml"), cfg_steps=10, cfg_ngf=None, out="x")
    assert given_options(args, resume=False) == {"steps", "mode", "on_error"}
    assert given_options(args, resume=True) == {"steps"}
    (tmp_path / "c.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping"):
        given_options(args, resume=False)


def test_every_command_shows_one_data_options_group():
    from posesynth.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train-posenet", "train-gan", "generate", "experiment", "render-quality", "render", "show"):
        text = sub.choices[name].format_help()
        listed = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
        assert listed.count("--image-dir") == 1 and listed.count("--out-of-frame") == 1, name
        assert "data options" in text, name


# ---- one module per generator architecture ---------------------------------------------------------
def test_the_gan_trainer_does_not_branch_on_the_arch():
    src = (PKG / "spade" / "trainer.py").read_text()
    assert len(src.splitlines()) < 350
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            assert not any(f"'{a}'" in text or f'"{a}"' in text for a in ("spade", "pix2pix", "vanilla", "nearest")), text


def test_every_arch_is_found_by_its_name_and_mode():
    from posesynth.errors import ConfigError
    from posesynth.spade.archs import arch_class

    assert arch_class("spade", "inpaint").name == "spade"
    assert arch_class("vanilla").name == "vanilla"
    with pytest.raises(ConfigError, match="--mode inpaint is not for --arch pix2pix"):
        arch_class("pix2pix", "inpaint")
