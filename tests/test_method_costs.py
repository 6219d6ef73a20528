"""What a method costs besides the student: the trainable parameters of its connectors,
embeddings and stateful losses, reported per role in summary.json and in the report."""

from kdistill.report import results_table
from kdistill.run.config import load_config
from kdistill.run.pipeline import run


def test_fitnet_reports_its_regressor_and_kd_reports_none(tmp_path, tiny_recipe):
    fitnet = run(
        load_config(None, [*tiny_recipe, "method=fitnet", f"output.dir={tmp_path}", "name=fitnet"]),
        echo=lambda *_: None,
    )
    # MLP hint layers are 16- and 32-wide vectors: the regressor is a trained 16 -> 32 linear layer.
    assert fitnet["student"]["connector_params"] == 16 * 32 + 32
    assert fitnet["scratch"]["connector_params"] == 0
    assert "training-only parameters" in results_table(fitnet) and "544" in results_table(fitnet)
    kd = run(
        load_config(None, [*tiny_recipe, f"output.dir={tmp_path}", "name=kd"]), echo=lambda *_: None
    )
    assert kd["student"]["connector_params"] == 0
    assert "training-only parameters" not in results_table(kd)
