"""Reference strategies (`reference=`): model (and its dtype), precomputed (the cache), lora, none, sync (TR-DPO)."""

import importlib.util

import lightning as L
import pytest
import torch
from helpers import ADAMW, DEMO, DPO, MODEL, PAD, SMALL, compose, fit, random_pairs, read_summary, train
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.collate import collate_padded, placeholder_batch
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.models import reference_cache as reference_module
from dpo_lightning.models.loading import build_model, load_tokenizer
from dpo_lightning.models.logprobs import sequence_logprobs
from dpo_lightning.models.reference import (
    FrozenCopy,
    LoraAdapters,
    PeriodicSync,
    Precomputed,
    PrecomputedReference,
    ReferenceFree,
)
from dpo_lightning.models.reference_cache import compute_table, precompute_reference
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer
from dpo_lightning.runtime.checkpoints import load_checkpoint_file
from dpo_lightning.runtime.checks import validate_config
from dpo_lightning.runtime.export import export_policy
from dpo_lightning.runtime.run import build_datamodule
from dpo_lightning.training.module import REFERENCE_PREFIX, DPOLitModule

LORA = {
    "_target_": "dpo_lightning.models.reference.LoraAdapters",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "merge_on_export": True},
}
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")


def _module(reference, model=MODEL) -> DPOLitModule:
    module = DPOLitModule(model=model, loss=DPO, optimizer=ADAMW, reference=reference)
    module.configure_model()
    return module


def _cache_file(tmp_path, pairs, model) -> str:
    """A precomputed cache of `pairs` under `model`, as `precompute_reference` writes it."""
    table = compute_table(model, [collate_padded(pairs, PAD)], torch.device("cpu"))
    path = tmp_path / "cache.safetensors"
    save_file(table, path)
    return str(path)


def _demo(tmp_path, *overrides):
    """The composed config, data module and (unstarted) CPU trainer of a small sentiment run."""
    cache = f"reference.cache_dir={tmp_path / 'cache'}"
    cfg = compose("reference=precomputed", cache, *DEMO, *overrides, run_dir=tmp_path)
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    return cfg, datamodule, trainer


def _plain(node):
    return OmegaConf.to_container(node, resolve=True)


# --- precomputed ----------------------------------------------------------------------------------------


def test_precomputed_gives_the_model_loss_and_holds_no_reference_model(tmp_path):
    cfg, datamodule, trainer = _demo(tmp_path)
    path = precompute_reference(cfg, datamodule, trainer)
    strategies = {"model": FrozenCopy(), "precomputed": Precomputed(cache_file=str(path))}
    modules = {name: _module(strategy, model=_plain(cfg.model)) for name, strategy in strategies.items()}
    for split in ("train", "validation"):
        batch = next(iter(datamodule._loader(split, 8, shuffle=True)))
        losses = {name: module.training_step(batch, 0) for name, module in modules.items()}
        torch.testing.assert_close(losses["precomputed"], losses["model"], rtol=1e-5, atol=1e-6)
    precomputed = modules["precomputed"]
    assert not list(precomputed.reference.parameters()) and not list(precomputed.reference.buffers())
    assert {id(p) for p in precomputed.parameters()} == {id(p) for p in precomputed.policy.parameters()}


def test_cache_is_reused_only_for_the_same_fingerprint(tmp_path, monkeypatch):
    cfg, datamodule, trainer = _demo(tmp_path)
    first = precompute_reference(cfg, datamodule, trainer)
    assert first.parent == tmp_path / "cache"
    real_compute = reference_module.compute_table

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed a valid cache")

    monkeypatch.setattr(reference_module, "compute_table", no_compute)
    assert precompute_reference(cfg, datamodule, trainer) == first  # same fingerprint: reused
    monkeypatch.setattr(reference_module, "compute_table", real_compute)

    # A tokenization setting, the model's weights (same architecture config, other init seed) and the batch
    # layout (its values differ by rounding) are in the key.
    shorter = precompute_reference(*_demo(tmp_path, "task.tokenize.max_length=40"))
    other_model = precompute_reference(*_demo(tmp_path, "model.init_seed=1"))
    padded = precompute_reference(*_demo(tmp_path, "data.layout=padded"))
    assert len({first, shorter, other_model, padded}) == 4
    assert all(path.is_file() for path in (first, shorter, other_model, padded))

    # A file under the right name whose stored fingerprint differs is never used: it is recomputed.
    save_file({"keys": torch.zeros(1, dtype=torch.long)}, first, metadata={"fingerprint": "stale"})
    assert precompute_reference(cfg, datamodule, trainer) == first
    assert len(PrecomputedReference(first)._table(torch.device("cpu"))["keys"]) == 2 * 40  # 40 pairs' responses


def test_a_pair_missing_from_the_cache_is_an_error(tmp_path):
    model = build_model(MODEL)
    reference = PrecomputedReference(_cache_file(tmp_path, random_pairs(4), model))
    batch = collate_padded(random_pairs(4), PAD)
    for cached, computed in zip(reference.logprobs(batch), sequence_logprobs(model, batch), strict=True):
        torch.testing.assert_close(cached, computed)
    mixed = random_pairs(4)[:2] + random_pairs(2, seed=1)
    with pytest.raises(DataError, match=r"4 of 8 responses of this batch are not in the reference cache"):
        reference.logprobs(collate_padded(mixed, PAD))
    logps, _ = reference.logprobs(placeholder_batch(PAD))  # a rank out of streaming data: no lookup
    assert torch.equal(logps, torch.zeros(2))


# --- lora -----------------------------------------------------------------------------------------------


@needs_peft
def test_lora_reference_is_the_base_model_before_and_after_training(tmp_path):
    from peft import PeftModel

    module = _module(LORA)
    base = build_model(MODEL)
    batch = collate_padded(random_pairs(4, seed=3), PAD)
    base_logps = sequence_logprobs(base, batch)[0]
    torch.testing.assert_close(module.reference.logprobs(batch)[0], base_logps)
    assert not list(module.reference.parameters())  # no second copy

    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for name, p in module.policy.named_parameters() if "lora_" in name}
    assert adapters and optimized == adapters

    fit(module, tmp_path, steps=2)
    with torch.no_grad():
        policy_logps = sequence_logprobs(module.policy, batch)[0]
    assert not torch.allclose(policy_logps, base_logps)
    torch.testing.assert_close(module.reference.logprobs(batch)[0], base_logps)

    merged = module.strategy.exported(module.policy)  # a merged copy, saved as a plain model the Auto classes load
    assert not isinstance(merged, PeftModel) and isinstance(module.policy, PeftModel)
    folder = export_policy(merged, load_tiny_tokenizer(), tmp_path / "policy")
    with torch.no_grad():
        exported = sequence_logprobs(AutoModelForCausalLM.from_pretrained(folder, local_files_only=True), batch)[0]
    torch.testing.assert_close(exported, policy_logps, rtol=1e-5, atol=1e-4)
    adapters_only = LoraAdapters(lora={**LORA["lora"], "merge_on_export": False})
    assert adapters_only.exported(module.policy) is module.policy
    folder = export_policy(adapters_only.exported(module.policy), load_tiny_tokenizer(), tmp_path / "adapters")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()


# --- sync (TR-DPO) --------------------------------------------------------------------------------------


def test_sync_mixes_alpha_policy_into_the_reference_every_n_steps(tmp_path):
    alpha = 0.25
    module = _module(PeriodicSync(alpha=alpha, every_n_steps=2))
    records, mix = [], module.reference.after_optimizer_step

    def record(policy, step):  # the weights the hook sees after each optimizer step, before it mixes them
        clone = lambda model: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
        records.append((step, clone(policy), clone(module.reference.model)))
        mix(policy, step)

    module.reference.after_optimizer_step = record
    fit(module, tmp_path, steps=5)
    final = {k: v.detach().clone() for k, v in module.reference.model.named_parameters()}
    states = [reference for _, _, reference in records[1:]] + [final]
    for (step, policy, before), after in zip(records, states, strict=True):
        for name, value in before.items():
            expected = alpha * policy[name] + (1 - alpha) * value if step % 2 == 0 else value
            torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)
    assert [step for step, _, _ in records] == [1, 2, 3, 4, 5] and int(module.reference.syncs) == 2

    # The hook runs once per micro-batch: a step seen again (gradient accumulation) mixes nothing more.
    mix(module.policy, 4)
    assert all(torch.equal(v, final[k]) for k, v in module.reference.model.named_parameters())


def test_sync_reference_survives_a_checkpoint_round_trip(tmp_path):
    config = PeriodicSync(alpha=1.0, every_n_steps=2)
    module = _module(config)
    trainer = fit(module, tmp_path, steps=3)
    path = tmp_path / "sync.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert int(saved[REFERENCE_PREFIX + "syncs"]) == 1

    restored = _module(config)
    restored.on_load_checkpoint({"state_dict": saved})
    restored.load_state_dict(saved, strict=True)
    initial = _module(config).reference.state_dict()
    trained = module.reference.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)  # the hard update happened
    assert all(torch.equal(v, trained[k]) for k, v in restored.reference.state_dict().items())


# --- model, and every strategy --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_model_reference_dtype_holds_its_own_weights_and_gives_float32_logprobs(dtype):
    module = _module(FrozenCopy(dtype=dtype))
    assert {p.dtype for p in module.reference.parameters()} == {getattr(torch, dtype)}
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    policy_storage = {p.data_ptr() for p in module.policy.parameters()}
    assert not policy_storage & {p.data_ptr() for p in module.reference.parameters()}  # a copy, even in float32
    batch = collate_padded(random_pairs(4), PAD)
    logps, _ = module.reference.logprobs(batch)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, sequence_logprobs(module.policy, batch)[0], rtol=0.05, atol=0.5)


@pytest.mark.parametrize(
    "strategy",
    [
        FrozenCopy(),
        FrozenCopy(dtype="bfloat16"),
        Precomputed(),
        pytest.param(LORA, marks=needs_peft),
        ReferenceFree(),
        PeriodicSync(alpha=0.5, every_n_steps=1),
    ],
    ids=["model", "model-bf16", "precomputed", "lora", "none", "sync"],
)
def test_gradients_never_reach_the_reference(strategy, tmp_path):
    if isinstance(strategy, Precomputed):
        strategy = Precomputed(cache_file=_cache_file(tmp_path, random_pairs(4), build_model(MODEL)))
    module = _module(strategy)
    batch = collate_padded(random_pairs(4), PAD)
    assert not module.reference.logprobs(batch)[0].requires_grad
    module.training_step(batch, 0).backward()
    assert all(p.grad is None for p in module.reference.parameters())
    lora = module.strategy.name == "lora"
    frozen = [p for name, p in module.policy.named_parameters() if lora and "lora_" not in name]
    assert all(p.grad is None and not p.requires_grad for p in frozen)  # lora: the reference's (base) weights
    assert any(p.grad is not None for p in module.policy.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["reference._target_=dpo_lightning.models.reference.Frozen"], "reference._target_: cannot import"),
        (["reference=sync", "reference.alpha=1.5"], "reference.alpha: must be in [0, 1]"),
        (["reference=sync", "reference.every_n_steps=0"], "reference.every_n_steps: must be an integer ≥ 1"),
        (["reference=sync", "+reference.cache_dir=cache"], "reference.cache_dir: is not a key of PeriodicSync"),
        (["reference.dtype=float8"], "reference.dtype: must be null (the policy's) or one of"),
        (["reference=lora", "reference.lora.r=0"], "reference.lora.r: must be an integer ≥ 1"),
    ],
)
def test_bad_reference_config_fails_in_one_line(overrides, message, tmp_path):
    cfg = compose(*overrides, run_dir=tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_lora_without_peft_fails_in_one_line(tmp_path, monkeypatch):
    cfg = compose("reference=lora", run_dir=tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real_find_spec(name))
    with pytest.raises(ConfigError, match=r"^reference: reference=lora needs the peft package"):
        validate_config(cfg)


# --- end to end -----------------------------------------------------------------------------------------

OPTIONS = sorted(path.stem for path in (CONF_DIR / "reference").glob("*.yaml"))


def test_every_reference_option_trains_two_steps_end_to_end(tmp_path):
    options = [name for name in OPTIONS if name != "lora" or importlib.util.find_spec("peft") is not None]
    steps = [
        "task.source.num_train_pairs=32",
        "task.source.num_val_pairs=8",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    ]
    result = train("-m", f"reference={','.join(options)}", *SMALL, *steps, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job, name in enumerate(options):  # one process, one job per option, in sweep order
        run_dir = tmp_path / str(job)
        summary = read_summary(run_dir)
        assert summary["choices"]["reference"] == name
        assert summary["status"] == "completed" and summary["global_step"] == 2, name
        saved = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
        assert any(k.startswith(REFERENCE_PREFIX) for k in saved) == (name == "sync"), name
        caches = list((run_dir / "reference_cache").glob("*.safetensors"))
        assert len(caches) == (name == "precomputed"), name
        policy = AutoModelForCausalLM.from_pretrained(run_dir / "policy", local_files_only=True)  # lora: merged
        assert not any("lora_" in key for key in policy.state_dict()), name
        assert not (run_dir / "policy" / "adapter_config.json").exists(), name
