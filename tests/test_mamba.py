"""Mamba-1/Mamba-2: state-spaces <-> transformers conversion, the torch backend, and (gpu) the mamba_ssm kernels.

CPU tests run transformers' torch implementation on tiny random models. The `gpu` tests compare mamba_ssm's kernels
with that implementation run on the CPU in fp32 (the reference), and load our state-spaces files into mamba_ssm's
own `MambaLMHeadModel`; they print the errors they measure (run with -s to see them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from pyserini_ssm.errors import UserError
from pyserini_ssm.models import mamba as M

FAMILIES = ("mamba1", "mamba2")

# config.json of state-spaces/mamba-130m and state-spaces/mamba2-130m, as published.
MAMBA_130M = {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
              "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
MAMBA2_130M = {"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
               "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
               "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
               "tie_embeddings": True}

# Tiny state-spaces configs of both families, with non-default mixer arguments so that they must be carried over.
TINY_SS = {
    "mamba1": {"d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 100,
               "ssm_cfg": {"d_state": 8, "dt_rank": 6}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
               "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
               "tie_embeddings": True},
    "mamba2": {"d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 100,
               "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 16},
               "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
               "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True},
}

MIXER_KEYS = {
    "mamba1": ["A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
               "dt_proj.bias", "out_proj.weight"],
    "mamba2": ["dt_bias", "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight",
               "out_proj.weight"],
}


def mamba_ssm_names(family: str, n_layer: int) -> set[str]:
    """Parameter names of mamba_ssm's MambaLMHeadModel, written out independently of the code under test."""
    names = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i in range(n_layer):
        names.add(f"backbone.layers.{i}.norm.weight")
        names.update(f"backbone.layers.{i}.mixer.{key}" for key in MIXER_KEYS[family])
    return names


def random_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny transformers causal LM whose weights are all perturbed away from their structured init."""
    torch.manual_seed(seed)
    config = M.hf_config_from_state_spaces({**TINY_SS[family], **overrides})
    model = (transformers.MambaForCausalLM if family == "mamba1" else transformers.Mamba2ForCausalLM)(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("A_log", "D", "dt_bias", "dt_proj.bias")) or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # transformers' own torch code, also where mamba_ssm is installed (its kernels would be bound even on CPU).
    with torch.no_grad(), M.transformers_torch_functions(model):
        return model(input_ids=input_ids, use_cache=False).logits


def hand_written_state_spaces(model: torch.nn.Module, family: str, directory: Path, ss_config: dict) -> None:
    """What state-spaces publishes: config.json + pytorch_model.bin keyed by mamba_ssm names (renamed by hand)."""
    state = {}
    for key, value in model.state_dict().items():
        ss_key = "backbone.embedding.weight" if key == "backbone.embeddings.weight" else key
        state[ss_key] = value.clone()
    state["lm_head.weight"] = state["backbone.embedding.weight"]  # torch.save of a tied MambaLMHeadModel
    assert set(state) == mamba_ssm_names(family, ss_config["n_layer"])
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(ss_config, indent=4))


# --------------------------------------------------------------------------------------------------------------------
# Configs


def test_mamba_130m_config_gives_the_mamba_130m_hf_config():
    config = M.hf_config_from_state_spaces(MAMBA_130M)
    assert isinstance(config, transformers.MambaConfig)
    # The fields of state-spaces/mamba-130m-hf/config.json.
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 24, 50280)
    assert (config.state_size, config.conv_kernel, config.expand, config.intermediate_size) == (16, 4, 2, 1536)
    assert config.time_step_rank == 48
    assert config.use_conv_bias is True and config.use_bias is False
    assert config.layer_norm_epsilon == 1e-5 and config.residual_in_fp32 is True
    assert config.tie_word_embeddings is True
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 0, 0)


def test_mamba2_130m_config():
    config = M.hf_config_from_state_spaces(MAMBA2_130M)
    assert isinstance(config, transformers.Mamba2Config)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 24, 50288)
    # mamba_ssm's Mamba2 defaults, not transformers' Mamba2Config defaults (n_groups=8, tie_word_embeddings=False).
    assert (config.num_heads, config.head_dim, config.n_groups, config.state_size) == (24, 64, 1, 128)
    assert (config.conv_kernel, config.expand, config.chunk_size) == (4, 2, 256)
    assert config.use_conv_bias is True and config.use_bias is False
    assert tuple(config.time_step_limit) == (0.0, float("inf"))
    assert config.tie_word_embeddings is True and config.residual_in_fp32 is True
    assert config.layer_norm_epsilon == 1e-5


def test_absent_keys_take_mamba_ssm_defaults():
    mamba1 = M.hf_config_from_state_spaces({"d_model": 64, "n_layer": 2, "vocab_size": 100})
    assert mamba1.vocab_size == 104  # pad_vocab_size_multiple defaults to 8
    assert (mamba1.state_size, mamba1.time_step_rank, mamba1.tie_word_embeddings) == (16, 4, True)
    mamba2 = M.hf_config_from_state_spaces({"d_model": 64, "n_layer": 2, "vocab_size": 100,
                                            "ssm_cfg": {"layer": "Mamba2"}})
    assert mamba2.vocab_size == 104
    assert (mamba2.num_heads, mamba2.head_dim, mamba2.n_groups, mamba2.state_size) == (2, 64, 1, 128)


@pytest.mark.parametrize("family", FAMILIES)
def test_mixer_arguments_carry_over_and_back(family):
    ss = dict(TINY_SS[family])
    if family == "mamba2":
        ss["ssm_cfg"] = {**ss["ssm_cfg"], "dt_limit": [0.001, 0.2], "conv_bias": False, "bias": True}
    config = M.hf_config_from_state_spaces(ss)
    if family == "mamba1":
        assert (config.state_size, config.time_step_rank) == (8, 6)
    else:
        assert (config.num_heads, config.head_dim, config.n_groups, config.state_size, config.chunk_size) == (
            8, 16, 2, 16, 16)
        assert tuple(config.time_step_limit) == (0.001, 0.2)
        assert config.use_conv_bias is False and config.use_bias is True
    written = M.state_spaces_config_from_hf(config)
    assert list(written) == list(M.STATE_SPACES_DEFAULTS)  # every mamba_ssm MambaConfig field, in its order
    assert written["ssm_cfg"] == ss["ssm_cfg"]
    assert M.hf_config_from_state_spaces(written).to_dict() == config.to_dict()


def test_matches_transformers_own_mamba2_conversion():
    script = pytest.importorskip("transformers.models.mamba2.convert_mamba2_ssm_checkpoint_to_pytorch")
    theirs, _ = script.convert_ssm_config_to_hf_config(dict(MAMBA2_130M))
    ours = M.hf_config_from_state_spaces(MAMBA2_130M)
    for field in ("hidden_size", "num_heads", "head_dim", "num_hidden_layers", "n_groups", "state_size",
                  "vocab_size", "residual_in_fp32", "tie_word_embeddings", "expand", "conv_kernel", "chunk_size"):
        assert getattr(ours, field) == getattr(theirs, field), field


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attn_layer_idx": [1]}, "attention layers"),
        ({"ssm_cfg": {"layer": "Mamba3"}}, "unknown ssm_cfg.layer 'Mamba3'"),
        ({"rms_norm": False}, "rms_norm=false"),
        ({"d_intermediate": 128}, "d_intermediate"),
        ({"ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}}, "norm_before_gate"),
        ({"ssm_cfg": {"layer": "Mamba2", "rmsnorm": False}}, "rmsnorm=false"),
        ({"ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}, "D_has_hdim"),
        ({"ssm_cfg": {"layer": "Mamba2", "d_ssm": 64}}, "d_ssm"),
        ({"ssm_cfg": {"layer": "Mamba2", "headdim": 48}}, "headdim=48"),
        ({"ssm_cfg": {"layer": "Mamba2", "headdm": 16}}, "['headdm']"),
        ({"n_layers": 2}, "unknown keys ['n_layers']"),
        ({"d_model": None}, "d_model"),
    ],
)
def test_unsupported_configs_are_user_errors(change, message):
    config = {"d_model": 64, "n_layer": 2, "vocab_size": 100, **change}
    if change.get("d_model", 0) is None:
        del config["d_model"]
    with pytest.raises(UserError, match=None) as error:
        M.hf_config_from_state_spaces(config)
    assert message in str(error.value)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("family", FAMILIES)
def test_hand_written_state_spaces_checkpoint_loads_to_the_same_model(family, tmp_path):
    model = random_model(family)
    hand_written_state_spaces(model, family, tmp_path, TINY_SS[family])
    loaded = M.load_state_spaces_checkpoint(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.parameters())
    input_ids = torch.randint(0, 100, (2, 23))
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_has_the_state_spaces_layout_and_round_trips(family, tmp_path):
    model = random_model(family)
    M.save_state_spaces_checkpoint(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    written = json.loads((tmp_path / "config.json").read_text())
    padded = {"mamba1": 104, "mamba2": 112}[family]  # 100 rounded up to the config's multiple (8, 16)
    assert written == TINY_SS[family] | {"vocab_size": padded}
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert set(state) == mamba_ssm_names(family, 2)
    assert state["lm_head.weight"].data_ptr() == state["backbone.embedding.weight"].data_ptr()  # tied, stored once
    loaded = M.load_state_spaces_checkpoint(tmp_path)
    input_ids = torch.randint(0, padded, (3, 17))
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), rtol=0, atol=0)


def test_untied_head_round_trips(tmp_path):
    model = random_model("mamba2", tie_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.normal_()
    M.save_state_spaces_checkpoint(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_embeddings"] is False
    loaded = M.load_state_spaces_checkpoint(tmp_path)
    assert loaded.lm_head.weight is not loaded.backbone.embeddings.weight
    input_ids = torch.randint(0, 112, (1, 9))
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), rtol=0, atol=0)


def test_backbone_saves_from_either_wrapper(tmp_path):
    model = random_model("mamba1")
    backbone = M.build_mamba_backbone(model, "torch")
    M.save_state_spaces_checkpoint(backbone, tmp_path)
    loaded = M.load_state_spaces_checkpoint(tmp_path)
    input_ids = torch.randint(0, 100, (1, 12))
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), rtol=0, atol=0)


def test_bf16_checkpoint_keeps_or_casts_dtype(tmp_path):
    model = random_model("mamba2").to(torch.bfloat16)
    M.save_state_spaces_checkpoint(model, tmp_path)
    assert M.load_state_spaces_checkpoint(tmp_path).lm_head.weight.dtype == torch.float32
    kept = M.load_state_spaces_checkpoint(tmp_path, dtype=None)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}


def test_key_renames_are_inverse():
    names = sorted(mamba_ssm_names("mamba2", 2))
    state = {name: torch.zeros(1) for name in names}
    hf = M.state_spaces_to_hf(state)
    assert "backbone.embeddings.weight" in hf and "backbone.embedding.weight" not in hf
    assert len(hf) == len(state) and sorted(M.hf_to_state_spaces(hf)) == names
    assert M.state_spaces_to_hf({"embedding.weight": 1}) == {"embeddings.weight": 1}  # a bare MixerModel


def _broken(tmp_path: Path, family: str = "mamba2") -> Path:
    hand_written_state_spaces(random_model(family), family, tmp_path, TINY_SS[family])
    return tmp_path


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no folder", "checkpoint folder not found"),
        ("no config", "has no config.json"),
        ("no weights", "has no pytorch_model.bin"),
        ("bad json", "is not valid JSON"),
        ("hf config", "not a state-spaces"),
        ("unknown layer", "unknown ssm_cfg.layer 'Mamba9'"),
        ("garbage weights", "cannot read"),
        ("wrong shape", "backbone.layers.1.mixer.in_proj.weight has shape"),
        ("missing tensor", "missing tensors ['backbone.norm_f.weight']"),
        ("extra tensor", "unexpected tensors ['backbone.layers.2.norm.weight']"),
        ("fewer layers in config", "unexpected tensors"),
    ],
)
def test_bad_checkpoints_are_user_errors(tmp_path, breakage, message):
    directory = _broken(tmp_path / "ckpt")
    config_path, weights_path = directory / "config.json", directory / "pytorch_model.bin"
    config = json.loads(config_path.read_text())
    if breakage == "no folder":
        directory = tmp_path / "absent"
    elif breakage == "no config":
        config_path.unlink()
    elif breakage == "no weights":
        weights_path.unlink()
    elif breakage == "bad json":
        config_path.write_text("{not json")
    elif breakage == "hf config":
        config_path.write_text(json.dumps({"model_type": "mamba2", "d_model": 64, "n_layer": 2}))
    elif breakage == "unknown layer":
        config_path.write_text(json.dumps({**config, "ssm_cfg": {"layer": "Mamba9"}}))
    elif breakage == "garbage weights":
        weights_path.write_bytes(b"not a pickle")
    elif breakage == "fewer layers in config":
        config_path.write_text(json.dumps({**config, "n_layer": 1}))
    else:
        state = torch.load(weights_path, weights_only=True)
        if breakage == "wrong shape":
            key = "backbone.layers.1.mixer.in_proj.weight"
            state[key] = state[key][:-1]
        elif breakage == "missing tensor":
            del state["backbone.norm_f.weight"]
        elif breakage == "extra tensor":
            state["backbone.layers.2.norm.weight"] = torch.ones(64)
        torch.save(state, weights_path)
    with pytest.raises(UserError) as error:
        M.load_state_spaces_checkpoint(directory)
    assert message in str(error.value)


# --------------------------------------------------------------------------------------------------------------------
# The torch backend


def _alone(backbone: M.MambaBackbone, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [backbone(sequence[None])[0] for sequence in sequences]


def _sequences(lengths: list[int], vocab: int = 100, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=generator) for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padding_never_changes_real_tokens(family):
    backbone = M.build_mamba_backbone(random_model(family), "torch")
    sequences = _sequences([7, 20, 33])
    batch = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=0)  # (3, 33)
    mask = batch.new_zeros(batch.shape)
    for row, sequence in enumerate(sequences):
        mask[row, : len(sequence)] = 1
    with torch.no_grad():
        unmasked = backbone(batch)
        masked = backbone(batch, attention_mask=mask)
    assert unmasked.shape == (3, 33, 64)
    for row, expected in enumerate(_alone(backbone, sequences)):
        n = len(expected)
        torch.testing.assert_close(unmasked[row, :n], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(masked[row, :n], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_with_mask_equals_unpadded(family):
    backbone = M.build_mamba_backbone(random_model(family), "torch")
    sequences = _sequences([5, 19])
    length = 19
    batch = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        batch[row, length - len(sequence):] = sequence
        mask[row, length - len(sequence):] = 1
    with torch.no_grad():
        hidden = backbone(batch, attention_mask=mask)
    for row, expected in enumerate(_alone(backbone, sequences)):
        torch.testing.assert_close(hidden[row, length - len(expected):], expected, rtol=0, atol=1e-5)


def pack(sequences: list[torch.Tensor], rows: list[list[int]], width: int, pad_id: str) -> tuple[torch.Tensor, ...]:
    """Rows of concatenated sequences, tail-padded; seq_idx numbers sequences within a row, padding gets `pad_id`
    ('next': one more than the last sequence, 'minus_one': -1)."""
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    seq_idx = torch.zeros(len(rows), width, dtype=torch.int32)
    places = {}
    for row, members in enumerate(rows):
        column = 0
        for number, index in enumerate(members):
            n = len(sequences[index])
            input_ids[row, column: column + n] = sequences[index]
            seq_idx[row, column: column + n] = number
            places[index] = (row, column)
            column += n
        seq_idx[row, column:] = len(members) if pad_id == "next" else -1
    return input_ids, seq_idx, places


PACK_LENGTHS = [1, 2, 3, 4, 5, 9, 16, 17, 31, 40]  # shorter than the conv window, and across chunk borders (16)
PACK_ROWS = [[0, 5, 8, 1, 2], [3, 9, 6, 7, 4]]  # 1+9+31+2+3 = 46 and 4+40+16+17+5 = 82 tokens
PACK_WIDTH = 90


@pytest.mark.parametrize("pad_id", ["next", "minus_one"])
def test_torch_packing_equals_one_by_one(pad_id):
    backbone = M.build_mamba_backbone(random_model("mamba2"), "torch")
    sequences = _sequences(PACK_LENGTHS)
    input_ids, seq_idx, places = pack(sequences, PACK_ROWS, PACK_WIDTH, pad_id)
    with torch.no_grad():
        packed = backbone(input_ids, seq_idx=seq_idx)
        unpacked = backbone(input_ids)
    leaks = 0.0
    for index, expected in enumerate(_alone(backbone, sequences)):
        row, column = places[index]
        got = packed[row, column: column + len(expected)]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        leaks = max(leaks, (unpacked[row, column: column + len(expected)] - expected).abs().max().item())
    assert leaks > 1e-2  # without seq_idx the sequences would see each other: the test can tell


REFERENCE_CASES = {
    "mamba1": ("mamba1", {}),
    "mamba2": ("mamba2", {}),
    "mamba2-4groups-dtlimit": ("mamba2", {"ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 4,
                                                      "chunk_size": 16, "dt_limit": [0.01, 0.05]}}),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_step_by_step_reference_equals_transformers(case):
    family, overrides = REFERENCE_CASES[case]
    model = random_model(family, **overrides)
    if family == "mamba2" and model.config.n_groups > 1 and not M.transformers_groups_its_gated_norm():
        pytest.skip("transformers < 5.23 normalises the gated RMSNorm over all groups, unlike mamba_ssm and the "
                    "reference (build_mamba_backbone warns about it)")
    input_ids = torch.randint(0, 100, (2, 37), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = M.build_mamba_backbone(model, "torch")(input_ids)
    got = M.mamba_reference_forward(model.backbone, input_ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_reference_packing_equals_one_by_one():
    model = random_model("mamba2")
    sequences = _sequences(PACK_LENGTHS)
    input_ids, seq_idx, places = pack(sequences, PACK_ROWS, PACK_WIDTH, "next")
    packed = M.mamba_reference_forward(model.backbone, input_ids, seq_idx=seq_idx)
    for index, sequence in enumerate(sequences):
        row, column = places[index]
        expected = M.mamba_reference_forward(model.backbone, sequence[None])[0]
        torch.testing.assert_close(packed[row, column: column + len(sequence)], expected, rtol=0, atol=1e-5)


def test_mamba1_packing_is_not_implemented():
    backbone = M.build_mamba_backbone(random_model("mamba1"), "torch")
    with pytest.raises(NotImplementedError):
        backbone(torch.ones(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 4, dtype=torch.int32))


def test_padding_side():
    assert M.padding_side(torch.tensor([[1, 1], [1, 1]])) == "none"
    assert M.padding_side(torch.tensor([[1, 1, 0], [1, 0, 0]])) == "right"
    assert M.padding_side(torch.tensor([[0, 1, 1], [1, 1, 1]])) == "left"
    with pytest.raises(ValueError):
        M.padding_side(torch.tensor([[1, 0, 1]]))


def test_seq_idx_from_cu_seqlens():
    seq_idx = M.seq_idx_from_cu_seqlens(torch.tensor([0, 2, 3, 6]), (1, 6))
    assert seq_idx.tolist() == [[0, 0, 1, 2, 2, 2]] and seq_idx.dtype == torch.int32
    with pytest.raises(ValueError):
        M.seq_idx_from_cu_seqlens(torch.tensor([0, 2, 5]), (1, 6))


def test_backend_choice_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    model = random_model("mamba1")
    backbone = M.build_mamba_backbone(model, "auto")
    assert backbone.backend == "torch" and backbone.model is model.backbone  # shares, does not copy
    with pytest.raises(UserError, match="needs a GPU and mamba-ssm"):
        M.build_mamba_backbone(model, "cuda")
    with pytest.raises(UserError, match="unknown Mamba backend"):
        M.build_mamba_backbone(model, "triton")


def test_backbone_from_config_and_state_dict_keys():
    config = M.tiny_hf_config("mamba2")
    backbone = M.build_mamba_backbone(config, "torch")
    assert backbone.family == "mamba2" and backbone.supports_packing and backbone.hidden_size == 64
    assert "model.layers.1.mixer.norm.weight" in backbone.state_dict()
    hidden = backbone(torch.randint(0, 112, (2, 5)))
    assert hidden.shape == (2, 5, 64) and torch.isfinite(hidden).all()


# --------------------------------------------------------------------------------------------------------------------
# GPU: mamba_ssm kernels against the transformers reference (run on the device; print what they measure)

needs_kernels = pytest.mark.skipif(
    not M.mamba_ssm_available(), reason="mamba_ssm / causal_conv1d not importable"
)

# A tiny config (many chunks, two groups) and one with mamba_ssm's real mixer defaults (headdim 64, d_state 128,
# chunk 256) at a small width, whose sequence crosses one chunk border.
GPU_CASES = {
    "mamba1-tiny": ("mamba1", {}, 70),
    "mamba2-tiny": ("mamba2", {}, 70),
    "mamba1-defaults": ("mamba1", {"d_model": 128, "ssm_cfg": {}}, 300),
    "mamba2-defaults": ("mamba2", {"d_model": 128, "ssm_cfg": {"layer": "Mamba2"}}, 300),
}
GPU_TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 5e-2}  # max |kernel - reference| / max |reference|


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    difference = (got.float().cpu() - reference.float().cpu()).abs()
    scale = reference.float().abs()
    return (difference.max() / scale.max()).item(), (difference.mean() / scale.mean()).item()


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_kernel_backbone_equals_torch_reference(case, dtype):
    family, overrides, length = GPU_CASES[case]
    model = random_model(family, **overrides)
    input_ids = torch.randint(0, 100, (3, length), generator=torch.Generator().manual_seed(2))
    # CPU float64, step by step: on a machine with mamba_ssm, transformers' own Mamba may call mamba_ssm's kernels.
    reference = M.mamba_reference_forward(model.backbone, input_ids, compute_dtype=torch.float64)
    with torch.no_grad():
        kernel = M.build_mamba_backbone(model, "cuda").to(dtype)
        got = kernel(input_ids.cuda())
    max_rel, mean_rel = relative_error(got, reference)
    print(f"\n[mamba parity] {case} {str(dtype)[6:]} L={length}: max rel err {max_rel:.2e}, mean rel err {mean_rel:.2e}")
    assert kernel.backend == "cuda" and got.dtype == dtype
    assert max_rel < GPU_TOLERANCE[dtype]


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pad_id", ["next", "minus_one"])
def test_kernel_packing_equals_one_by_one(pad_id, dtype):
    model = random_model("mamba2")
    kernel = M.build_mamba_backbone(model, "cuda").to(dtype)
    sequences = _sequences(PACK_LENGTHS)
    input_ids, seq_idx, places = pack(sequences, PACK_ROWS, PACK_WIDTH, pad_id)
    with torch.no_grad():
        packed = kernel(input_ids.cuda(), seq_idx=seq_idx.cuda())
        unpacked = kernel(input_ids.cuda())
        worst_alone = worst_reference = leak = 0.0
        for index, sequence in enumerate(sequences):
            row, column = places[index]
            got = packed[row, column: column + len(sequence)]
            alone = kernel(sequence[None].cuda())[0]
            reference = M.mamba_reference_forward(model.backbone, sequence[None], compute_dtype=torch.float64)[0]
            worst_alone = max(worst_alone, relative_error(got, alone)[0])
            worst_reference = max(worst_reference, relative_error(got, reference)[0])
            leak = max(leak, relative_error(unpacked[row, column: column + len(sequence)], alone)[0])
    print(f"\n[mamba packing] {str(dtype)[6:]} pad={pad_id}: packed vs alone (kernel) {worst_alone:.2e}, "
          f"vs float64 reference {worst_reference:.2e}; unpacked leak {leak:.2e}")
    assert worst_alone < GPU_TOLERANCE[dtype]
    assert worst_reference < GPU_TOLERANCE[dtype]
    assert leak > 10 * GPU_TOLERANCE[dtype]  # the comparison can see a missing boundary


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_padding(family):
    model = random_model(family)
    kernel = M.build_mamba_backbone(model, "cuda")
    sequences = _sequences([6, 25])
    right = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True).cuda()
    right_mask = (torch.arange(25)[None] < torch.tensor([6, 25])[:, None]).cuda()
    left = torch.stack([torch.cat([torch.zeros(19, dtype=torch.long), sequences[0]]), sequences[1]]).cuda()
    left_mask = right_mask.flip(-1)
    with torch.no_grad():
        alone = [kernel(s[None].cuda())[0] for s in sequences]
        by_right = kernel(right, attention_mask=right_mask)
        torch.testing.assert_close(by_right[0, :6], alone[0], rtol=1e-4, atol=1e-4)
        if family == "mamba1":
            with pytest.raises(ValueError, match="left padding"):
                kernel(left, attention_mask=left_mask)
            return
        by_left = kernel(left, attention_mask=left_mask)
    torch.testing.assert_close(by_left[0, 19:], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_left[1], alone[1], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("family", FAMILIES)
def test_written_checkpoint_loads_into_mamba_ssm_itself(family, tmp_path):
    """Our state-spaces files, read by mamba_ssm's own MambaLMHeadModel, give transformers' logits."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    model = random_model(family)
    M.save_state_spaces_checkpoint(model, tmp_path)
    original = MambaLMHeadModel(MambaConfig(**json.loads((tmp_path / "config.json").read_text())), device="cuda")
    original.load_state_dict(torch.load(tmp_path / "pytorch_model.bin", weights_only=True), strict=True)
    input_ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = original.eval()(input_ids.cuda()).logits
    hidden = M.mamba_reference_forward(model.backbone, input_ids, compute_dtype=torch.float64)
    expected = hidden @ model.lm_head.weight.double().T
    max_rel, _ = relative_error(got, expected)
    print(f"\n[mamba_ssm MambaLMHeadModel vs reference] {family} fp32: max rel err {max_rel:.2e}")
    assert max_rel < GPU_TOLERANCE[torch.float32]


@pytest.mark.gpu
@needs_kernels
def test_kernel_state_dict_loads_back_into_transformers():
    model = random_model("mamba2")
    kernel = M.build_mamba_backbone(model, "cuda")
    fresh = transformers.Mamba2Model(model.config)
    fresh.load_state_dict({k: v.cpu() for k, v in kernel.model.state_dict().items()}, strict=True)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_torch_backend_warns_when_transformers_ungroups_the_gated_norm(monkeypatch, caplog):
    model = random_model("mamba2")  # n_groups 2
    monkeypatch.setattr(M, "transformers_groups_its_gated_norm", lambda: False)
    with caplog.at_level("WARNING", logger=M.logger.name):
        M.build_mamba_backbone(model, "torch")
    assert "Upgrade transformers to >= 5.23" in caplog.text
    caplog.clear()
    monkeypatch.setattr(M, "transformers_groups_its_gated_norm", lambda: True)
    with caplog.at_level("WARNING", logger=M.logger.name):
        M.build_mamba_backbone(model, "torch")
    monkeypatch.setattr(M, "transformers_groups_its_gated_norm", lambda: False)
    with caplog.at_level("WARNING", logger=M.logger.name):
        one_group = {**TINY_SS["mamba2"]["ssm_cfg"], "ngroups": 1}
        M.build_mamba_backbone(random_model("mamba2", ssm_cfg=one_group), "torch")
    assert "Upgrade transformers" not in caplog.text


@pytest.mark.parametrize("user_setting", [None, "0"])
def test_importing_the_models_caches_triton_autotuning_unless_the_user_says_otherwise(user_setting):
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_CACHE_AUTOTUNING"}
    if user_setting is not None:
        env["TRITON_CACHE_AUTOTUNING"] = user_setting
    shown = subprocess.run([sys.executable, "-c", "import os, pyserini_ssm.models.reranker; "
                            "print(os.environ['TRITON_CACHE_AUTOTUNING'])"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert shown == (user_setting or "1")


@pytest.mark.gpu
@needs_kernels
def test_mamba_ssm_autotuners_cache_their_choice():
    M.mamba_ssm_available()
    from mamba_ssm.ops.triton import ssd_chunk_scan, ssd_chunk_state

    tuners = [ssd_chunk_scan._chunk_scan_fwd_kernel, ssd_chunk_state._chunk_state_fwd_kernel]
    if not all(hasattr(tuner, "cache_results") for tuner in tuners):
        pytest.skip("this Triton's autotuner has no on-disk cache")
    assert all(tuner.cache_results for tuner in tuners)
