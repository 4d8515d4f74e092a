"""examples/lightning_ssir.py under PyTorch Lightning: fp32, bf16-mixed, ddp_spawn with two CPU
ranks (gloo) and a torch.compile'd network that sees two batch sizes. Each run is checked
against numbers: a hand-written loop with the same weights and draws, the other rank, or one
process's BinnedMetrics."""
import copy
import os

import lightning as L
import pytest
import torch

from ssir_fast.metrics import BinnedMetrics

TRAINER = dict(accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False)


def _setup(ex, n_train=200, n_val=100, batch_size=64, **model_kw):
    torch.manual_seed(0)
    train, val, ytr = ex.loaders(n_train=n_train, n_val=n_val, batch_size=batch_size)
    model = ex.SSIRRegressor(num_features=8, train_labels=ytr, **model_kw)
    return model, train, val, ytr


def _manual(model, init, train, epochs, seed, autocast=None, val=None):
    """The same training written by hand: SSIRLoss on the network, Adam, `epochs` passes (and
    an iterator over `val` after each, as the fit makes: a DataLoader iterator draws its seed
    from the global generator, which SSIR's noise also uses)."""
    net = copy.deepcopy(model.net)
    net.load_state_dict(init)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=model.hparams.lr)
    torch.manual_seed(seed)
    for _ in range(epochs):
        for x, y in train:
            with (torch.autocast("cpu", dtype=autocast) if autocast else torch.enable_grad()):
                res = model.ssir(net, x, y)
            # the supervised term written out: float32 prediction against the float32 labels
            pred = res.pred.float()
            supervised = (pred - y.reshape(pred.shape)).abs().mean()
            loss = supervised + model.ssir.lam * res.consistency
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is not None:
            iter(val)
    return net, supervised.item()


def _val_metrics(net, val, ytr, ex):
    m = BinnedMetrics(y_min=0.0, bin_width=ex.BIN_WIDTH, num_bins=ex.NUM_BINS, train_labels=ytr)
    net.eval()
    with torch.no_grad():
        for x, y in val:
            m.update(net(x).squeeze(1), y)
    return m.compute()


# bf16: one step (bf16 rounding amplifies the last-bit differences of longer runs)
@pytest.mark.parametrize("precision,autocast,epochs,n_train", [
    ("32-true", None, 2, 200), ("bf16-mixed", torch.bfloat16, 1, 64)])
def test_fit_equals_a_hand_written_loop(examples_path, precision, autocast, epochs, n_train):
    # under bf16-mixed the labels must not be rounded to bf16 (37.3 -> 37.25): the reference
    # computes the supervised term from the float32 labels itself
    import lightning_ssir as ex
    model, train, val, ytr = _setup(ex, n_train=n_train)
    init = copy.deepcopy(model.net.state_dict())
    trainer = L.Trainer(max_epochs=epochs, devices=1, precision=precision,
                        num_sanity_val_steps=0, **TRAINER)
    torch.manual_seed(7)
    trainer.fit(model, train, val)
    ref, supervised = _manual(model, init, train, epochs, seed=7, autocast=autocast, val=val)
    assert float(trainer.callback_metrics["supervised"]) == pytest.approx(supervised, rel=1e-6)
    for (name, a), b in zip(model.net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # the logged validation metrics are BinnedMetrics' numbers for the trained network
    expect = _val_metrics(model.net, val, ytr, ex)
    got = trainer.callback_metrics
    for group in ("all", "many", "medium", "few"):
        assert float(got[f"val_{group}_mae"]) == pytest.approx(expect[group]["mae"], rel=1e-5,
                                                               nan_ok=True)
    assert float(got["val_all_count"]) == len(val.dataset)


class _SaveParams(L.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
                   os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


def test_ddp_spawn_two_cpu_ranks(examples_path, tmp_path):
    import lightning_ssir as ex
    model, train, val, ytr = _setup(ex, n_val=200)
    trainer = L.Trainer(max_epochs=2, devices=2, strategy="ddp_spawn", num_sanity_val_steps=0,
                        callbacks=[_SaveParams(str(tmp_path))], **TRAINER)
    trainer.fit(model, train, val)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k   # DDP kept the ranks in step
    # the synced ShotMetrics of the two shards equal one process's metrics of the whole set
    net = copy.deepcopy(model.net)
    net.load_state_dict(ranks[0])
    expect = _val_metrics(net, val, ytr, ex)
    got = trainer.callback_metrics
    assert float(got["val_all_count"]) == 200
    for group in ("all", "many", "medium", "few"):
        for k in ("mae", "gm"):
            assert float(got[f"val_{group}_{k}"]) == pytest.approx(expect[group][k], rel=1e-5,
                                                                   nan_ok=True)


def test_compiled_network_with_two_batch_sizes(examples_path):
    # 200 rows in batches of 64: the compiled network sees 64 and 8 (and the sanity check's
    # validation batches): every new size recompiles, and SSIR's step 1 keeps the graph
    import lightning_ssir as ex
    torch._dynamo.reset()
    results = []
    for compiled in ("aot_eager", False):
        model, train, val, ytr = _setup(ex, compile=compiled, dropout=0.0)
        trainer = L.Trainer(max_epochs=2, devices=1, num_sanity_val_steps=1, **TRAINER)
        torch.manual_seed(3)
        trainer.fit(model, train, val)
        results.append(model.net.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5, msg=k)
