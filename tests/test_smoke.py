from zeroinit.run import run


def test_default_run_trains_and_writes_results(make_cfg, tmp_path):
    results = run(make_cfg("trainer.max_epochs=2"))
    assert results["status"] == "completed"
    assert [e["epoch"] for e in results["epochs"]] == [1, 2]
    assert results["final"]["test_acc"] > 0.8  # 2 epochs of mnist_fnn on the 4,000 digits
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
