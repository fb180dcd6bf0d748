"""Model configs and loading: one real DPO step on each paper architecture, transformer blocks, padding."""

import math
from functools import cache

import pytest
import torch
from helpers import ARCHITECTURES, EOS, PAD, VOCAB, compose, random_pairs, tiny_causal_lm
from omegaconf import OmegaConf
from transformers import PreTrainedModel

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.collate import collate_padded
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.loading import build_model, check_model_config, load_tokenizer, transformer_blocks
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer
from dpo_lightning.training.module import DPOLitModule

# The transformer block class of each architecture in the installed transformers.
BLOCKS = {
    "llama": "LlamaDecoderLayer",
    "gpt2": "GPT2Block",
    "gptj": "GPTJBlock",
    "gpt_neox": "GPTNeoXLayer",
}
# The transformers model_type of each paper model config.
PAPER_MODELS = {"gpt2": "gpt2", "gpt2-large": "gpt2", "gptj": "gptj", "pythia28": "gpt_neox"}
# Dropout as pretrained checkpoints ship it (GPT-2: 0.1). `model.disable_dropout` (on in every config) turns it
# off, so the policy in train mode computes exactly what the frozen reference (always in eval mode) does and the
# loss before any step is log 2.
DROPOUT = {
    "gpt2": dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
    "gptj": dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
    "gpt_neox": dict(attention_dropout=0.1, hidden_dropout=0.1),
    "llama": dict(attention_dropout=0.1),
}
MODEL_OPTIONS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@cache
def _composed(model: str = "tiny") -> dict:
    """The full config composed with `model=<model>`, interpolations resolved (missing values left as ???)."""
    cfg = compose(f"model={model}")
    return {group: OmegaConf.to_container(cfg[group], resolve=True) for group in ("model", "loss", "optimizer")}


def _num_layers(architecture: str) -> int:
    config = ARCHITECTURES[architecture]
    return config.get("num_hidden_layers", config.get("n_layer"))


def _model(architecture: str, **overrides) -> dict:
    """A `model/` config (the shape of conf/model/tiny.yaml) for a tiny random model of `architecture`."""
    return {
        **_composed("tiny")["model"],
        "name": f"tiny-{architecture}",
        "architecture": architecture,
        "config": {
            "vocab_size": VOCAB,
            "bos_token_id": 0,
            "eos_token_id": EOS,
            "pad_token_id": PAD,
            **ARCHITECTURES[architecture],
            **DROPOUT[architecture],
        },
        "attn_implementation": None,  # sdpa where the architecture has it (GPT-J has not), else eager
        "block_class": BLOCKS[architecture],
        **overrides,
    }


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # a step outside a Trainer
def test_one_dpo_step_on_each_paper_architecture(architecture):
    composed = _composed("tiny")
    assert composed["loss"]["_target_"] == "dpo_lightning.losses.dpo.DPO"
    module = DPOLitModule(model=_model(architecture), loss=composed["loss"], optimizer=composed["optimizer"])
    module.configure_model()
    module.train()  # as Lightning's fit loop does; the reference stays in eval mode
    assert len(transformer_blocks(module.policy, module.hparams.model["block_class"])) == _num_layers(architecture)
    optimizer = module.configure_optimizers()["optimizer"]
    batch = collate_padded(random_pairs(4), PAD)
    policy_before, reference_before = _clone(module.policy), _clone(module.reference.model)

    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: Δ = 0
    loss.backward()
    optimizer.step()

    changed = {name for name, p in module.policy.named_parameters() if not torch.equal(p, policy_before[name])}
    with_gradient = {name for name, p in module.policy.named_parameters() if p.grad is not None and p.grad.any()}
    assert with_gradient and with_gradient <= changed
    for name, p in module.reference.model.named_parameters():
        assert torch.equal(p, reference_before[name]) and p.grad is None and not p.requires_grad
    with torch.no_grad():
        after = module.training_step(batch, 0)
    assert torch.isfinite(after) and after < loss


def test_transformer_blocks_by_name_and_by_detection(architecture):
    model = build_model(_model(architecture))
    named = transformer_blocks(model, BLOCKS[architecture])
    detected = transformer_blocks(model, None)
    assert len(named) == _num_layers(architecture)
    assert all(type(block).__name__ == BLOCKS[architecture] for block in named)
    assert [id(block) for block in detected] == [id(block) for block in named]
    names = {id(module): name for name, module in model.named_modules()}
    assert [names[id(block)].rsplit(".", 1)[-1] for block in named] == [str(i) for i in range(len(named))]


def test_unknown_block_class_fails_in_one_line_listing_the_blocks(architecture):
    model = build_model(_model(architecture))
    with pytest.raises(ValueError) as error:
        transformer_blocks(model, "NoSuchBlock")
    message = str(error.value)
    assert message.startswith("model.block_class: no NoSuchBlock module in") and "\n" not in message
    assert BLOCKS[architecture] in message


@pytest.mark.parametrize("declared", [[], ["BLOCK", "Linear"]], ids=["none", "two"])
def test_undetectable_block_class_fails_in_one_line(declared):
    model = build_model(_model("gpt2"))
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module._no_split_modules = [BLOCKS["gpt2"] if name == "BLOCK" else name for name in declared]
    with pytest.raises(ValueError) as error:
        transformer_blocks(model, None)
    message = str(error.value)
    assert message.startswith("model.block_class: cannot detect") and "\n" not in message
    assert BLOCKS["gpt2"] in message.split("set it to one of:")[1]


@pytest.mark.parametrize("option", sorted(PAPER_MODELS))
def test_paper_model_configs_name_their_architectures_block(option):
    model = _composed(option)["model"]
    assert model["trust_remote_code"] is False
    assert model["pad_token"] is not None  # their tokenizers define no pad token of their own
    model_type = PAPER_MODELS[option]
    lm = tiny_causal_lm(model_type)
    assert lm.config.model_type == model_type
    blocks = transformer_blocks(lm, model["block_class"])
    assert len(blocks) == _num_layers(model_type)
    assert blocks == transformer_blocks(lm, None)  # the name transformers itself marks as the block


def test_paper_settings_of_the_paper_model_configs():
    names = {option: _composed(option)["model"]["name_or_path"] for option in PAPER_MODELS}
    assert names["gpt2-large"] == "gpt2-large"  # IMDb
    assert names["gptj"] == "EleutherAI/gpt-j-6b"  # TL;DR
    assert names["pythia28"] == "EleutherAI/pythia-2.8b"  # Anthropic HH
    assert _composed("gptj")["model"]["dtype"] == "bfloat16"


def test_tiny_config_blocks():
    model = _composed("tiny")["model"]
    blocks = transformer_blocks(build_model(model), model["block_class"])
    assert len(blocks) == model["config"]["num_hidden_layers"]


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_config_sets_block_class_and_pad_token(option):
    model = _composed(option)["model"]
    assert "block_class" in model and "pad_token" in model
    check_model_config(model)


@pytest.mark.parametrize(
    ("key", "value"), [("block_class", 3), ("block_class", ""), ("pad_token", ["<|eos|>"]), ("pad_token", "")]
)
def test_bad_model_keys_fail_in_one_line(key, value):
    with pytest.raises(ConfigError) as error:
        check_model_config({**_composed("tiny")["model"], key: value})
    assert str(error.value).startswith(f"model.{key}: must be a non-empty string or null")


@pytest.fixture
def no_pad_tokenizer(tmp_path) -> str:
    """A local tokenizer folder without a pad token: the shipped tiny tokenizer with its pad token unset."""
    tokenizer = load_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def _hf_model(**keys) -> dict:
    return {"name": "local", "tokenizer": None, "pad_token": None, "trust_remote_code": False, **keys}


@pytest.mark.parametrize("route", ["name_or_path", "tokenizer"])
def test_tokenizer_without_pad_token_pads_with_eos(no_pad_tokenizer, route):
    model = (
        _hf_model(name_or_path=no_pad_tokenizer)
        if route == "name_or_path"
        else _hf_model(name_or_path="never/loaded", tokenizer=no_pad_tokenizer)
    )
    tokenizer = load_tokenizer(model)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|eos|>", EOS)
    assert len(tokenizer) == len(load_tiny_tokenizer())  # no token added


def test_pad_token_names_a_token_of_the_vocabulary(no_pad_tokenizer):
    tokenizer = load_tokenizer(_hf_model(name_or_path=no_pad_tokenizer, pad_token="<|pad|>"))
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", PAD)
    assert len(tokenizer) == len(load_tiny_tokenizer())


def test_pad_token_outside_the_vocabulary_fails_in_one_line(no_pad_tokenizer):
    with pytest.raises(ValueError) as error:
        load_tokenizer(_hf_model(name_or_path=no_pad_tokenizer, pad_token="<|nope|>"))
    message = str(error.value)
    assert message.startswith("model.pad_token: '<|nope|>' is not a token of the tokenizer of local")
    assert "'<|eos|>'" in message and "\n" not in message


def test_tokenizer_keeps_its_own_pad_token_unless_told():
    tiny = _composed("tiny")["model"]
    assert load_tokenizer(tiny).pad_token_id == PAD
    assert load_tokenizer({**tiny, "pad_token": "<|eos|>"}).pad_token_id == EOS


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_disable_dropout_makes_train_mode_deterministic(architecture, disable_dropout):
    policy = build_model(_model(architecture, disable_dropout=disable_dropout)).train()
    input_ids = torch.randint(3, VOCAB, (2, 12))
    first, second = policy(input_ids).logits, policy(input_ids).logits
    assert torch.equal(first, second) == disable_dropout


# --- model.init_from: the second stage of the paper's pipeline starts from the first's policy -------------------


def _tiny_config() -> dict:
    return OmegaConf.to_container(compose("model.config.num_hidden_layers=1").model)


@pytest.mark.parametrize("layout", ["run folder", "model folder"])
def test_init_from_loads_the_saved_policy_as_policy_and_reference(tmp_path, layout):
    from dpo_lightning.runtime.export import export_policy

    saved = build_model({**_tiny_config(), "init_seed": 7})  # weights a fresh tiny build (init_seed 0) lacks
    folder = tmp_path / "policy" if layout == "run folder" else tmp_path
    export_policy(saved, load_tiny_tokenizer(), folder)
    config = {**_tiny_config(), "init_from": str(tmp_path)}
    check_model_config(OmegaConf.create(config))
    module = DPOLitModule(model=config, loss={"_target_": "dpo_lightning.losses.dpo.DPO", "beta": 0.1},
                          optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "warmup_steps": 0})  # fmt: skip
    module.configure_model()
    expected = saved.state_dict()
    for model in (module.policy, module.reference.model):
        assert expected.keys() == model.state_dict().keys()
        assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert load_tokenizer(config).get_vocab() == load_tiny_tokenizer().get_vocab()


def test_init_from_a_folder_without_a_model_fails_in_one_line(tmp_path):
    (tmp_path / "policy").mkdir()
    with pytest.raises(ConfigError) as error:
        check_model_config(OmegaConf.create({**_tiny_config(), "init_from": str(tmp_path)}))
    assert str(error.value) == (
        f"model.init_from: {tmp_path} is neither a run folder with policy/ nor a model folder "
        "(no config.json in either)"
    )
