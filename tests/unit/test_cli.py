import yaml

from retrain.cli import main
from tests.synthetic import config_dict, write_partitions


def test_init_writes_a_config_that_validate_accepts(tmp_path, capsys):
    path = tmp_path / "retrain.yaml"
    assert main(["init", str(path), "--name", "flights"]) == 0
    assert "flights" in path.read_text()
    assert main(["init", str(path)]) == 2  # refuses to overwrite
    assert "pass --force" in capsys.readouterr().err
    assert main(["init", str(path), "--force"]) == 0


def test_validate_reports_data_and_features(tmp_path, capsys):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=50)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work")))
    assert main(["validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train partitions 1,2 (100 rows), holdout 3 (50 rows)" in out
    assert "['x1', 'x2', 'cat']" in out


def test_errors_print_the_message_and_exit_with_their_code(tmp_path, capsys):
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("missing-data", "work")))
    assert main(["validate", "--config", str(path)]) == 3  # DataError
    assert "data.path" in capsys.readouterr().err
    path.write_text("project: {name: x}\n")
    assert main(["run", "--config", str(path)]) == 2  # ConfigError
    err = capsys.readouterr().err
    assert "data: required but missing" in err and "task: required but missing" in err
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "retrain init" in capsys.readouterr().err
