from __future__ import annotations

import pytest

from lightning_seg.cli import main
from lightning_seg.config import ConfigError, compose


def test_defaults_compose_to_synthetic_isic_on_cpu():
    cfg = compose([])
    assert (cfg.data.name, cfg.data.source, cfg.data.task) == ("isic", "synthetic", "lesion")
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.name == "wandb" and cfg.logger.mode == "offline"


def test_group_choice_and_dotlist_override():
    cfg = compose(["data=glaucoma", "trainer.max_epochs=5", "data.task=disc", "logger=csv"])
    assert (cfg.data.name, cfg.data.task, cfg.trainer.max_epochs, cfg.logger.name) == ("glaucoma", "disc", 5, "csv")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.devise=2", "Did you mean 'trainer.devices'?"),
        ("data.tsk=disc", "Did you mean 'data.task'?"),
        ("trainer.max_epochs=two", "trainer.max_epochs"),
        ("data=glaucom", "Did you mean 'data=glaucoma'?"),
        ("max_epochs", "key=value"),
    ],
)
def test_bad_overrides_fail_with_one_line_and_a_suggestion(override: str, expected: str):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_cli_reports_config_errors_without_traceback(capsys: pytest.CaptureFixture[str]):
    assert main(["fit", "trainer.devise=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Unknown config key 'trainer.devise'") and len(err.splitlines()) == 1


def test_help_lists_commands_and_groups(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("fit", "validate", "test", "attack", "demo", "data", "model", "trainer", "logger", "asma_paper"):
        assert word in out
    assert "ddp_cpu" in out and "glaucoma" in out


def test_print_config(capsys: pytest.CaptureFixture[str]):
    assert main(["fit", "data=glaucoma", "--print-config"]) == 0
    assert "task: disc_cup" in capsys.readouterr().out


def test_the_defense_group_is_a_config_section():
    cfg = compose(["defense=fr"])  # consumed by the commands (tests/test_defense_commands.py)
    assert (cfg.defense.name, cfg.defense.pd, cfg.defense.gd) == ("fr", 30.0, 60.0)


def test_attack_list_choice_and_fraction_values():
    cfg = compose(["attack=[ssm,asma,asma_paper]", "attack.asma.step_size=1/255"])
    assert list(cfg.attack) == ["ssm", "asma", "asma_paper"] and cfg.attack.asma_paper.name == "asma"
    assert cfg.attack.asma.step_size == pytest.approx(1 / 255)
    with pytest.raises(ConfigError, match="only one choice"):
        compose(["data=[isic,glaucoma]"])


def test_dotted_keys_enter_free_form_mappings_but_typos_still_fail():
    cfg = compose(["data.options.contrast=[0.3,1.0]", "attack_eval.target=cup_enlarge", "attack_eval.target_params.delta=0.3"])
    assert cfg.data.options == {"contrast": [0.3, 1.0]} and cfg.attack_eval.target_params == {"delta": 0.3}
    with pytest.raises(ConfigError, match="data.optionz.x.*Did you mean 'data.options'"):
        compose(["data.optionz.x=1"])
    with pytest.raises(ConfigError, match="data.image_sise"):
        compose(["data.image_sise=64"])


def test_fraction_overrides_are_parsed_and_other_slashes_kept():
    cfg = compose(["attack=pgd", "attack.pgd.eps=8/255", "attack.pgd.alpha=1e-3/2",
                   "attack_eval.eps_sweep=[1/255,2/255]", "run.name=a/b", "run.output_dir=/tmp/x/y"])
    assert cfg.attack.pgd.eps == pytest.approx(8 / 255) and cfg.attack.pgd.alpha == pytest.approx(5e-4)
    assert list(cfg.attack_eval.eps_sweep) == pytest.approx([1 / 255, 2 / 255])
    assert cfg.run.name == "a/b" and cfg.run.output_dir == "/tmp/x/y"


def test_attack_sections_hold_every_parameter_and_yaml_deviations_win():
    cfg = compose(["attack=[asma,asma_paper]"])
    paper, asma = cfg.attack.asma_paper, cfg.attack.asma
    assert set(paper) == set(asma) and paper.name == "asma"
    assert (paper.max_iter, paper.iou_threshold, paper.step, paper.paper_exact) == (2501, None, "raw", True)
    assert (asma.max_iter, asma.iou_threshold, asma.step, asma.paper_exact) == (500, 0.95, "normalized", False)
    assert paper.tau == asma.tau and paper.beta == asma.beta
